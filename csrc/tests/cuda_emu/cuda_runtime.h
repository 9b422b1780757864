// A CPU emulation of the part of the CUDA runtime that csrc/kernels/*.cu uses, so that the CUDA
// kernels' own code (indexing, grid-stride loops, launch shapes, block reductions, z-buffer
// atomics, the deterministic and atomic backward paths) runs and is checked on a machine with no
// GPU. It replaces <cuda_runtime.h> for the emulated build only (CMakeLists.txt, target
// vggrpo_core_emu); rewrite_launches.py turns each `kernel<<<grid, block, smem, stream>>>(args)`
// into `vggrpo_emu::Launch(grid, block, smem, stream) << [&] { kernel(args); }`.
//
// Execution model: the threads of a block are fibers (ucontext) on one OS thread, switched at
// __syncthreads(), so a barrier means what it means on the GPU: every thread of the block reaches
// it before any passes it. A launch runs its blocks one after another on the launching thread, or,
// with set_workers(k > 1), spread over k OS threads that run at the same time (block i on worker
// i % k, each worker one block at a time). Since a worker runs one block at a time, a
// function-local `static thread_local` (what __shared__ becomes) is that block's shared memory.
// All state is per OS thread, so separate threads may launch concurrently. Atomics are real
// (relaxed) atomics, as CUDA's are.
//
// Schedules: set_schedule(seed) with seed != 0 shuffles the order of the blocks and, at every
// barrier round, of the threads; results that the kernels claim are order-independent (z-buffer
// winners, fixed-tree block sums, the deterministic gather path) must not change, and float
// atomics see a different summation order.
//
// Under ThreadSanitizer (test_cuda_emulated_tsan, built with -fsanitize=thread and 2 workers)
// every fiber is a TSan fiber and the happens-before order is the GPU's: nothing orders two
// blocks of one launch on different workers, nothing orders two threads of a block except
// __syncthreads() (a release by every thread, then an acquire), and a launch is ordered after
// the one before it. So a plain store where an atomic is needed, a missing barrier, or two blocks
// writing one element is reported as a data race, with the .cu line, whatever the timing.
// (Blocks on one worker are ordered one after the other; the 2 workers make every pair of
// neighbouring blocks concurrent.)
//
// What this does not emulate: warp-level behaviour, the device's floating-point code generation
// (nvcc --fmad=false is assumed, as the real build sets it), memory spaces, and the speed.
// Launch-configuration limits are checked as the hardware checks them
// (cudaErrorInvalidConfiguration).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define VGGRPO_EMU_TSAN 1
#endif

// The default number of OS threads a launch spreads its blocks over (set_workers changes it).
#ifndef VGGRPO_EMU_WORKERS
#define VGGRPO_EMU_WORKERS 1
#endif

// Tells cuda_common.cuh that it is compiled against this emulation.
#define VGGRPO_CUDA_EMULATED 1

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

// The per-block built-in variables, set by the OS thread that runs the block before its fibers
// start. Per OS thread, like the whole emulator state: torch may run ops from several threads at
// once, and a launch may run blocks on several workers. threadIdx is per fiber (below).
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

enum FiberState : unsigned char { kNew, kRunning, kBarrier, kDone };

// The scheduler's bookkeeping that fibers also touch (the current fiber, the fibers' states) is
// read and written with relaxed atomics: under TSan the fibers of a block are unordered, as a
// block's threads are, and the emulator's own accesses must not read as races in the kernels.
template <typename T>
T load_relaxed(const T* p) {
  return __atomic_load_n(p, __ATOMIC_RELAXED);
}
template <typename T>
void store_relaxed(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

// An OS thread that runs blocks for the launches of one launching thread. Each has its own
// mutex: the launcher's hand-over orders a launch's blocks after what came before it, and the
// worker's "done" orders them before what comes after, but nothing orders two workers' blocks of
// one launch (on the GPU nothing does).
class Worker {
 public:
  Worker() : thread_([this] { loop(); }) {}
  ~Worker() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      quit_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  void start(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = std::move(task);
      done_ = false;
    }
    wake_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    wake_.wait(lock, [this] { return done_; });
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return quit_ || task_ != nullptr; });
        if (task_ == nullptr) return;
        task = std::move(task_);
        task_ = nullptr;
      }
      task();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        done_ = true;
      }
      wake_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::function<void()> task_;
  bool done_ = true;
  bool quit_ = false;
  std::thread thread_;  // last: starts once the members above exist
};

struct Runtime {
  cudaError_t last_error = cudaSuccess;  // sticky until cudaGetLastError
  uint64_t schedule_seed = 0;
  unsigned workers = VGGRPO_EMU_WORKERS;
  std::mt19937_64 rng;
  Stats stats;

