// Per-operator ATen headers, not <ATen/ATen.h>: the whole operator set was most of the glue's
// compile time. The two defines (as PyTorch builds itself) make an include of it a compile error.
#define AT_PER_OPERATOR_HEADERS
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS

#include "ops.h"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#if defined(VGGRPO_WITH_CUDA) && !defined(VGGRPO_EMULATED_CUDA)
// The one CUDA header of the glue, for the caller's current stream. c10::Stream::native_handle()
// would avoid it, but it is new in torch 2.11, and we support torch >= 2.4.
#include <c10/cuda/CUDAStream.h>
#endif

#include <cmath>
#include <type_traits>

#include "checks.h"
#include "kernels.h"
#include "vggrpo/zbuffer.h"

namespace vggrpo {
namespace glue {

namespace {

#if defined(VGGRPO_EMULATED_CUDA)
// Test builds only (csrc/tests/torch_variant.py emulated): every call takes the CUDA branch,
// whose kernels are the CUDA sources compiled against the CPU emulation of the CUDA runtime, on
// host memory. Never defined by setup.py.
constexpr bool kEmulatedCuda = true;
#else
constexpr bool kEmulatedCuda = false;
#endif

// Where and how a kernel runs: the caller's device (guarded for the call), its current CUDA
// stream, or torch's CPU thread count (so torch.set_num_threads governs our OpenMP loops too).
struct Exec {
  explicit Exec(const Tensor& t) : guard(t.device()), cuda(t.is_cuda() || kEmulatedCuda) {
#if defined(VGGRPO_WITH_CUDA) && !defined(VGGRPO_EMULATED_CUDA)
    if (t.is_cuda()) {
      stream = c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
    }
#endif
    threads = at::get_num_threads();
    deterministic = at::globalContext().deterministicAlgorithms();
  }
  kernels::CudaExec cuda_exec() const { return kernels::CudaExec{stream, deterministic}; }
  c10::DeviceGuard guard;
  bool cuda;
  void* stream = nullptr;
  int threads = 1;
  bool deterministic = false;
};

[[maybe_unused]] void check_cuda(int error, const char* op) {
  TORCH_CHECK(error == 0, "vggrpo.", op, ": CUDA kernel failed: ",
              kernels::cuda_error_string(error));
}

}  // namespace

#if defined(VGGRPO_WITH_CUDA)
#define VGGRPO_LAUNCH(op, T, ex, ...)                                                     \
  do {                                                                                   \
    if ((ex).cuda) {                                                                     \
      check_cuda(kernels::op##_cuda<T>(__VA_ARGS__, (ex).cuda_exec()), #op);             \
    } else {                                                                             \
      kernels::op##_cpu<T>(__VA_ARGS__, (ex).threads);                                   \
    }                                                                                    \
  } while (0)
#else
#define VGGRPO_LAUNCH(op, T, ex, ...)                                                     \
  do {                                                                                   \
    TORCH_INTERNAL_ASSERT(!(ex).cuda, "CUDA tensor reached a CPU-only build of vggrpo"); \
    kernels::op##_cpu<T>(__VA_ARGS__, (ex).threads);                                     \
  } while (0)
#endif

namespace {

template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

Tensor optional_contiguous(const OptTensor& t) {
  return t.has_value() && t->defined() ? t->contiguous() : Tensor();
}

// Extrinsics come as [.., 3, 4] or [.., 4, 4]; kernels read the [R | t] rows only.
Tensor extrinsic_rows(const Tensor& E) {
  return E.size(-2) == 4 ? E.narrow(-2, 0, 3).contiguous() : E.contiguous();
}

// Gradient of the [R | t] rows back to the caller's extrinsics layout (zero bottom row).
Tensor like_extrinsics(const Tensor& grad_rows, const Tensor& E) {
  return E.size(-2) == 4 ? at::constant_pad_nd(grad_rows, {0, 0, 0, 1}) : grad_rows;
}

void check_finite_scalar(const char* op, const char* arg, double value, double min_value,
                         bool strict) {
  const bool ok = std::isfinite(value) && (strict ? value > min_value : value >= min_value);
  TORCH_CHECK_VALUE(ok, "vggrpo.", op, ": expected `", arg, "` to be a finite number ",
                    strict ? "> " : ">= ", min_value, ", got ", value);
}

void check_num_points(const char* op, int64_t N) {
  TORCH_CHECK_VALUE(N <= kMaxPoints, "vggrpo.", op, ": at most ", kMaxPoints,
                    " points per video fit the 32-bit index of the z-buffer key, got ", N);
}

}  // namespace

// ---- so3_log -------------------------------------------------------------------------------

namespace {
void check_rotations(const char* op, const char* arg, const Tensor& R) {
  TORCH_CHECK_TYPE(R.defined(), "vggrpo.", op, ": `", arg, "` must be a tensor, got None");
  TORCH_CHECK_VALUE(R.dim() >= 2 && R.size(-1) == 3 && R.size(-2) == 3, "vggrpo.", op,
                    ": expected `", arg, "` of shape [..., 3, 3], got ", shape_str(R.sizes()));
  check_floating(op, arg, R);
}

std::vector<int64_t> omega_shape(const Tensor& R) {
  std::vector<int64_t> s(R.sizes().begin(), R.sizes().end() - 1);
  s.back() = 3;
  return s;
}
}  // namespace

Tensor so3_log(const Tensor& R) {
  check_rotations("so3_log", "R", R);
  const Tensor Rc = R.contiguous();
  Tensor omega = at::empty(omega_shape(R), R.options());
  const int64_t n = R.numel() / 9;
  Exec ex(R);
  AT_DISPATCH_FLOATING_TYPES(R.scalar_type(), "vggrpo", [&] {
    VGGRPO_LAUNCH(so3_log, scalar_t, ex, ptr<scalar_t>(Rc), n, ptr<scalar_t>(omega));
  });
  return omega;
}

Tensor so3_log_backward(const Tensor& grad_omega, const Tensor& R) {
  const char* op = "so3_log_backward";
  check_rotations(op, "R", R);
  TORCH_CHECK_TYPE(grad_omega.defined(), "vggrpo.", op, ": `grad_omega` must be a tensor, got None");
  TORCH_CHECK_VALUE(grad_omega.sizes() == at::IntArrayRef(omega_shape(R)), "vggrpo.", op,
                    ": expected `grad_omega` of shape ", shape_str(omega_shape(R)), ", got ",
                    shape_str(grad_omega.sizes()));
  check_floating(op, "grad_omega", grad_omega);
  check_same_device_and_dtype(op, {{"R", R}, {"grad_omega", grad_omega}});
  const Tensor Rc = R.contiguous();
  const Tensor gc = grad_omega.contiguous();
  Tensor grad_R = at::empty(R.sizes(), R.options());
  const int64_t n = R.numel() / 9;
  Exec ex(R);
  AT_DISPATCH_FLOATING_TYPES(R.scalar_type(), "vggrpo", [&] {
    VGGRPO_LAUNCH(so3_log_backward, scalar_t, ex, ptr<scalar_t>(Rc), ptr<scalar_t>(gc), n,
                  ptr<scalar_t>(grad_R));
  });
  return grad_R;
}

// ---- motion_smoothness -------------------------------------------------------------------------

namespace {
void check_motion_inputs(const char* op, ShapeCheck& shapes, const Tensor& extrinsics, double eps) {
  shapes("extrinsics", extrinsics, {"B", "T", "3|4", "4"});
  check_floating(op, "extrinsics", extrinsics);
  TORCH_CHECK_VALUE(shapes["T"] >= 3, "vggrpo.", op,
                    ": needs at least 3 frames (T >= 3) to form an acceleration; `extrinsics` "
                    "has shape ",
                    shape_str(extrinsics.sizes()));
  check_finite_scalar(op, "eps", eps, 0.0, /*strict=*/true);
}
}  // namespace

std::tuple<Tensor, Tensor> motion_smoothness(const Tensor& extrinsics, double eps) {
  const char* op = "motion_smoothness";
  ShapeCheck shapes(op);
  check_motion_inputs(op, shapes, extrinsics, eps);
  const int64_t B = shapes["B"], T = shapes["T"];
  const Tensor E = extrinsic_rows(extrinsics);
  Tensor e_trans = at::empty({B}, extrinsics.options());
  Tensor e_rot = at::empty({B}, extrinsics.options());
  Exec ex(extrinsics);
  AT_DISPATCH_FLOATING_TYPES(E.scalar_type(), "vggrpo", [&] {
    VGGRPO_LAUNCH(motion_smoothness, scalar_t, ex, ptr<scalar_t>(E), B, T,
                  static_cast<scalar_t>(eps), ptr<scalar_t>(e_trans), ptr<scalar_t>(e_rot));
  });
  return {e_trans, e_rot};
}

Tensor motion_smoothness_backward(const Tensor& grad_trans, const Tensor& grad_rot,
                                  const Tensor& extrinsics, double eps) {
  const char* op = "motion_smoothness_backward";
  ShapeCheck shapes(op);
  check_motion_inputs(op, shapes, extrinsics, eps);
  shapes("grad_trans", grad_trans, {"B"});
  shapes("grad_rot", grad_rot, {"B"});
  check_floating(op, "grad_trans", grad_trans);
  check_floating(op, "grad_rot", grad_rot);
  check_same_device_and_dtype(
      op, {{"extrinsics", extrinsics}, {"grad_trans", grad_trans}, {"grad_rot", grad_rot}});
  const int64_t B = shapes["B"], T = shapes["T"];
  const Tensor E = extrinsic_rows(extrinsics);
  const Tensor gt = grad_trans.contiguous();
  const Tensor gr = grad_rot.contiguous();
  Tensor grad_E = at::empty({B, T, 3, 4}, extrinsics.options());
  Exec ex(extrinsics);
  AT_DISPATCH_FLOATING_TYPES(E.scalar_type(), "vggrpo", [&] {
    VGGRPO_LAUNCH(motion_smoothness_backward, scalar_t, ex, ptr<scalar_t>(E), B, T,
                  static_cast<scalar_t>(eps), ptr<scalar_t>(gt), ptr<scalar_t>(gr),
                  ptr<scalar_t>(grad_E));
  });
  return like_extrinsics(grad_E, extrinsics);
}

// ---- static_points ------------------------------------------------------------------------------

namespace {
void check_pointmaps(const char* op, ShapeCheck& shapes, const Tensor& pointmaps,
                     const OptTensor& scene_flow, double flow_threshold) {
  shapes("pointmaps", pointmaps, {"B", "T", "H", "W", "3"});
  check_floating(op, "pointmaps", pointmaps);
  if (scene_flow.has_value() && scene_flow->defined()) {
    shapes("scene_flow", *scene_flow, {"B", "T", "H", "W", "3"});
    check_floating(op, "scene_flow", *scene_flow);
  }
  check_finite_scalar(op, "flow_threshold", flow_threshold, 0.0, /*strict=*/false);
  check_num_points(op, shapes["T"] * shapes["H"] * shapes["W"]);
}
}  // namespace

std::tuple<Tensor, Tensor> static_points(const Tensor& pointmaps, const OptTensor& scene_flow,
                                         double flow_threshold) {
  const char* op = "static_points";
  ShapeCheck shapes(op);
  check_pointmaps(op, shapes, pointmaps, scene_flow, flow_threshold);
  const Tensor flow = optional_contiguous(scene_flow);
  check_same_device_and_dtype(op, {{"pointmaps", pointmaps}, {"scene_flow", flow}});
  const int64_t B = shapes["B"];
  const int64_t N = shapes["T"] * shapes["H"] * shapes["W"];
  const Tensor pm = pointmaps.contiguous();
  Tensor points = at::empty({B, N, 3}, pointmaps.options());
  Tensor valid = at::empty({B, N}, pointmaps.options().dtype(at::kBool));
  Exec ex(pointmaps);
  AT_DISPATCH_FLOATING_TYPES(pm.scalar_type(), "vggrpo", [&] {
    VGGRPO_LAUNCH(static_points, scalar_t, ex, ptr<scalar_t>(pm), ptr<scalar_t>(flow),
                  static_cast<scalar_t>(flow_threshold), B, N, ptr<scalar_t>(points),
                  ptr<bool>(valid));
  });
  return {points, valid};
}

// ---- splat_depth --------------------------------------------------------------------------------

namespace {
void check_cameras(const char* op, ShapeCheck& shapes, const char* views, const Tensor& extrinsics,
                   const Tensor& intrinsics) {
  shapes("extrinsics", extrinsics, {"B", views, "3|4", "4"});
  shapes("intrinsics", intrinsics, {"B", views, "3", "3"});
  check_floating(op, "extrinsics", extrinsics);
  check_floating(op, "intrinsics", intrinsics);
}
}  // namespace

std::tuple<Tensor, Tensor> splat_depth(const Tensor& points, const OptTensor& valid,
                                       const Tensor& extrinsics, const Tensor& intrinsics,
                                       int64_t height, int64_t width) {
  const char* op = "splat_depth";
  ShapeCheck shapes(op);
  shapes("points", points, {"B", "N", "3"});
  check_floating(op, "points", points);
  const Tensor keep = optional_contiguous(valid);
  if (keep.defined()) {
    shapes("valid", keep, {"B", "N"});
    check_dtype(op, "valid", keep, at::kBool);
  }
  check_cameras(op, shapes, "V", extrinsics, intrinsics);
  TORCH_CHECK_VALUE(height >= 1 && width >= 1, "vggrpo.", op,
                    ": expected `height` and `width` >= 1, got ", height, " x ", width);
  check_num_points(op, shapes["N"]);
  check_same_device_and_dtype(op, {{"points", points},
                                   {"valid", keep},
                                   {"extrinsics", extrinsics},
                                   {"intrinsics", intrinsics}});
  const kernels::ViewGrid g{shapes["B"], shapes["V"], height, width};
  const Tensor pts = points.contiguous();
  const Tensor E = extrinsic_rows(extrinsics);
  const Tensor K = intrinsics.contiguous();
  Tensor depth = at::empty({g.B, g.V, g.H, g.W}, points.options());
  Tensor winner = at::empty({g.B, g.V, g.H, g.W}, points.options().dtype(at::kLong));
  Exec ex(points);
  AT_DISPATCH_FLOATING_TYPES(pts.scalar_type(), "vggrpo", [&] {
    VGGRPO_LAUNCH(splat_depth, scalar_t, ex, ptr<scalar_t>(pts), ptr<bool>(keep),
                  ptr<scalar_t>(E), ptr<scalar_t>(K), shapes["N"], g, ptr<scalar_t>(depth),
                  ptr<int64_t>(winner));
  });
  return {depth, winner};
}

std::tuple<Tensor, Tensor> splat_depth_backward(const Tensor& grad_depth, const Tensor& winner,
                                                const Tensor& points, const Tensor& extrinsics,
                                                const Tensor& intrinsics) {
  const char* op = "splat_depth_backward";
  ShapeCheck shapes(op);
  shapes("points", points, {"B", "N", "3"});
  check_floating(op, "points", points);
  check_cameras(op, shapes, "V", extrinsics, intrinsics);
  shapes("grad_depth", grad_depth, {"B", "V", "H", "W"});
  shapes("winner", winner, {"B", "V", "H", "W"});
  check_dtype(op, "winner", winner, at::kLong);
  check_floating(op, "grad_depth", grad_depth);
  check_same_device_and_dtype(op, {{"grad_depth", grad_depth},
                                   {"winner", winner},
                                   {"points", points},
                                   {"extrinsics", extrinsics},
                                   {"intrinsics", intrinsics}});
  const kernels::ViewGrid g{shapes["B"], shapes["V"], shapes["H"], shapes["W"]};
  const int64_t N = shapes["N"];
  const Tensor gd = grad_depth.contiguous();
  const Tensor win = winner.contiguous();
  const Tensor pts = points.contiguous();
  const Tensor E = extrinsic_rows(extrinsics);
  const Tensor K = intrinsics.contiguous();
  Tensor grad_points = at::empty({g.B, N, 3}, points.options());
  Tensor grad_E = at::empty({g.B, g.V, 3, 4}, points.options());
  Exec ex(points);
  AT_DISPATCH_FLOATING_TYPES(pts.scalar_type(), "vggrpo", [&] {
#if defined(VGGRPO_WITH_CUDA)
    if (ex.cuda) {
      check_cuda(kernels::splat_depth_backward_cuda<scalar_t>(
                     ptr<scalar_t>(gd), ptr<int64_t>(win), ptr<scalar_t>(pts), ptr<scalar_t>(E),
                     ptr<scalar_t>(K), N, g, ptr<scalar_t>(grad_points), ptr<scalar_t>(grad_E),
                     ex.cuda_exec()),
                 op);
      return;
    }
#endif
    // The CPU backward is deterministic by construction and needs no intrinsics.
    kernels::splat_depth_backward_cpu<scalar_t>(ptr<scalar_t>(gd), ptr<int64_t>(win),
                                                ptr<scalar_t>(pts), ptr<scalar_t>(E), N, g,
                                                ptr<scalar_t>(grad_points), ptr<scalar_t>(grad_E),
                                                ex.threads);
  });
  return {grad_points, like_extrinsics(grad_E, extrinsics)};
}

// ---- view_depth_error ---------------------------------------------------------------------------

namespace {
Tensor checked_pixel_mask(const char* op, ShapeCheck& shapes, const OptTensor& valid) {
  const Tensor keep = optional_contiguous(valid);
  if (keep.defined()) {
    shapes("valid", keep, {"B", "V", "H", "W"});
    check_dtype(op, "valid", keep, at::kBool);
  }
  return keep;
}
}  // namespace

std::tuple<Tensor, Tensor> view_depth_error(const Tensor& rendered, const Tensor& depths,
                                            const OptTensor& valid) {
  const char* op = "view_depth_error";
  ShapeCheck shapes(op);
  shapes("rendered", rendered, {"B", "V", "H", "W"});
  shapes("depths", depths, {"B", "V", "H", "W"});
  check_floating(op, "rendered", rendered);
  check_floating(op, "depths", depths);
  const Tensor keep = checked_pixel_mask(op, shapes, valid);
  check_same_device_and_dtype(op, {{"rendered", rendered}, {"depths", depths}, {"valid", keep}});
  const kernels::ViewGrid g{shapes["B"], shapes["V"], shapes["H"], shapes["W"]};
  const Tensor r = rendered.contiguous();
  const Tensor d = depths.contiguous();
  Tensor err = at::empty({g.B, g.V}, rendered.options());
  Tensor count = at::empty({g.B, g.V}, rendered.options().dtype(at::kLong));
  Exec ex(rendered);
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "vggrpo", [&] {
    VGGRPO_LAUNCH(view_depth_error, scalar_t, ex, ptr<scalar_t>(r), ptr<scalar_t>(d),
                  ptr<bool>(keep), g, ptr<scalar_t>(err), ptr<int64_t>(count));
  });
  return {err, count};
}

std::tuple<Tensor, Tensor> view_depth_error_backward(const Tensor& grad_err,
                                                     const Tensor& rendered, const Tensor& depths,
                                                     const OptTensor& valid, const Tensor& count) {
  const char* op = "view_depth_error_backward";
  ShapeCheck shapes(op);
  shapes("rendered", rendered, {"B", "V", "H", "W"});
  shapes("depths", depths, {"B", "V", "H", "W"});
  shapes("grad_err", grad_err, {"B", "V"});
  shapes("count", count, {"B", "V"});
  check_floating(op, "rendered", rendered);
  check_floating(op, "depths", depths);
  check_floating(op, "grad_err", grad_err);
  check_dtype(op, "count", count, at::kLong);
  const Tensor keep = checked_pixel_mask(op, shapes, valid);
  check_same_device_and_dtype(op, {{"rendered", rendered},
                                   {"depths", depths},
                                   {"grad_err", grad_err},
                                   {"count", count},
                                   {"valid", keep}});
  const kernels::ViewGrid g{shapes["B"], shapes["V"], shapes["H"], shapes["W"]};
  const Tensor r = rendered.contiguous();
  const Tensor d = depths.contiguous();
  const Tensor ge = grad_err.contiguous();
  const Tensor cnt = count.contiguous();
  Tensor grad_rendered = at::empty_like(r);
  Tensor grad_depths = at::empty_like(d);
  Exec ex(rendered);
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "vggrpo", [&] {
    VGGRPO_LAUNCH(view_depth_error_backward, scalar_t, ex, ptr<scalar_t>(ge), ptr<scalar_t>(r),
                  ptr<scalar_t>(d), ptr<bool>(keep), ptr<int64_t>(cnt), g,
                  ptr<scalar_t>(grad_rendered), ptr<scalar_t>(grad_depths));
  });
  return {grad_rendered, grad_depths};
}

// ---- worst_k_mean -------------------------------------------------------------------------------

namespace {
void check_worst_k(const char* op, ShapeCheck& shapes, const Tensor& err, const Tensor& count,
                   int64_t k) {
  shapes("err", err, {"B", "V"});
  shapes("count", count, {"B", "V"});
  check_floating(op, "err", err);
  check_dtype(op, "count", count, at::kLong);
  TORCH_CHECK_VALUE(k >= 1, "vggrpo.", op, ": expected `k` >= 1 (the number of worst views "
                    "averaged), got ", k);
}
}  // namespace

Tensor worst_k_mean(const Tensor& err, const Tensor& count, int64_t k) {
  const char* op = "worst_k_mean";
  ShapeCheck shapes(op);
  check_worst_k(op, shapes, err, count, k);
  check_same_device_and_dtype(op, {{"err", err}, {"count", count}});
  const Tensor e = err.contiguous();
  const Tensor c = count.contiguous();
  Tensor out = at::empty({shapes["B"]}, err.options());
  Exec ex(err);
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "vggrpo", [&] {
    VGGRPO_LAUNCH(worst_k_mean, scalar_t, ex, ptr<scalar_t>(e), ptr<int64_t>(c), shapes["B"],
                  shapes["V"], k, ptr<scalar_t>(out));
  });
  return out;
}

