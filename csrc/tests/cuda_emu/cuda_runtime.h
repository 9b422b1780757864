// A CPU emulation of the part of the CUDA runtime that csrc/kernels/*.cu uses, so that the CUDA
// kernels' own code (indexing, grid-stride loops, launch shapes, block reductions, z-buffer
// atomics, the deterministic and atomic backward paths) runs and is checked on a machine with no
// GPU. It replaces <cuda_runtime.h> for the emulated build only (CMakeLists.txt, target
// vggrpo_core_emu); rewrite_launches.py turns each `kernel<<<grid, block, smem, stream>>>(args)`
// into `vggrpo_emu::Launch(grid, block, smem, stream) << [&] { kernel(args); }`.
//
// Execution model: a launch runs its blocks one after another; the threads of a block are fibers
// (ucontext) on one OS thread, switched at __syncthreads(), so a barrier means what it means on
// the GPU: every thread of the block reaches it before any passes it. Because only one block runs
// at a time, a function-local `static thread_local` (what __shared__ becomes) is that block's
// shared memory. All state is per OS thread, so separate threads may launch concurrently.
// Atomics are plain read-modify-writes: nothing is interleaved inside one.
//
// Schedules: set_schedule(seed) with seed != 0 shuffles the order of the blocks and, at every
// barrier round, of the threads; results that the kernels claim are order-independent (z-buffer
// winners, fixed-tree block sums, the deterministic gather path) must not change, and float
// atomics see a different summation order.
//
// What this does not emulate: concurrency between blocks (a stale read racing an atomicMin),
// warp-level behaviour, the device's floating-point code generation (nvcc --fmad=false is
// assumed, as the real build sets it), memory spaces, and the speed. Launch-configuration limits
// are checked as the hardware checks them (cudaErrorInvalidConfiguration).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

// The built-in variables, set by the emulator before it runs (or resumes) a thread. Per OS
// thread, like the whole emulator state: torch may run ops from several threads at once.
inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace vggrpo_emu {

// Hardware limits checked at launch (every GPU since sm_30).
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxGridX = 2147483647u;
constexpr unsigned kMaxGridYZ = 65535;
constexpr size_t kMaxStaticShared = 48 * 1024;
constexpr size_t kFiberStack = 256 * 1024;

struct Stats {
  int64_t launches = 0;  // launches that ran (a rejected configuration does not count)
};

enum class FiberState : unsigned char { kNew, kRunning, kBarrier, kDone };

struct Runtime {
  cudaError_t last_error = cudaSuccess;  // sticky until cudaGetLastError
  uint64_t schedule_seed = 0;
  std::mt19937_64 rng;
  Stats stats;

  ucontext_t scheduler{};
  std::vector<ucontext_t> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<FiberState> state;
  std::vector<dim3> index;  // threadIdx of each fiber
  int current = -1;
  void (*body)(const void*) = nullptr;
  const void* body_arg = nullptr;
};

inline Runtime& runtime() {
  thread_local Runtime r;
  return r;
}

// 0: blocks in order, threads in order. Otherwise a seeded shuffle of both (see the top).
inline void set_schedule(uint64_t seed) {
  Runtime& r = runtime();
  r.schedule_seed = seed;
  r.rng.seed(seed);
}

inline Stats& stats() { return runtime().stats; }

inline void fiber_entry() {
  Runtime& r = runtime();
  r.body(r.body_arg);
  r.state[static_cast<size_t>(r.current)] = FiberState::kDone;
  // Returning resumes uc_link, the scheduler.
}

__attribute__((noinline)) inline void syncthreads() {
  Runtime& r = runtime();
  const size_t t = static_cast<size_t>(r.current);
  r.state[t] = FiberState::kBarrier;
  swapcontext(&r.fibers[t], &r.scheduler);
}

// Starts or resumes fiber t until its next barrier or its end. Kept out of line: the context
// calls return twice, which must not touch the caller's locals (-Wclobbered).
__attribute__((noinline)) inline void resume_fiber(unsigned t) {
  Runtime& r = runtime();
  if (r.state[t] == FiberState::kNew) {
    getcontext(&r.fibers[t]);
    r.fibers[t].uc_stack.ss_sp = r.stacks[t].get();
    r.fibers[t].uc_stack.ss_size = kFiberStack;
    r.fibers[t].uc_link = &r.scheduler;
    makecontext(&r.fibers[t], fiber_entry, 0);
  }
  r.state[t] = FiberState::kRunning;
  r.current = static_cast<int>(t);
  threadIdx = r.index[t];
  swapcontext(&r.scheduler, &r.fibers[t]);
}

// Runs one block of `n` threads to completion: every live thread runs until its next barrier or
// its end, round after round. Returns false (and reports) on a barrier that not every thread
// of the block reached.
inline bool run_block(unsigned n) {
  Runtime& r = runtime();
  if (r.fibers.size() < n) {
    r.fibers.resize(n);
    r.state.resize(n);
    r.index.resize(n);
    while (r.stacks.size() < n) r.stacks.emplace_back(new char[kFiberStack]);
  }
  for (unsigned t = 0; t < n; ++t) {
    r.state[t] = FiberState::kNew;
    r.index[t] = dim3(t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y));
  }
  std::vector<unsigned> order(n);
  std::iota(order.begin(), order.end(), 0u);
  for (;;) {
    if (r.schedule_seed != 0) std::shuffle(order.begin(), order.end(), r.rng);
    for (unsigned t : order) {
      if (r.state[t] == FiberState::kDone) continue;
      resume_fiber(t);
    }
    r.current = -1;
    unsigned done = 0;
    for (unsigned t = 0; t < n; ++t) done += r.state[t] == FiberState::kDone ? 1u : 0u;
    if (done == n) return true;
    if (done != 0) {
      std::fprintf(stderr,
                   "cuda emulation: __syncthreads() reached by %u of %u threads of block "
                   "(%u, %u, %u): divergent barrier\n",
                   n - done, n, blockIdx.x, blockIdx.y, blockIdx.z);
      return false;
    }
  }
}

