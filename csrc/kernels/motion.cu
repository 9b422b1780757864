// CUDA kernels of so3_log and motion_smoothness: one thread per matrix / per video, over the
// per-element functions of include/vggrpo/so3.h and motion.h (the CPU kernels' formulas).
#include "cuda_common.cuh"
#include "vggrpo/motion.h"
#include "vggrpo/so3.h"

namespace vggrpo {
namespace kernels {

namespace {

template <typename T>
__global__ void so3_log_kernel(const T* R, int64_t n, T* omega) {
  for (int64_t i = cuda::global_thread(); i < n; i += cuda::grid_stride()) {
    so3_log(R + 9 * i, omega + 3 * i);
  }
}

template <typename T>
__global__ void so3_log_backward_kernel(const T* R, const T* grad_omega, int64_t n, T* grad_R) {
  for (int64_t i = cuda::global_thread(); i < n; i += cuda::grid_stride()) {
    so3_log_vjp(R + 9 * i, grad_omega + 3 * i, grad_R + 9 * i);
  }
}

// A video's trajectory is short (T frames, T ~ 8..81): one thread walks it, exactly as the CPU.
template <typename T>
__global__ void motion_kernel(const T* E, int64_t B, int64_t num_frames, T eps, T* e_trans,
                              T* e_rot) {
  for (int64_t b = cuda::global_thread(); b < B; b += cuda::grid_stride()) {
    motion_smoothness_sequence(E + 12 * num_frames * b, num_frames, eps, e_trans + b, e_rot + b);
  }
}

template <typename T>
__global__ void motion_backward_kernel(const T* E, int64_t B, int64_t num_frames, T eps,
                                       const T* grad_trans, const T* grad_rot, T* grad_E) {
  for (int64_t b = cuda::global_thread(); b < B; b += cuda::grid_stride()) {
    T* g = grad_E + 12 * num_frames * b;
    for (int64_t i = 0; i < 12 * num_frames; ++i) g[i] = T(0);
    motion_smoothness_sequence_vjp(E + 12 * num_frames * b, num_frames, eps, grad_trans[b],
                                   grad_rot[b], g);
  }
}

}  // namespace

const char* cuda_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

template <typename T>
int so3_log_cuda(const T* R, int64_t n, T* omega, CudaExec ex) {
  if (n == 0) return 0;
  so3_log_kernel<<<cuda::blocks_for(n), cuda::kThreads, 0, cuda::stream_of(ex)>>>(R, n, omega);
  return cuda::last_error();
}

template <typename T>
int so3_log_backward_cuda(const T* R, const T* grad_omega, int64_t n, T* grad_R, CudaExec ex) {
  if (n == 0) return 0;
  so3_log_backward_kernel<<<cuda::blocks_for(n), cuda::kThreads, 0, cuda::stream_of(ex)>>>(
      R, grad_omega, n, grad_R);
  return cuda::last_error();
}

template <typename T>
int motion_smoothness_cuda(const T* E, int64_t B, int64_t num_frames, T eps, T* e_trans, T* e_rot,
                           CudaExec ex) {
  if (B == 0) return 0;
  motion_kernel<<<cuda::blocks_for(B), cuda::kThreads, 0, cuda::stream_of(ex)>>>(
      E, B, num_frames, eps, e_trans, e_rot);
  return cuda::last_error();
}

template <typename T>
int motion_smoothness_backward_cuda(const T* E, int64_t B, int64_t num_frames, T eps,
                                    const T* grad_trans, const T* grad_rot, T* grad_E,
                                    CudaExec ex) {
  if (B == 0) return 0;
  motion_backward_kernel<<<cuda::blocks_for(B), cuda::kThreads, 0, cuda::stream_of(ex)>>>(
      E, B, num_frames, eps, grad_trans, grad_rot, grad_E);
  return cuda::last_error();
}

#define VGGRPO_INSTANTIATE(T)                                                                 \
  template int so3_log_cuda<T>(const T*, int64_t, T*, CudaExec);                             \
  template int so3_log_backward_cuda<T>(const T*, const T*, int64_t, T*, CudaExec);          \
  template int motion_smoothness_cuda<T>(const T*, int64_t, int64_t, T, T*, T*, CudaExec);    \
  template int motion_smoothness_backward_cuda<T>(const T*, int64_t, int64_t, T, const T*,    \
                                                  const T*, T*, CudaExec);
VGGRPO_INSTANTIATE(float)
VGGRPO_INSTANTIATE(double)
#undef VGGRPO_INSTANTIATE

}  // namespace kernels
}  // namespace vggrpo
