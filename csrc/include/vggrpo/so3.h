// SO(3) logarithm and its vector-Jacobian product, written once for CPU and CUDA.
//
// The exact formula (both branches, the series, the ambient extension off SO(3)) is stated in
// docs/ops.md#so3_log; this file is its implementation, vggrpo/reference.py its plain-PyTorch twin.
//
// Why this form: acos((tr R - 1)/2) loses all precision near angle 0 in float32 (cos rounds to 1
// below ~3e-4 rad) and theta/sin(theta) blows up near pi. atan2(|v|, c) keeps the angle accurate
// at every magnitude; small angles use a series in x = s/c with no cancelling terms, so the
// Jacobian stays accurate in float32 where camera steps live (1e-4..1e-2 rad); above pi/2 the axis
// is read from the symmetric part of R, which is well conditioned up to and including pi.
#pragma once

#include "common.h"

namespace vggrpo {

template <typename T>
struct So3SeriesLimit;
template <>
struct So3SeriesLimit<float> {
  static constexpr float value = 0.1f;
};
template <>
struct So3SeriesLimit<double> {
  static constexpr double value = 0.01;
};

// c = cos(theta) and v = sin(theta) * axis on SO(3), for a row-major 3x3 R.
template <typename T>
VGGRPO_HD T so3_cos_part(const T* R) {
  return (R[0] + R[4] + R[8] - T(1)) / T(2);
}
template <typename T>
VGGRPO_HD void so3_sin_part(const T* R, T* v) {
  v[0] = (R[7] - R[5]) / T(2);
  v[1] = (R[2] - R[6]) / T(2);
  v[2] = (R[3] - R[1]) / T(2);
}

template <typename T>
VGGRPO_HD bool so3_regular_branch(T s, T c) {
  return c > T(0) || (c == T(0) && s > T(0));
}

// g = atan2(s, c) / s and q = (dg/ds) / s of the regular branch.
template <typename T>
VGGRPO_HD void so3_regular_coeffs(T s, T c, T* g, T* q) {
  if (c > T(0) && s < So3SeriesLimit<T>::value * c) {
    const T x = s / c;
    const T x2 = x * x;
    *g = (T(1) - x2 * (T(1) / T(3) - x2 * (T(1) / T(5) - x2 * (T(1) / T(7) - x2 / T(9))))) / c;
    *q = (T(-2) / T(3) +
          x2 * (T(4) / T(5) - x2 * (T(6) / T(7) - x2 * (T(8) / T(9) - x2 * (T(10) / T(11)))))) /
         (c * c * c);
  } else {
    const T r2 = s * s + c * c;
    *g = std::atan2(s, c) / s;
    *q = (c / r2 - *g) / (s * s);
  }
}

// Everything the near-pi branch derives from R (see docs/ops.md).
template <typename T>
struct So3NearPi {
  int k;
  T u[3];
  T m;      // |u|
  T sigma;  // +-1, the axis sign that agrees with v
  T n[3];
  T p;      // n . v
  T theta;
};

template <typename T>
VGGRPO_HD So3NearPi<T> so3_near_pi(const T* R, T c, const T* v) {
  So3NearPi<T> r;
  r.k = 0;
  for (int i = 1; i < 3; ++i) {
    if (R[i * 4] - c > R[r.k * 4] - c) r.k = i;
  }
  for (int i = 0; i < 3; ++i) {
    r.u[i] = (R[i * 3 + r.k] + R[r.k * 3 + i]) / T(2) - (i == r.k ? c : T(0));
  }
  r.m = norm3(r.u);
  r.sigma = dot3(r.u, v) >= T(0) ? T(1) : T(-1);
  for (int i = 0; i < 3; ++i) {
    // m == 0 only for matrices far from any rotation; the unit axis e_k keeps them finite.
    r.n[i] = r.m > T(0) ? r.sigma * r.u[i] / r.m : (i == r.k ? T(1) : T(0));
  }
  // + 0 turns a -0 (from signed-zero entries at exactly pi) into +0, so atan2 gives +pi and
  // the n_k > 0 convention holds.
  r.p = dot3(r.n, v) + T(0);
  r.theta = std::atan2(r.p, c);
  return r;
}

// 0 when all 9 entries of R are finite, NaN otherwise (x - x is NaN exactly for x = inf/NaN).
// Such an R gets NaN for omega and for every entry of its gradient: each branch would otherwise
// turn the inf into a finite number (the series gives 1/inf = 0) that passes for a rotation.
template <typename T>
VGGRPO_HD T so3_non_finite_marker(const T* R) {
  T z = T(0);
  for (int i = 0; i < 9; ++i) z += R[i] - R[i];
  return z;
}

// omega = log(R): R is 9 row-major entries, omega 3 entries (axis * angle, radians).
template <typename T>
VGGRPO_HD void so3_log(const T* R, T* omega) {
  const T nan = so3_non_finite_marker(R);
  if (nan != nan) {
    for (int i = 0; i < 3; ++i) omega[i] = nan;
    return;
  }
  const T c = so3_cos_part(R);
  T v[3];
  so3_sin_part(R, v);
  const T s = norm3(v);
  if (so3_regular_branch(s, c)) {
    T g, q;
    so3_regular_coeffs(s, c, &g, &q);
    for (int i = 0; i < 3; ++i) omega[i] = g * v[i];
  } else {
    const So3NearPi<T> r = so3_near_pi(R, c, v);
    for (int i = 0; i < 3; ++i) omega[i] = r.theta * r.n[i];
  }
}

// grad_R = (d omega / d R)^T grad_omega, the exact derivative of so3_log's formula in the nine
// ambient entries of R. Writes (does not accumulate) the 9 entries of grad_R.
template <typename T>
VGGRPO_HD void so3_log_vjp(const T* R, const T* grad_omega, T* grad_R) {
  const T nan = so3_non_finite_marker(R);
  if (nan != nan) {
    for (int i = 0; i < 9; ++i) grad_R[i] = nan;
    return;
  }
  const T c = so3_cos_part(R);
  T v[3];
  so3_sin_part(R, v);
  const T s = norm3(v);
  T gv[3];
  T gc;
  for (int i = 0; i < 9; ++i) grad_R[i] = T(0);
  if (so3_regular_branch(s, c)) {
    // omega = g(s, c) v:  d omega = g dv + q (v.dv) v + (dg/dc) v dc,  dg/dc = -1/(s^2 + c^2).
    T g, q;
    so3_regular_coeffs(s, c, &g, &q);
    const T gw_v = dot3(grad_omega, v);
    for (int i = 0; i < 3; ++i) gv[i] = g * grad_omega[i] + q * gw_v * v[i];
    gc = -gw_v / (s * s + c * c);
  } else {
    // omega = theta n with theta = atan2(p, c), p = n.v, n = sigma u / |u|:
    //   d theta = (c dp - p dc) / D,  D = p^2 + c^2,  dp = v.dn + n.dv,
    //   dn = (sigma / |u|) (du - n (n.du)).
    const So3NearPi<T> r = so3_near_pi(R, c, v);
    const T a = dot3(grad_omega, r.n);
    const T D = r.p * r.p + c * c;
    // D == 0 only for the degenerate c == s == 0 (not a rotation); its gradient is left at 0.
    const T dtheta_dp = D > T(0) ? a * c / D : T(0);
    const T dtheta_dc = D > T(0) ? -a * r.p / D : T(0);
    T w[3];
    for (int i = 0; i < 3; ++i) {
      w[i] = dtheta_dp * v[i] + r.theta * grad_omega[i];
      gv[i] = dtheta_dp * r.n[i];
    }
    gc = dtheta_dc;
    if (r.m > T(0)) {
      const T w_n = dot3(w, r.n);
      for (int i = 0; i < 3; ++i) {
        const T gu = r.sigma / r.m * (w[i] - w_n * r.n[i]);
        // u_i = (R_ik + R_ki) / 2 - [i == k] c
        grad_R[i * 3 + r.k] += gu / T(2);
        grad_R[r.k * 3 + i] += gu / T(2);
        if (i == r.k) gc -= gu;
      }
    }
  }
  grad_R[7] += gv[0] / T(2);
  grad_R[5] -= gv[0] / T(2);
  grad_R[2] += gv[1] / T(2);
  grad_R[6] -= gv[1] / T(2);
  grad_R[3] += gv[2] / T(2);
  grad_R[1] -= gv[2] / T(2);
  grad_R[0] += gc / T(2);
  grad_R[4] += gc / T(2);
  grad_R[8] += gc / T(2);
}

}  // namespace vggrpo
