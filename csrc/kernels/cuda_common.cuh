// Launch helpers shared by the CUDA kernels (torch-free: cuda_runtime.h and our headers only).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace vggrpo {
namespace kernels {
namespace cuda {

// Grid-stride loops cover any size with at most this many blocks per launch dimension. The
// macros exist only so that the emulated tests (csrc/tests/cuda_emu) can shrink the grids and make
// every grid-stride and block-stride loop take several turns on small inputs.
#ifndef VGGRPO_CUDA_MAX_BLOCKS
#define VGGRPO_CUDA_MAX_BLOCKS (int64_t(1) << 20)
#endif
#ifndef VGGRPO_CUDA_MAX_GRID_Y
#define VGGRPO_CUDA_MAX_GRID_Y 65535  // the hardware limit of gridDim.y
#endif

// The z-buffer splat gives each thread several views of one point when there are points enough
// to keep at least this many threads busy (about four waves of a 132-SM GPU at 2048 threads per
// SM); the emulated ASan test lowers it so that its small inputs take the several-views path.
#ifndef VGGRPO_CUDA_SPLAT_MIN_THREADS
#define VGGRPO_CUDA_SPLAT_MIN_THREADS (int64_t(1) << 20)
#endif

constexpr int kThreads = 256;
// The per-view passes (a block per (video, view) summing its pixels, in a fixed order) run with
// bigger blocks: at the paper's scale there are only B*V = 84 of them, fewer than an H100 has SMs,
// so each block must keep many loads in flight on its own. Register use of those kernels (at most
// 42 per thread for sm_80/sm_90, ptxas -v) leaves room for 1024 threads; __launch_bounds__ on
// them makes the compiler keep it that way, and the CMake CUDA build fails on any spill. (The
// macro lets the slower emulated test builds use smaller blocks.)
#ifndef VGGRPO_CUDA_VIEW_THREADS
#define VGGRPO_CUDA_VIEW_THREADS 1024
#endif
constexpr int kViewThreads = VGGRPO_CUDA_VIEW_THREADS;
static_assert((kThreads & (kThreads - 1)) == 0 && (kViewThreads & (kViewThreads - 1)) == 0,
              "block sizes are powers of two: block_sum's tree assumes it");
constexpr int64_t kMaxBlocks = VGGRPO_CUDA_MAX_BLOCKS;
constexpr int64_t kMaxGridY = VGGRPO_CUDA_MAX_GRID_Y;
constexpr int64_t kSplatMinThreads = VGGRPO_CUDA_SPLAT_MIN_THREADS;
static_assert(kMaxBlocks >= 1 && kMaxGridY >= 1 && kMaxGridY <= 65535, "launch grid caps");
static_assert(kSplatMinThreads >= 1, "splat thread floor");

inline cudaStream_t stream_of(CudaExec ex) { return static_cast<cudaStream_t>(ex.stream); }

inline unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

inline unsigned grid_y_for(int64_t n) {
  return static_cast<unsigned>(n < 1 ? 1 : (n > kMaxGridY ? kMaxGridY : n));
}

// Views per splat thread (reproject.cu): all V when there are points enough to fill the GPU, else
// halved until the (points x view chunks) threads reach kSplatMinThreads or a thread has one view.
inline int64_t splat_views_per_thread(int64_t points, int64_t V) {
  int64_t views = V < 1 ? 1 : V;
  while (views > 1 && points * ((V + views - 1) / views) < kSplatMinThreads) {
    views = (views + 1) / 2;
  }
  return views;
}

inline int last_error() { return static_cast<int>(cudaGetLastError()); }

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(blockDim.x) * gridDim.x;
}

// A load of a word that other threads may be changing with atomics at the same time (the
// z-buffer's read-before-atomicMin test). On the GPU it is a plain aligned load, one access; a
// stale value only lets a useless atomic through. The CPU emulation makes it the relaxed atomic
// load it stands for, so that its ThreadSanitizer build (test_cuda_emulated_tsan) reports every
// other unsynchronised access and not this one.
template <typename T>
__device__ __forceinline__ T racing_load(const T* p) {
#if defined(VGGRPO_CUDA_EMULATED)
  return __atomic_load_n(p, __ATOMIC_RELAXED);
#else
  return *p;
#endif
}

// Sum over the block in a fixed tree order (blockDim.x == Threads, a power of two): given the
// same per-thread values it always returns the same bits, which keeps the per-view reductions
// deterministic. Every thread gets the result.
template <int Threads, typename A>
__device__ A block_sum(A value) {
  __shared__ A partial[Threads];
  partial[threadIdx.x] = value;
  __syncthreads();
  for (int stride = Threads / 2; stride > 0; stride >>= 1) {
    if (static_cast<int>(threadIdx.x) < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  const A total = partial[0];
  __syncthreads();
  return total;
}

}  // namespace cuda
}  // namespace kernels
}  // namespace vggrpo