template <typename F>
void invoke(const void* f) {
  (*static_cast<const F*>(f))();
}

// `Launch(grid, block, shared_bytes, stream) << body` runs body once per thread of the grid.
class Launch {
 public:
  Launch(dim3 grid, dim3 block, size_t shared_bytes = 0, cudaStream_t stream = nullptr)
      : grid_(grid), block_(block), shared_bytes_(shared_bytes) {
    (void)stream;  // one in-order "stream": launches run synchronously
  }

  template <typename F>
  void operator<<(const F& body) const {
    Runtime& r = runtime();
    const uint64_t threads = uint64_t(block_.x) * block_.y * block_.z;
    const bool ok = grid_.x >= 1 && grid_.y >= 1 && grid_.z >= 1 && grid_.x <= kMaxGridX &&
                    grid_.y <= kMaxGridYZ && grid_.z <= kMaxGridYZ && threads >= 1 &&
                    threads <= kMaxThreadsPerBlock && block_.z <= 64 &&
                    shared_bytes_ <= kMaxStaticShared;
    if (!ok) {
      r.last_error = cudaErrorInvalidConfiguration;
      return;
    }
    ++r.stats.launches;
    gridDim = grid_;
    blockDim = block_;
    const uint64_t blocks = uint64_t(grid_.x) * grid_.y * grid_.z;
    std::vector<uint64_t> order(blocks);
    std::iota(order.begin(), order.end(), uint64_t(0));
    if (r.schedule_seed != 0) std::shuffle(order.begin(), order.end(), r.rng);
    r.body = &invoke<F>;
    r.body_arg = &body;
    for (uint64_t linear : order) {
      blockIdx = dim3(static_cast<unsigned>(linear % grid_.x),
                      static_cast<unsigned>((linear / grid_.x) % grid_.y),
                      static_cast<unsigned>(linear / (uint64_t(grid_.x) * grid_.y)));
      if (!run_block(static_cast<unsigned>(threads))) {
        r.last_error = cudaErrorLaunchFailure;
        return;
      }
    }
  }

 private:
  dim3 grid_;
  dim3 block_;
  size_t shared_bytes_;
};

}  // namespace vggrpo_emu

inline void __syncthreads() { vggrpo_emu::syncthreads(); }

inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  if (value < old) *address = value;
  return old;
}

inline unsigned int atomicMin(unsigned int* address, unsigned int value) {
  const unsigned int old = *address;
  if (value < old) *address = value;
  return old;
}

inline float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}

inline double atomicAdd(double* address, double value) {
  const double old = *address;
  *address = old + value;
  return old;
}

inline cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr) {
  (void)stream;
  // CUDA accepts a null pointer for zero bytes; std::memset does not.
  if (bytes > 0) std::memset(ptr, value, bytes);
  return cudaSuccess;
}

inline cudaError_t cudaGetLastError() {
  vggrpo_emu::Runtime& r = vggrpo_emu::runtime();
  const cudaError_t e = r.last_error;
  r.last_error = cudaSuccess;
  return e;
}

inline const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
  }
  return "unknown error";
}
