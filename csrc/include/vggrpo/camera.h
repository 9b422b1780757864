// Pinhole camera math shared by the z-buffer, the reprojection error and the motion reward.
// Layouts: E is a camera-from-world [R | t] as 12 row-major entries (a [3,4] row); K is 9
// row-major entries of which only the first two rows are read (docs/ops.md#conventions).
#pragma once

#include "common.h"

namespace vggrpo {

// Camera-frame depth of world point p: z = R[2].p + t[2]. The z-buffer compares this value and
// the re-read after the splat calls the same function, so the two agree bit for bit.
template <typename T>
VGGRPO_HD T camera_z(const T* E, const T* p) {
  return E[8] * p[0] + E[9] * p[1] + E[10] * p[2] + E[11];
}

// Projects world point p into an H x W image. Returns false when the point is behind the camera,
// not finite, or lands outside [0, W) x [0, H); otherwise sets its depth z and its pixel
// (floor(v) * W + floor(u)).
template <typename T>
VGGRPO_HD bool project_to_pixel(const T* E, const T* K, const T* p, int64_t H, int64_t W, T* z,
                                int64_t* pixel) {
  const T zc = camera_z(E, p);
  if (!(zc > T(0)) || !finite(zc)) return false;
  const T xn = (E[0] * p[0] + E[1] * p[1] + E[2] * p[2] + E[3]) / zc;
  const T yn = (E[4] * p[0] + E[5] * p[1] + E[6] * p[2] + E[7]) / zc;
  const T u = K[0] * xn + K[1] * yn + K[2];
  const T v = K[3] * xn + K[4] * yn + K[5];
  // Written so that NaN fails every comparison and is rejected.
  if (!(u >= T(0) && u < T(W) && v >= T(0) && v < T(H))) return false;
  *z = zc;
  *pixel = static_cast<int64_t>(v) * W + static_cast<int64_t>(u);
  return true;
}

// d z / d p = R[2, :] and d z / d E[2, :] = (p, 1): the whole gradient of a rendered depth.
template <typename T>
VGGRPO_HD void camera_z_vjp(const T* E, const T* p, T g, T* grad_p, T* grad_E) {
  for (int i = 0; i < 3; ++i) {
    if (grad_p) grad_p[i] += g * E[8 + i];
    if (grad_E) grad_E[8 + i] += g * p[i];
  }
  if (grad_E) grad_E[11] += g;
}

// Camera centre in the world: C = -R^T t.
template <typename T>
VGGRPO_HD void camera_center(const T* E, T* C) {
  for (int j = 0; j < 3; ++j) {
    C[j] = -(E[j] * E[3] + E[4 + j] * E[7] + E[8 + j] * E[11]);
  }
}

// Accumulates the gradient of camera_center into grad_E.
template <typename T>
VGGRPO_HD void camera_center_vjp(const T* E, const T* grad_C, T* grad_E) {
  for (int i = 0; i < 3; ++i) {
    T gt = T(0);
    for (int j = 0; j < 3; ++j) {
      grad_E[i * 4 + j] -= E[i * 4 + 3] * grad_C[j];
      gt -= E[i * 4 + j] * grad_C[j];
    }
    grad_E[i * 4 + 3] += gt;
  }
}

// rel = R0 R1^T for camera-from-world rotations, i.e. R_wc[0]^T R_wc[1] with R_wc = R^T.
template <typename T>
VGGRPO_HD void relative_rotation(const T* E0, const T* E1, T* rel) {
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      rel[i * 3 + j] = E0[i * 4] * E1[j * 4] + E0[i * 4 + 1] * E1[j * 4 + 1] +
                       E0[i * 4 + 2] * E1[j * 4 + 2];
    }
  }
}

// Accumulates the gradient of relative_rotation into grad_E0 and grad_E1.
template <typename T>
VGGRPO_HD void relative_rotation_vjp(const T* E0, const T* E1, const T* grad_rel, T* grad_E0,
                                     T* grad_E1) {
  for (int i = 0; i < 3; ++i) {
    for (int k = 0; k < 3; ++k) {
      T g0 = T(0);
      T g1 = T(0);
      for (int j = 0; j < 3; ++j) {
        g0 += grad_rel[i * 3 + j] * E1[j * 4 + k];  // d rel_ij / d R0_ik = R1_jk
        g1 += grad_rel[j * 3 + i] * E0[j * 4 + k];  // d rel_ji / d R1_ik = R0_jk
      }
      grad_E0[i * 4 + k] += g0;
      grad_E1[i * 4 + k] += g1;
    }
  }
}

}  // namespace vggrpo
