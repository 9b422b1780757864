// Schemas of the vggrpo ops (torch.ops.vggrpo.*); the Python module vggrpo._C is module.cpp.
// Autograd formulas and fake (meta) kernels are registered from Python, in vggrpo/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(vggrpo, m) {
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  m.def("so3_log(Tensor R) -> Tensor", tags);
  m.def("so3_log_backward(Tensor grad_omega, Tensor R) -> Tensor", tags);
  m.def("motion_smoothness(Tensor extrinsics, float eps) -> (Tensor, Tensor)", tags);
  m.def(
      "motion_smoothness_backward(Tensor grad_trans, Tensor grad_rot, Tensor extrinsics, "
      "float eps) -> Tensor",
      tags);
  m.def(
      "static_points(Tensor pointmaps, Tensor? scene_flow, float flow_threshold) -> "
      "(Tensor, Tensor)",
      tags);
  m.def(
      "splat_depth(Tensor points, Tensor? valid, Tensor extrinsics, Tensor intrinsics, "
      "int height, int width) -> (Tensor, Tensor)",
      tags);
  m.def(
      "splat_depth_backward(Tensor grad_depth, Tensor winner, Tensor points, Tensor extrinsics, "
      "Tensor intrinsics) -> (Tensor, Tensor)",
      tags);
  m.def("view_depth_error(Tensor rendered, Tensor depths, Tensor? valid) -> (Tensor, Tensor)",
        tags);
  m.def(
      "view_depth_error_backward(Tensor grad_err, Tensor rendered, Tensor depths, Tensor? valid, "
      "Tensor count) -> (Tensor, Tensor)",
      tags);
  m.def("worst_k_mean(Tensor err, Tensor count, int k) -> Tensor", tags);
  m.def("worst_k_mean_backward(Tensor grad, Tensor err, Tensor count, int k) -> Tensor", tags);
  m.def(
      "reprojection_errors(Tensor pointmaps, Tensor depths, Tensor extrinsics, "
      "Tensor intrinsics, Tensor? scene_flow, float flow_threshold, bool need_winner=True) -> "
      "(Tensor, Tensor, Tensor, Tensor)",
      tags);
  m.def(
      "reprojection_errors_backward(Tensor grad_err, Tensor count, Tensor winner, Tensor valid, "
      "Tensor pointmaps, Tensor depths, Tensor extrinsics, Tensor intrinsics) -> "
      "(Tensor, Tensor, Tensor)",
      tags);
}
