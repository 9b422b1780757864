// Entry points of the torch-free kernel core: raw pointers to contiguous row-major arrays, sizes
// as int64_t, no allocation, no exceptions. The tensor glue in csrc/torch/ validates every input
// before calling here. Each op has a *_cpu variant (OpenMP, `threads` workers) and, in CUDA
// builds, a *_cuda variant (csrc/kernels/*.cu) on the caller's stream.
//
// Layouts (docs/ops.md): E = extrinsics as [.., 12] rows of [R | t]; K = intrinsics [.., 9];
// points [B, N, 3] with N = T*H*W when they come from pointmaps [B, T, H, W, 3].
#pragma once

#include <cstdint>

namespace vggrpo {
namespace kernels {

// B videos, V views of H x W pixels.
struct ViewGrid {
  int64_t B, V, H, W;
  int64_t pixels() const { return H * W; }
};

// ---- so3_log -------------------------------------------------------------------------------
template <typename T>
void so3_log_cpu(const T* R, int64_t n, T* omega, int threads);
template <typename T>
void so3_log_backward_cpu(const T* R, const T* grad_omega, int64_t n, T* grad_R, int threads);

// ---- motion_smoothness: E [B, num_frames, 12] ------------------------------------------------
template <typename T>
void motion_smoothness_cpu(const T* E, int64_t B, int64_t num_frames, T eps, T* e_trans, T* e_rot,
                           int threads);
template <typename T>
void motion_smoothness_backward_cpu(const T* E, int64_t B, int64_t num_frames, T eps,
                                    const T* grad_trans, const T* grad_rot, T* grad_E,
                                    int threads);

// ---- static_points: pointmaps/flow [B, N, 3]; flow may be null ------------------------------
template <typename T>
void static_points_cpu(const T* pointmaps, const T* flow, T flow_threshold, int64_t B, int64_t N,
                       T* points, bool* valid, int threads);

// ---- splat_depth: points [B, N, 3], valid [B, N] or null, E [B, V, 12], K [B, V, 9] ----------
template <typename T>
void splat_depth_cpu(const T* points, const bool* valid, const T* E, const T* K, int64_t N,
                     ViewGrid g, T* depth, int64_t* winner, int threads);
// grad_points [B, N, 3] and grad_E [B, V, 12] are written (zeroed here first).
template <typename T>
void splat_depth_backward_cpu(const T* grad_depth, const int64_t* winner, const T* points,
                              const T* E, int64_t N, ViewGrid g, T* grad_points, T* grad_E,
                              int threads);

// ---- view_depth_error: rendered/depths [B, V, H, W] -------------------------------------------
// valid [B, V, H, W] may be null (every pixel may count).
template <typename T>
void view_depth_error_cpu(const T* rendered, const T* depths, const bool* valid, ViewGrid g,
                          T* err, int64_t* count, int threads);
template <typename T>
void view_depth_error_backward_cpu(const T* grad_err, const T* rendered, const T* depths,
                                   const bool* valid, const int64_t* count, ViewGrid g,
                                   T* grad_rendered, T* grad_depths, int threads);

// ---- worst_k_mean: err/count [B, V] -----------------------------------------------------------
template <typename T>
void worst_k_mean_cpu(const T* err, const int64_t* count, int64_t B, int64_t V, int64_t k, T* out,
                      int threads);
template <typename T>
void worst_k_mean_backward_cpu(const T* grad, const T* err, const int64_t* count, int64_t B,
                               int64_t V, int64_t k, T* grad_err, int threads);

// ---- reprojection_errors: pointmaps/flow [B, V*H*W, 3], depths [B, V, H, W] -----------------
// The views are the frames (V == T). Writes err/count [B, V], winner [B, V, H, W] (may be null:
// no winners needed, no gradient to come) and the static mask valid [B, V*H*W] (which points
// entered the cloud and which pixels were compared).
template <typename T>
void reprojection_errors_cpu(const T* pointmaps, const T* depths, const T* E, const T* K,
                             const T* flow, T flow_threshold, ViewGrid g, T* err, int64_t* count,
                             int64_t* winner, bool* valid, int threads);
// grad_pointmaps [B, N, 3], grad_depths [B, V, H, W], grad_E [B, V, 12] are written.
template <typename T>
void reprojection_errors_backward_cpu(const T* grad_err, const int64_t* count,
                                      const int64_t* winner, const bool* valid,
                                      const T* pointmaps, const T* depths, const T* E, ViewGrid g,
                                      T* grad_pointmaps, T* grad_depths, T* grad_E, int threads);

// ---- CUDA (csrc/kernels/*.cu; built only with CUDA) --------------------------------------------
// Same arguments as the CPU variants, with the launch settings last instead of `threads`. Every
// function enqueues its kernels on `stream` (a cudaStream_t, the caller's current stream) without
// synchronising, allocates nothing, and returns a cudaError_t as int (0 = success).
struct CudaExec {
  void* stream;
  // torch.use_deterministic_algorithms(True): backward scatters take their gather path (bitwise
  // reproducible) instead of float atomics (whose summation order varies from run to run).
  bool deterministic;
};

const char* cuda_error_string(int error);

template <typename T>
int so3_log_cuda(const T* R, int64_t n, T* omega, CudaExec ex);
template <typename T>
int so3_log_backward_cuda(const T* R, const T* grad_omega, int64_t n, T* grad_R, CudaExec ex);
template <typename T>
int motion_smoothness_cuda(const T* E, int64_t B, int64_t num_frames, T eps, T* e_trans, T* e_rot,
                           CudaExec ex);
template <typename T>
int motion_smoothness_backward_cuda(const T* E, int64_t B, int64_t num_frames, T eps,
                                    const T* grad_trans, const T* grad_rot, T* grad_E,
                                    CudaExec ex);
template <typename T>
int static_points_cuda(const T* pointmaps, const T* flow, T flow_threshold, int64_t B, int64_t N,
                       T* points, bool* valid, CudaExec ex);
template <typename T>
int splat_depth_cuda(const T* points, const bool* valid, const T* E, const T* K, int64_t N,
                     ViewGrid g, T* depth, int64_t* winner, CudaExec ex);
// K: the intrinsics, for the deterministic gather path (which re-projects points).
template <typename T>
int splat_depth_backward_cuda(const T* grad_depth, const int64_t* winner, const T* points,
                              const T* E, const T* K, int64_t N, ViewGrid g, T* grad_points,
                              T* grad_E, CudaExec ex);
template <typename T>
int view_depth_error_cuda(const T* rendered, const T* depths, const bool* valid, ViewGrid g,
                          T* err, int64_t* count, CudaExec ex);
template <typename T>
int view_depth_error_backward_cuda(const T* grad_err, const T* rendered, const T* depths,
                                   const bool* valid, const int64_t* count, ViewGrid g,
                                   T* grad_rendered, T* grad_depths, CudaExec ex);
template <typename T>
int worst_k_mean_cuda(const T* err, const int64_t* count, int64_t B, int64_t V, int64_t k, T* out,
                      CudaExec ex);
template <typename T>
int worst_k_mean_backward_cuda(const T* grad, const T* err, const int64_t* count, int64_t B,
                               int64_t V, int64_t k, T* grad_err, CudaExec ex);
// The kernel cannot allocate its z-buffer, so the caller passes exactly one of: winner
// [B, V, H, W] int64 (the packed z-buffer, then the winner indices; also a scratch for float64
// without winners), or depth_keys [B, V, H, W] uint32 scratch (the depth-only z-buffer, float32
// without winners: half the memory). Anything else returns cudaErrorInvalidValue.
template <typename T>
int reprojection_errors_cuda(const T* pointmaps, const T* depths, const T* E, const T* K,
                             const T* flow, T flow_threshold, ViewGrid g, T* err, int64_t* count,
                             int64_t* winner, uint32_t* depth_keys, bool* valid, CudaExec ex);
template <typename T>
int reprojection_errors_backward_cuda(const T* grad_err, const int64_t* count,
                                      const int64_t* winner, const bool* valid,
                                      const T* pointmaps, const T* depths, const T* E, const T* K,
                                      ViewGrid g, T* grad_pointmaps, T* grad_depths, T* grad_E,
                                      CudaExec ex);

}  // namespace kernels
}  // namespace vggrpo