  ucontext_t scheduler{};
  std::vector<ucontext_t> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<unsigned char> state;  // FiberState, accessed with load/store_relaxed
  std::vector<unsigned> round;       // barriers passed, per fiber (written by that fiber only)
  std::vector<dim3> index;           // threadIdx of each fiber
  int current = -1;                  // accessed with load/store_relaxed
  void (*body)(const void*) = nullptr;
  const void* body_arg = nullptr;
  std::vector<std::unique_ptr<Worker>> pool;  // grown on demand, kept: fiber stacks are reused
#if defined(VGGRPO_EMU_TSAN)
  void* tsan_scheduler = nullptr;
  std::vector<void*> tsan_fibers;  // never destroyed: they live as long as the OS thread
  // What __syncthreads() releases into and acquires from, by the parity of the barrier round:
  // a thread resumed for round k + 1 acquires the releases of round k only, never the releases
  // that faster threads already made at the end of round k + 1.
  char barrier[2] = {0, 0};
  char block_end = 0;  // what finished threads release into and run_block acquires at the end
#endif
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

// The OS threads a launch (from this thread) spreads its blocks over; 1 runs them in turn.
inline void set_workers(unsigned workers) { runtime().workers = workers < 1 ? 1 : workers; }
inline unsigned workers() { return runtime().workers; }

inline Stats& stats() { return runtime().stats; }

// What `threadIdx` reads: the index of the fiber that is running.
inline dim3 thread_index() {
  const Runtime& r = runtime();
  return r.index[static_cast<size_t>(load_relaxed(&r.current))];
}

inline void fiber_entry() {
  Runtime& r = runtime();
  r.body(r.body_arg);
  store_relaxed(&r.state[static_cast<size_t>(load_relaxed(&r.current))],
                static_cast<unsigned char>(kDone));
#if defined(VGGRPO_EMU_TSAN)
  // The worker's next block (which reuses this fiber's stack and the block's shared memory) comes
  // after this one, as it does on an SM: run_block acquires this once every thread is done. Not
  // a synchronising switch, which would order this thread before the ones resumed after it.
  void* const scheduler = r.tsan_scheduler;  // read before the release that covers it
  __tsan_release(&r.block_end);
  __tsan_switch_to_fiber(scheduler, __tsan_switch_to_fiber_no_sync);
#endif
  // Back to the scheduler without returning: under TSan a return would pop the scheduler's
  // shadow call stack, not this fiber's.
  setcontext(&r.scheduler);
}

__attribute__((noinline)) inline void syncthreads() {
  Runtime& r = runtime();
  const size_t t = static_cast<size_t>(load_relaxed(&r.current));
#if defined(VGGRPO_EMU_TSAN)
  void* const scheduler = r.tsan_scheduler;  // read before the release that covers it
  __tsan_release(&r.barrier[r.round[t] & 1]);
#endif
  store_relaxed(&r.state[t], static_cast<unsigned char>(kBarrier));
#if defined(VGGRPO_EMU_TSAN)
  __tsan_switch_to_fiber(scheduler, __tsan_switch_to_fiber_no_sync);
#endif
  swapcontext(&r.fibers[t], &r.scheduler);
  // Resumed in the next round (the scheduler set current to this fiber again).
#if defined(VGGRPO_EMU_TSAN)
  const size_t u = static_cast<size_t>(load_relaxed(&r.current));
  __tsan_acquire(&r.barrier[r.round[u] & 1]);
  ++r.round[u];
#endif
}

// Starts or resumes fiber t until its next barrier or its end. Kept out of line: the context
// calls return twice, which must not touch the caller's locals (-Wclobbered).
__attribute__((noinline)) inline void resume_fiber(unsigned t) {
  Runtime& r = runtime();
  if (load_relaxed(&r.state[t]) == kNew) {
    getcontext(&r.fibers[t]);
    r.fibers[t].uc_stack.ss_sp = r.stacks[t].get();
    r.fibers[t].uc_stack.ss_size = kFiberStack;
    r.fibers[t].uc_link = &r.scheduler;
    makecontext(&r.fibers[t], fiber_entry, 0);
  }
  store_relaxed(&r.state[t], static_cast<unsigned char>(kRunning));
  store_relaxed(&r.current, static_cast<int>(t));
#if defined(VGGRPO_EMU_TSAN)
  // Synchronising, but only from the scheduler, which itself never acquires a fiber's work
  // before the block ends: no order between two threads of the block comes from here.
  __tsan_switch_to_fiber(r.tsan_fibers[t], 0);
#endif
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
    r.round.resize(n);
    r.index.resize(n);
    while (r.stacks.size() < n) r.stacks.emplace_back(new char[kFiberStack]);
  }
  for (unsigned t = 0; t < n; ++t) {
    store_relaxed(&r.state[t], static_cast<unsigned char>(kNew));
    r.round[t] = 0;
    r.index[t] = dim3(t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y));
  }
#if defined(VGGRPO_EMU_TSAN)
  // One TSan fiber per emulated thread, kept from block to block (creating them is costly). A
  // fiber's first resume in a block is a synchronising switch from the scheduler, which has by
  // then acquired the whole previous block (block_end): each block starts ordered after the one
  // before it on this worker, and after the launch's inputs.
  r.tsan_scheduler = __tsan_get_current_fiber();
  while (r.tsan_fibers.size() < n) r.tsan_fibers.push_back(__tsan_create_fiber(0));
