// Camera motion smoothness (docs/ops.md#motion_smoothness) for one video's trajectory.
// Both the CPU loop and the CUDA kernel run these per-sequence functions, one sequence each.
#pragma once

#include "camera.h"
#include "common.h"
#include "so3.h"

namespace vggrpo {

// |x1 - x0| / (|x1| + |x0| + eps): the relative change of a velocity (or angular velocity).
template <typename T>
VGGRPO_HD T smoothness_term(const T* x0, const T* x1, T eps) {
  const T a[3] = {x1[0] - x0[0], x1[1] - x0[1], x1[2] - x0[2]};
  return norm3(a) / (norm3(x1) + norm3(x0) + eps);
}

// Accumulates weight * d term / d x0 into g0 and weight * d term / d x1 into g1. Norms have a
// zero gradient at zero, as in PyTorch.
template <typename T>
VGGRPO_HD void smoothness_term_vjp(const T* x0, const T* x1, T eps, T weight, T* g0, T* g1) {
  const T a[3] = {x1[0] - x0[0], x1[1] - x0[1], x1[2] - x0[2]};
  const T na = norm3(a);
  const T n0 = norm3(x0);
  const T n1 = norm3(x1);
  const T den = n1 + n0 + eps;
  const T f_den = na / den / den;
  for (int i = 0; i < 3; ++i) {
    const T da = na > T(0) ? a[i] / na / den : T(0);
    const T d0 = n0 > T(0) ? x0[i] / n0 : T(0);
    const T d1 = n1 > T(0) ? x1[i] / n1 : T(0);
    g0[i] += weight * (-da - f_den * d0);
    g1[i] += weight * (da - f_den * d1);
  }
}

template <typename T>
VGGRPO_HD void frame_velocity(const T* E0, const T* E1, T* vel) {
  T c0[3], c1[3];
  camera_center(E0, c0);
  camera_center(E1, c1);
  for (int i = 0; i < 3; ++i) vel[i] = c1[i] - c0[i];
}

template <typename T>
VGGRPO_HD void frame_angular_velocity(const T* E0, const T* E1, T* omega) {
  T rel[9];
  relative_rotation(E0, E1, rel);
  so3_log(rel, omega);
}

// E: num_frames x 12 entries (num_frames >= 3). Writes e_trans and e_rot.
template <typename T>
VGGRPO_HD void motion_smoothness_sequence(const T* E, int64_t num_frames, T eps, T* e_trans,
                                          T* e_rot) {
  acc_t sum_trans = 0;
  acc_t sum_rot = 0;
  T vel0[3], vel1[3], om0[3], om1[3];
  frame_velocity(E, E + 12, vel0);
  frame_angular_velocity(E, E + 12, om0);
  for (int64_t t = 1; t + 1 < num_frames; ++t) {
    frame_velocity(E + 12 * t, E + 12 * (t + 1), vel1);
    frame_angular_velocity(E + 12 * t, E + 12 * (t + 1), om1);
    sum_trans += smoothness_term(vel0, vel1, eps);
    sum_rot += smoothness_term(om0, om1, eps);
    for (int i = 0; i < 3; ++i) {
      vel0[i] = vel1[i];
      om0[i] = om1[i];
    }
  }
  *e_trans = static_cast<T>(sum_trans / static_cast<acc_t>(num_frames - 2));
  *e_rot = static_cast<T>(sum_rot / static_cast<acc_t>(num_frames - 2));
}

// Accumulates into grad_E (num_frames x 12, zero-initialised by the caller) the gradient of
// grad_trans * e_trans + grad_rot * e_rot. Each term is chained straight to the three frames it
// reads, in a fixed order, so the result is deterministic and needs no scratch memory.
template <typename T>
VGGRPO_HD void motion_smoothness_sequence_vjp(const T* E, int64_t num_frames, T eps, T grad_trans,
                                              T grad_rot, T* grad_E) {
  const T w_trans = grad_trans / static_cast<T>(num_frames - 2);
  const T w_rot = grad_rot / static_cast<T>(num_frames - 2);
  for (int64_t i = 0; i + 2 < num_frames; ++i) {
    const T* Ea = E + 12 * i;
    const T* Eb = Ea + 12;
    const T* Ec = Eb + 12;
    T* gEa = grad_E + 12 * i;
    T* gEb = gEa + 12;
    T* gEc = gEb + 12;

    T vel0[3], vel1[3], gv0[3] = {0, 0, 0}, gv1[3] = {0, 0, 0};
    frame_velocity(Ea, Eb, vel0);
    frame_velocity(Eb, Ec, vel1);
    smoothness_term_vjp(vel0, vel1, eps, w_trans, gv0, gv1);
    // vel0 = C_b - C_a, vel1 = C_c - C_b
    T gCa[3], gCb[3], gCc[3];
    for (int k = 0; k < 3; ++k) {
      gCa[k] = -gv0[k];
      gCb[k] = gv0[k] - gv1[k];
      gCc[k] = gv1[k];
    }
    camera_center_vjp(Ea, gCa, gEa);
    camera_center_vjp(Eb, gCb, gEb);
    camera_center_vjp(Ec, gCc, gEc);

    T rel0[9], rel1[9], om0[3], om1[3], go0[3] = {0, 0, 0}, go1[3] = {0, 0, 0};
    relative_rotation(Ea, Eb, rel0);
    relative_rotation(Eb, Ec, rel1);
    so3_log(rel0, om0);
    so3_log(rel1, om1);
    smoothness_term_vjp(om0, om1, eps, w_rot, go0, go1);
    T grel[9];
    so3_log_vjp(rel0, go0, grel);
    relative_rotation_vjp(Ea, Eb, grel, gEa, gEb);
    so3_log_vjp(rel1, go1, grel);
    relative_rotation_vjp(Eb, Ec, grel, gEb, gEc);
  }
}

}  // namespace vggrpo
