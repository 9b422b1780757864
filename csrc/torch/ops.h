// The device-generic tensor glue of every op: validate, make inputs contiguous, allocate outputs,
// call the CPU or CUDA kernel. The same functions are registered for the CPU and the CUDA
// dispatch keys (register_cpu.cpp, register_cuda.cpp); the schemas are in library.cpp and the
// contract in docs/ops.md.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace vggrpo {
namespace glue {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

Tensor so3_log(const Tensor& R);
Tensor so3_log_backward(const Tensor& grad_omega, const Tensor& R);

std::tuple<Tensor, Tensor> motion_smoothness(const Tensor& extrinsics, double eps);
Tensor motion_smoothness_backward(const Tensor& grad_trans, const Tensor& grad_rot,
                                  const Tensor& extrinsics, double eps);

std::tuple<Tensor, Tensor> static_points(const Tensor& pointmaps, const OptTensor& scene_flow,
                                         double flow_threshold);

std::tuple<Tensor, Tensor> splat_depth(const Tensor& points, const OptTensor& valid,
                                       const Tensor& extrinsics, const Tensor& intrinsics,
                                       int64_t height, int64_t width);
std::tuple<Tensor, Tensor> splat_depth_backward(const Tensor& grad_depth, const Tensor& winner,
                                                const Tensor& points, const Tensor& extrinsics,
                                                const Tensor& intrinsics);

std::tuple<Tensor, Tensor> view_depth_error(const Tensor& rendered, const Tensor& depths,
                                            const OptTensor& valid);
std::tuple<Tensor, Tensor> view_depth_error_backward(const Tensor& grad_err,
                                                     const Tensor& rendered, const Tensor& depths,
                                                     const OptTensor& valid, const Tensor& count);

Tensor worst_k_mean(const Tensor& err, const Tensor& count, int64_t k);
Tensor worst_k_mean_backward(const Tensor& grad, const Tensor& err, const Tensor& count,
                             int64_t k);

std::tuple<Tensor, Tensor, Tensor, Tensor> reprojection_errors(const Tensor& pointmaps,
                                                               const Tensor& depths,
                                                               const Tensor& extrinsics,
                                                               const Tensor& intrinsics,
                                                               const OptTensor& scene_flow,
                                                               double flow_threshold,
                                                               bool need_winner);
std::tuple<Tensor, Tensor, Tensor> reprojection_errors_backward(
    const Tensor& grad_err, const Tensor& count, const Tensor& winner, const Tensor& valid,
    const Tensor& pointmaps, const Tensor& depths, const Tensor& extrinsics,
    const Tensor& intrinsics);

}  // namespace glue
}  // namespace vggrpo

// X-macro over every registered op, so the CPU, CUDA and no-CUDA registrations cannot drift.
#define VGGRPO_FOR_EACH_OP(X)  \
  X(so3_log)                   \
  X(so3_log_backward)          \
  X(motion_smoothness)         \
  X(motion_smoothness_backward) \
  X(static_points)             \
  X(splat_depth)               \
  X(splat_depth_backward)      \
  X(view_depth_error)          \
  X(view_depth_error_backward) \
  X(worst_k_mean)              \
  X(worst_k_mean_backward)     \
  X(reprojection_errors)       \
  X(reprojection_errors_backward)

#define VGGRPO_IMPL_ONE(name) m.impl(#name, &vggrpo::glue::name);
#define VGGRPO_IMPL_ALL(m) VGGRPO_FOR_EACH_OP(VGGRPO_IMPL_ONE)
