// Helpers shared by the C++ unit tests: a seeded RNG, an independent rotation exponential
// (Rodrigues, in double), random rotations and cameras, finite differences.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace vt {

using Vec3 = std::array<double, 3>;
using Mat3 = std::array<double, 9>;  // row-major

constexpr double kPi = 3.14159265358979323846;

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(uint64_t seed) : gen(seed) {}
  double uniform(double lo = 0.0, double hi = 1.0) {
    return std::uniform_real_distribution<double>(lo, hi)(gen);
  }
  double normal() { return std::normal_distribution<double>(0.0, 1.0)(gen); }
  int64_t integer(int64_t lo, int64_t hi) {  // inclusive
    return std::uniform_int_distribution<int64_t>(lo, hi)(gen);
  }
  Vec3 unit() {
    for (;;) {
      Vec3 a = {normal(), normal(), normal()};
      const double n = std::sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
      if (n > 1e-3) return {a[0] / n, a[1] / n, a[2] / n};
    }
  }
};

inline double norm(const Vec3& a) { return std::sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]); }

// exp(omega^) by Rodrigues: R = I + sin(t) K + (1 - cos(t)) K^2, K the cross matrix of the unit
// axis. At t == 0 this is the identity.
inline Mat3 rodrigues(const Vec3& omega) {
  const double t = norm(omega);
  Mat3 R = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  if (t == 0.0) return R;
  const double x = omega[0] / t, y = omega[1] / t, z = omega[2] / t;
  const double K[9] = {0, -z, y, z, 0, -x, -y, x, 0};
  double K2[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      double s = 0;
      for (int k = 0; k < 3; ++k) s += K[i * 3 + k] * K[k * 3 + j];
      K2[i * 3 + j] = s;
    }
  const double s = std::sin(t), c1 = 1.0 - std::cos(t);
  for (int i = 0; i < 9; ++i) R[i] += s * K[i] + c1 * K2[i];
  return R;
}

inline Mat3 matmul(const Mat3& A, const Mat3& B) {
  Mat3 C{};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      double s = 0;
      for (int k = 0; k < 3; ++k) s += A[i * 3 + k] * B[k * 3 + j];
      C[i * 3 + j] = s;
    }
  return C;
}

inline Mat3 transpose(const Mat3& A) {
  return {A[0], A[3], A[6], A[1], A[4], A[7], A[2], A[5], A[8]};
}

inline Mat3 random_rotation(Rng& rng) {
  Vec3 axis = rng.unit();
  const double t = rng.uniform(0.0, kPi);
  return rodrigues({axis[0] * t, axis[1] * t, axis[2] * t});
}

// A camera-from-world [R | t] (12 entries) for a camera at centre C with rotation R.
inline std::array<double, 12> extrinsic(const Mat3& R, const Vec3& C) {
  std::array<double, 12> E{};
  for (int i = 0; i < 3; ++i) {
    double t = 0;
    for (int j = 0; j < 3; ++j) {
      E[i * 4 + j] = R[i * 3 + j];
      t -= R[i * 3 + j] * C[j];
    }
    E[i * 4 + 3] = t;
  }
  return E;
}

// `count` cameras near the origin looking roughly along +z (rotations of about 0.1 rad, centres
// within about 0.3) with centred pinhole intrinsics (focal about W), appended to E [count, 12]
// and K [count, 9], rounded to float32 so float64 and float32 tests see the same cameras.
inline void append_random_cameras(Rng& rng, int64_t count, int64_t H, int64_t W,
                                  std::vector<double>* E, std::vector<double>* K) {
  for (int64_t i = 0; i < count; ++i) {
    const Mat3 R = rodrigues({0.1 * rng.normal(), 0.1 * rng.normal(), 0.1 * rng.normal()});
    const auto e = extrinsic(R, {0.3 * rng.normal(), 0.3 * rng.normal(), 0.3 * rng.normal()});
    for (double x : e) E->push_back(double(float(x)));
    const double f = rng.uniform(0.8, 1.2) * double(W);
    const double k[9] = {f, 0, W / 2.0, 0, f * rng.uniform(0.9, 1.1), H / 2.0, 0, 0, 1};
    for (double x : k) K->push_back(double(float(x)));
  }
}

template <typename T, typename S>
std::vector<T> cast(const std::vector<S>& x) {
  return std::vector<T>(x.begin(), x.end());
}

// Central finite difference of a scalar function f(x) w.r.t. every entry of x.
template <typename F>
std::vector<double> numeric_grad(std::vector<double> x, F&& f, double h) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f(x);
    x[i] = x0 - h;
    const double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

inline double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double v : x) m = std::fmax(m, std::fabs(v));
  return m;
}

}  // namespace vt