Tensor worst_k_mean_backward(const Tensor& grad, const Tensor& err, const Tensor& count,
                             int64_t k) {
  const char* op = "worst_k_mean_backward";
  ShapeCheck shapes(op);
  check_worst_k(op, shapes, err, count, k);
  shapes("grad", grad, {"B"});
  check_floating(op, "grad", grad);
  check_same_device_and_dtype(op, {{"err", err}, {"count", count}, {"grad", grad}});
  const Tensor e = err.contiguous();
  const Tensor c = count.contiguous();
  const Tensor gr = grad.contiguous();
  Tensor grad_err = at::empty_like(e);
  Exec ex(err);
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "vggrpo", [&] {
    VGGRPO_LAUNCH(worst_k_mean_backward, scalar_t, ex, ptr<scalar_t>(gr), ptr<scalar_t>(e),
                  ptr<int64_t>(c), shapes["B"], shapes["V"], k, ptr<scalar_t>(grad_err));
  });
  return grad_err;
}

// ---- reprojection_errors (fused) --------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor> reprojection_errors(const Tensor& pointmaps,
                                                               const Tensor& depths,
                                                               const Tensor& extrinsics,
                                                               const Tensor& intrinsics,
                                                               const OptTensor& scene_flow,
                                                               double flow_threshold,
                                                               bool need_winner) {
  const char* op = "reprojection_errors";
  ShapeCheck shapes(op);
  check_pointmaps(op, shapes, pointmaps, scene_flow, flow_threshold);
  shapes("depths", depths, {"B", "T", "H", "W"});
  check_floating(op, "depths", depths);
  check_cameras(op, shapes, "T", extrinsics, intrinsics);
  const Tensor flow = optional_contiguous(scene_flow);
  check_same_device_and_dtype(op, {{"pointmaps", pointmaps},
                                   {"depths", depths},
                                   {"extrinsics", extrinsics},
                                   {"intrinsics", intrinsics},
                                   {"scene_flow", flow}});
  const kernels::ViewGrid g{shapes["B"], shapes["T"], shapes["H"], shapes["W"]};
  const Tensor pm = pointmaps.contiguous();
  const Tensor d = depths.contiguous();
  const Tensor E = extrinsic_rows(extrinsics);
  const Tensor K = intrinsics.contiguous();
  Tensor err = at::empty({g.B, g.V}, pointmaps.options());
  Tensor count = at::empty({g.B, g.V}, pointmaps.options().dtype(at::kLong));
  // Without a gradient to come the winners are not kept: no [B, T, H, W] int64 buffer, and
  // float32 inputs take the cheaper depth-only z-buffer.
  Tensor winner = need_winner
                      ? at::empty({g.B, g.V, g.H, g.W}, pointmaps.options().dtype(at::kLong))
                      : at::empty({0}, pointmaps.options().dtype(at::kLong));
  Exec ex(pointmaps);
  Tensor valid = at::empty({g.B, g.V, g.H, g.W}, pointmaps.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(pm.scalar_type(), "vggrpo", [&] {
    const scalar_t threshold = static_cast<scalar_t>(flow_threshold);
    int64_t* winner_ptr = need_winner ? ptr<int64_t>(winner) : nullptr;
#ifdef VGGRPO_WITH_CUDA
    if (ex.cuda) {
      // The kernel cannot allocate its z-buffer. Without winners to keep, a scratch stands in:
      // 32-bit depth-only keys for float32, 64-bit keys for float64 (which re-reads the winner's
      // depth, so it needs the index).
      const bool depth_only = !need_winner && std::is_same_v<scalar_t, float>;
      const Tensor scratch =
          need_winner ? Tensor()
                      : at::empty({g.B, g.V, g.H, g.W},
                                  pointmaps.options().dtype(depth_only ? at::kInt : at::kLong));
      if (!need_winner && !depth_only) winner_ptr = ptr<int64_t>(scratch);
      uint32_t* depth_keys =
          depth_only ? reinterpret_cast<uint32_t*>(ptr<int32_t>(scratch)) : nullptr;
      check_cuda(kernels::reprojection_errors_cuda<scalar_t>(
                     ptr<scalar_t>(pm), ptr<scalar_t>(d), ptr<scalar_t>(E), ptr<scalar_t>(K),
                     ptr<scalar_t>(flow), threshold, g, ptr<scalar_t>(err), ptr<int64_t>(count),
                     winner_ptr, depth_keys, ptr<bool>(valid), ex.cuda_exec()),
                 op);
      return;
    }
#endif
    TORCH_INTERNAL_ASSERT(!ex.cuda, "CUDA tensor reached a CPU-only build of vggrpo");
    kernels::reprojection_errors_cpu<scalar_t>(
        ptr<scalar_t>(pm), ptr<scalar_t>(d), ptr<scalar_t>(E), ptr<scalar_t>(K),
        ptr<scalar_t>(flow), threshold, g, ptr<scalar_t>(err), ptr<int64_t>(count), winner_ptr,
        ptr<bool>(valid), ex.threads);
  });
  return {err, count, winner, valid};
}

std::tuple<Tensor, Tensor, Tensor> reprojection_errors_backward(
    const Tensor& grad_err, const Tensor& count, const Tensor& winner, const Tensor& valid,
    const Tensor& pointmaps, const Tensor& depths, const Tensor& extrinsics,
    const Tensor& intrinsics) {
  const char* op = "reprojection_errors_backward";
  ShapeCheck shapes(op);
  shapes("pointmaps", pointmaps, {"B", "T", "H", "W", "3"});
  shapes("depths", depths, {"B", "T", "H", "W"});
  check_cameras(op, shapes, "T", extrinsics, intrinsics);
  shapes("grad_err", grad_err, {"B", "T"});
  shapes("count", count, {"B", "T"});
  shapes("winner", winner, {"B", "T", "H", "W"});
  shapes("valid", valid, {"B", "T", "H", "W"});
  check_dtype(op, "valid", valid, at::kBool);
  check_floating(op, "pointmaps", pointmaps);
  check_floating(op, "depths", depths);
  check_floating(op, "grad_err", grad_err);
  check_dtype(op, "count", count, at::kLong);
  check_dtype(op, "winner", winner, at::kLong);
  check_same_device_and_dtype(op, {{"pointmaps", pointmaps},
                                   {"depths", depths},
                                   {"extrinsics", extrinsics},
                                   {"grad_err", grad_err},
                                   {"count", count},
                                   {"winner", winner},
                                   {"valid", valid},
                                   {"intrinsics", intrinsics}});
  const kernels::ViewGrid g{shapes["B"], shapes["T"], shapes["H"], shapes["W"]};
  const Tensor ge = grad_err.contiguous();
  const Tensor cnt = count.contiguous();
  const Tensor win = winner.contiguous();
  const Tensor keep = valid.contiguous();
  const Tensor pm = pointmaps.contiguous();
  const Tensor d = depths.contiguous();
  const Tensor E = extrinsic_rows(extrinsics);
  const Tensor K = intrinsics.contiguous();
  Tensor grad_pm = at::empty_like(pm);
  Tensor grad_d = at::empty_like(d);
  Tensor grad_E = at::empty({g.B, g.V, 3, 4}, pointmaps.options());
  Exec ex(pointmaps);
  AT_DISPATCH_FLOATING_TYPES(pm.scalar_type(), "vggrpo", [&] {
#if defined(VGGRPO_WITH_CUDA)
    if (ex.cuda) {
      check_cuda(kernels::reprojection_errors_backward_cuda<scalar_t>(
                     ptr<scalar_t>(ge), ptr<int64_t>(cnt), ptr<int64_t>(win), ptr<bool>(keep),
                     ptr<scalar_t>(pm), ptr<scalar_t>(d), ptr<scalar_t>(E), ptr<scalar_t>(K), g,
                     ptr<scalar_t>(grad_pm), ptr<scalar_t>(grad_d), ptr<scalar_t>(grad_E),
                     ex.cuda_exec()),
                 op);
      return;
    }
#endif
    // The CPU backward is deterministic by construction and needs no intrinsics.
    kernels::reprojection_errors_backward_cpu<scalar_t>(
        ptr<scalar_t>(ge), ptr<int64_t>(cnt), ptr<int64_t>(win), ptr<bool>(keep),
        ptr<scalar_t>(pm), ptr<scalar_t>(d), ptr<scalar_t>(E), g, ptr<scalar_t>(grad_pm),
        ptr<scalar_t>(grad_d), ptr<scalar_t>(grad_E), ex.threads);
  });
  return {grad_pm, grad_d, like_extrinsics(grad_E, extrinsics)};
}

}  // namespace glue
}  // namespace vggrpo
