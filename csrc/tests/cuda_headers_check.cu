// Compile-only check that every math header under csrc/include/vggrpo is device-compilable:
// each VGGRPO_HD function (template) is called from a __global__ kernel, instantiated for float
// and double, so nvcc type-checks and code-generates it for the device (no host-only std::
// function, no recursion the device compiler rejects, no non-constexpr globals).
//
// Built by CMake with -DVGGRPO_CUDA=ON (object library vggrpo_cuda_headers_check). Needs nvcc,
// not a GPU: nothing launches these kernels, and no test runs them.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"  // the kernel declarations must parse under nvcc too
#include "vggrpo/camera.h"
#include "vggrpo/common.h"
#include "vggrpo/depth_error.h"
#include "vggrpo/motion.h"
#include "vggrpo/points.h"
#include "vggrpo/so3.h"
#include "vggrpo/topk.h"
#include "vggrpo/zbuffer.h"

namespace vggrpo_device_check {

// Layout of `in` (all reads go through memory so nothing constant-folds away):
//   [0, 9) R, [9, 21) E0, [21, 33) E1, [33, 42) K, [42, 45) p, [45, 48) flow, [48, 51) grad3,
//   [51, 87) E sequence of 3 frames, [87, 93) per-view errors, [93] scalar (94 entries).
// counts: [0] H, [1] W, [2, 8) per-view counts, [8] k.

template <typename T>
__global__ void every_header_function(const T* in, const int64_t* counts, T* out, int64_t* iout,
                                      uint64_t* kout) {
  const T* R = in;
  const T* E0 = in + 9;
  const T* E1 = in + 21;
  const T* K = in + 33;
  const T* p = in + 42;
  const T* flow = in + 45;
  const T* g3 = in + 48;
  const T* Eseq = in + 51;
  const T* err = in + 87;
  const T x = in[93];
  int o = 0;
  int io = 0;

  // common.h
  out[o++] = vggrpo::finite(x) ? T(1) : T(0);
  out[o++] = vggrpo::depth_valid(x) ? T(1) : T(0);
  out[o++] = vggrpo::dot3(p, flow);
  out[o++] = vggrpo::norm3(p);

  // so3.h
  const T c = vggrpo::so3_cos_part(R);
  T v[3];
  vggrpo::so3_sin_part(R, v);
  const T s = vggrpo::norm3(v);
  out[o++] = vggrpo::so3_regular_branch(s, c) ? T(1) : T(0);
  T g, q;
  vggrpo::so3_regular_coeffs(s, c, &g, &q);
  out[o++] = g + q + vggrpo::So3SeriesLimit<T>::value;
  const vggrpo::So3NearPi<T> np = vggrpo::so3_near_pi(R, c, v);
  out[o++] = np.theta + np.p + np.m + np.sigma + np.n[0] + np.u[1];
  iout[io++] = np.k;
  vggrpo::so3_log(R, out + o);
  o += 3;
  vggrpo::so3_log_vjp(R, g3, out + o);
  o += 9;

  // camera.h
  out[o++] = vggrpo::camera_z(E0, p);
  T z;
  int64_t pixel;
  out[o++] = vggrpo::project_to_pixel(E0, K, p, counts[0], counts[1], &z, &pixel) ? z : T(-1);
  iout[io++] = pixel;
  T grad_p[3] = {0, 0, 0};
  T grad_E[12] = {0};
  vggrpo::camera_z_vjp(E0, p, x, grad_p, grad_E);
  vggrpo::camera_z_vjp(E0, p, x, static_cast<T*>(nullptr), grad_E);
  T C[3];
  vggrpo::camera_center(E0, C);
  vggrpo::camera_center_vjp(E0, C, grad_E);
  T rel[9];
  vggrpo::relative_rotation(E0, E1, rel);
  T grad_E1[12] = {0};
  vggrpo::relative_rotation_vjp(E0, E1, rel, grad_E, grad_E1);
  for (int i = 0; i < 12; ++i) out[o++] = grad_E[i] + grad_E1[i];
  for (int i = 0; i < 3; ++i) out[o++] = grad_p[i];

  // motion.h
  out[o++] = vggrpo::smoothness_term(p, flow, x);
  T gx0[3] = {0, 0, 0}, gx1[3] = {0, 0, 0};
  vggrpo::smoothness_term_vjp(p, flow, x, T(1), gx0, gx1);
  out[o++] = gx0[0] + gx1[2];
  T vel[3], om[3];
  vggrpo::frame_velocity(E0, E1, vel);
  vggrpo::frame_angular_velocity(E0, E1, om);
  out[o++] = vel[0] + om[1];
  T e_trans, e_rot;
  vggrpo::motion_smoothness_sequence(Eseq, 3, x, &e_trans, &e_rot);
  out[o++] = e_trans + e_rot;
  T gseq[36] = {0};
  vggrpo::motion_smoothness_sequence_vjp(Eseq, 3, x, T(1), T(1), gseq);
  for (int i = 0; i < 36; ++i) out[o++] = gseq[i];

  // points.h
  out[o++] = vggrpo::point_is_static(p, flow, x) ? T(1) : T(0);
  out[o++] = vggrpo::point_is_static(p, static_cast<const T*>(nullptr), x) ? T(1) : T(0);

  // topk.h
  out[o++] = vggrpo::ranks_before(err[0], 0, err[1], 1) ? T(1) : T(0);
  T sum = T(0);
  const int64_t selected = vggrpo::worst_k_visit(err, counts + 2, 6, counts[8],
                                                 [&](int64_t view) { sum += err[view]; });
  out[o++] = sum;
  iout[io++] = selected;

  // depth_error.h
  out[o++] = vggrpo::pixel_counts(x, p[0]) ? T(1) : T(0);
  out[o++] = vggrpo::pixel_error(x, p[0]);
  out[o++] = vggrpo::pixel_error_grad(x, p[0]);

  // zbuffer.h
  const uint64_t key = vggrpo::zbuffer_key(z, pixel);
  kout[0] = key;
  kout[1] = vggrpo::kEmptyKey;
  kout[2] = vggrpo::float_bits(static_cast<float>(x));
  iout[io++] = vggrpo::zbuffer_winner(key);
  iout[io++] = vggrpo::kMaxPoints;
}

template __global__ void every_header_function<float>(const float*, const int64_t*, float*,
                                                      int64_t*, uint64_t*);
template __global__ void every_header_function<double>(const double*, const int64_t*, double*,
                                                       int64_t*, uint64_t*);

}  // namespace vggrpo_device_check