#endif
  std::vector<unsigned> order(n);
  std::iota(order.begin(), order.end(), 0u);
  for (;;) {
    if (r.schedule_seed != 0) std::shuffle(order.begin(), order.end(), r.rng);
    for (unsigned t : order) {
      if (load_relaxed(&r.state[t]) == kDone) continue;
      resume_fiber(t);
    }
    store_relaxed(&r.current, -1);
    unsigned done = 0;
    for (unsigned t = 0; t < n; ++t) done += load_relaxed(&r.state[t]) == kDone ? 1u : 0u;
    if (done == n) {
#if defined(VGGRPO_EMU_TSAN)
      __tsan_acquire(&r.block_end);
#endif
      return true;
    }
    if (done != 0) {
      std::fprintf(stderr,
                   "cuda emulation: __syncthreads() reached by %u of %u threads of block "
                   "(%u, %u, %u): divergent barrier\n",
                   n - done, n, blockIdx.x, blockIdx.y, blockIdx.z);
#if defined(VGGRPO_EMU_TSAN)
      // Every thread has released what it did, at its barrier or at its end: acquire all of it,
      // and replace the fibers left suspended (their shadow call stacks are mid-function).
      __tsan_acquire(&r.barrier[0]);
      __tsan_acquire(&r.barrier[1]);
      __tsan_acquire(&r.block_end);
      for (unsigned t = 0; t < n; ++t) {
        __tsan_destroy_fiber(r.tsan_fibers[t]);
        r.tsan_fibers[t] = __tsan_create_fiber(0);
      }
#endif
      return false;
    }
  }
}

template <typename F>
void invoke(const void* f) {
  (*static_cast<const F*>(f))();
}

// Runs the blocks order[first], order[first + step], ... of a launch on the calling OS thread.
// Returns false on a divergent barrier.
template <typename F>
bool run_blocks(const F& body, dim3 grid, dim3 block, const std::vector<uint64_t>& order,
                size_t first, size_t step) {
  Runtime& r = runtime();
  gridDim = grid;
  blockDim = block;
  r.body = &invoke<F>;
  r.body_arg = &body;
  const unsigned threads = block.x * block.y * block.z;
  for (size_t i = first; i < order.size(); i += step) {
    const uint64_t linear = order[i];
    blockIdx = dim3(static_cast<unsigned>(linear % grid.x),
                    static_cast<unsigned>((linear / grid.x) % grid.y),
                    static_cast<unsigned>(linear / (uint64_t(grid.x) * grid.y)));
    if (!run_block(threads)) return false;
  }
  return true;
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
    const uint64_t blocks = uint64_t(grid_.x) * grid_.y * grid_.z;
    std::vector<uint64_t> order(blocks);
    std::iota(order.begin(), order.end(), uint64_t(0));
    if (r.schedule_seed != 0) std::shuffle(order.begin(), order.end(), r.rng);
    const size_t workers = static_cast<size_t>(std::min<uint64_t>(r.workers, blocks));
    bool ok_blocks = true;
    if (workers <= 1) {
      ok_blocks = run_blocks(body, grid_, block_, order, 0, 1);
    } else {
      std::vector<char> worker_ok(workers, 0);
      while (r.pool.size() < workers) r.pool.emplace_back(new Worker);
      for (size_t w = 0; w < workers; ++w) {
        const uint64_t seed =
            r.schedule_seed == 0 ? 0 : r.schedule_seed + 0x9e3779b97f4a7c15ull * (w + 1);
        r.pool[w]->start([&, w, seed] {
          set_schedule(seed);
          worker_ok[w] = run_blocks(body, grid_, block_, order, w, workers) ? 1 : 0;
        });
      }
      for (size_t w = 0; w < workers; ++w) r.pool[w]->wait();
      for (char o : worker_ok) ok_blocks = ok_blocks && o != 0;
    }
    if (!ok_blocks) r.last_error = cudaErrorLaunchFailure;
  }

 private:
  dim3 grid_;
  dim3 block_;
  size_t shared_bytes_;
};

}  // namespace vggrpo_emu

// Per fiber: a macro, not a variable, since every fiber of a block shares its OS thread's
// thread_locals.
#define threadIdx (::vggrpo_emu::thread_index())

inline void __syncthreads() { vggrpo_emu::syncthreads(); }

// CUDA's atomics are relaxed read-modify-writes; so are these.
template <typename T>
T emu_atomic_min(T* address, T value) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (value < old &&
         !__atomic_compare_exchange_n(address, &old, value, true, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
  }
  return old;
}

template <typename T>
T emu_atomic_add(T* address, T value) {
  T old;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  T sum = old + value;
  while (!__atomic_compare_exchange(address, &old, &sum, true, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED)) {
    sum = old + value;
  }
  return old;
}

inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  return emu_atomic_min(address, value);
}

inline unsigned int atomicMin(unsigned int* address, unsigned int value) {
  return emu_atomic_min(address, value);
}

inline float atomicAdd(float* address, float value) { return emu_atomic_add(address, value); }

inline double atomicAdd(double* address, double value) { return emu_atomic_add(address, value); }

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
