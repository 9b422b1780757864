// Unit tests of include/vggrpo/motion.h against docs/ops.md#motion_smoothness: zero for constant
// linear and angular velocity, positive under jitter, equal to an independent long-double
// evaluation of the formula, VJP equal to central differences, finite at zero velocity; and the
// CPU kernels (kernels/motion_cpu.cpp) equal to the per-sequence functions for any thread count.
#include <cmath>
#include <cstring>
#include <vector>

#include "check.h"
#include "kernels.h"
#include "test_util.h"
#include "vggrpo/motion.h"

using vt::Mat3;
using vt::Vec3;

namespace {

// A trajectory of T cameras (T x 12 camera-from-world rows) with world-from-camera rotations
// R_wc[t] = R_wc[0] exp(t w) (constant body-frame angular velocity w) and centres C_t = C_0 + t v,
// plus optional jitter on both.
std::vector<double> trajectory(vt::Rng& rng, int T, const Vec3& w, const Vec3& v, double jitter) {
  const Mat3 R0 = vt::random_rotation(rng);
  const Vec3 C0 = {rng.normal(), rng.normal(), rng.normal()};
  std::vector<double> E;
  for (int t = 0; t < T; ++t) {
    Mat3 Rwc = vt::matmul(R0, vt::rodrigues({t * w[0], t * w[1], t * w[2]}));
    Vec3 C = {C0[0] + t * v[0], C0[1] + t * v[1], C0[2] + t * v[2]};
    if (jitter > 0) {
      Rwc = vt::matmul(Rwc, vt::rodrigues({jitter * rng.normal(), jitter * rng.normal(),
                                           jitter * rng.normal()}));
      for (double& c : C) c += jitter * rng.normal();
    }
    const auto e = vt::extrinsic(vt::transpose(Rwc), C);
    E.insert(E.end(), e.begin(), e.end());
  }
  return E;
}

template <typename T>
void run_sequence(const std::vector<double>& E, double eps, double* et, double* er) {
  std::vector<T> Et(E.begin(), E.end());
  T a, b;
  vggrpo::motion_smoothness_sequence(Et.data(), int64_t(E.size() / 12), static_cast<T>(eps), &a,
                                     &b);
  *et = a;
  *er = b;
}

// The docs' formula, written independently in long double: C = -R^T t, v = C[t+1] - C[t],
// omega = log(R_t R_{t+1}^T) by axis-angle (angles below pi/2 here, where atan2(s, c)/s is
// accurate), mean of |x1 - x0| / (|x1| + |x0| + eps).
void reference(const std::vector<double>& E, double eps, double* et, double* er) {
  typedef long double L;
  const size_t T = E.size() / 12;
  std::vector<std::array<L, 3>> C(T), vel(T - 1), om(T - 1);
  for (size_t t = 0; t < T; ++t)
    for (int j = 0; j < 3; ++j) {
      L s = 0;
      for (int i = 0; i < 3; ++i) s += L(E[12 * t + i * 4 + j]) * L(E[12 * t + i * 4 + 3]);
      C[t][j] = -s;
    }
  for (size_t t = 0; t + 1 < T; ++t) {
    L rel[9];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        L s = 0;
        for (int k = 0; k < 3; ++k) s += L(E[12 * t + i * 4 + k]) * L(E[12 * (t + 1) + j * 4 + k]);
        rel[i * 3 + j] = s;
      }
    const L c = (rel[0] + rel[4] + rel[8] - 1) / 2;
    const L v[3] = {(rel[7] - rel[5]) / 2, (rel[2] - rel[6]) / 2, (rel[3] - rel[1]) / 2};
    const L s = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
    const L f = s > 0 ? std::atan2(s, c) / s : 1 / c;
    for (int j = 0; j < 3; ++j) {
      om[t][j] = f * v[j];
      vel[t][j] = C[t + 1][j] - C[t][j];
    }
  }
  auto n3 = [](const std::array<L, 3>& a) {
    return std::sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
  };
  auto term = [&](const std::array<L, 3>& a, const std::array<L, 3>& b) {
    const std::array<L, 3> d = {b[0] - a[0], b[1] - a[1], b[2] - a[2]};
    return n3(d) / (n3(b) + n3(a) + L(eps));
  };
  L st = 0, sr = 0;
  for (size_t i = 0; i + 2 < T; ++i) {
    st += term(vel[i], vel[i + 1]);
    sr += term(om[i], om[i + 1]);
  }
  *et = double(st / L(T - 2));
  *er = double(sr / L(T - 2));
}

}  // namespace

TEST(zero_for_constant_velocity_and_angular_velocity) {
  vt::Rng rng(21);
  for (int i = 0; i < 50; ++i) {
    const int T = int(rng.integer(3, 24));
    const double ang = rng.uniform(1e-3, 0.5), speed = rng.uniform(1e-2, 1.0);
    const Vec3 a = rng.unit(), b = rng.unit();
    const auto E = trajectory(rng, T, {ang * a[0], ang * a[1], ang * a[2]},
                              {speed * b[0], speed * b[1], speed * b[2]}, 0.0);
    double et, er;
    run_sequence<double>(E, 1e-8, &et, &er);
    CHECK_NEAR_MSG(et, 0.0, 1e-12, "T=" << T);
    CHECK_NEAR_MSG(er, 0.0, 1e-12, "T=" << T);
    // float32: centres/rotations rounded to float, steps of >= 1e-3 rad / 1e-2 units.
    run_sequence<float>(E, 1e-8, &et, &er);
    CHECK_NEAR_MSG(et, 0.0, 2e-4, "T=" << T);
    CHECK_NEAR_MSG(er, 0.0, 2e-4, "T=" << T);
  }
}

TEST(positive_when_jittered) {
  vt::Rng rng(22);
  for (int i = 0; i < 50; ++i) {
    const int T = int(rng.integer(3, 24));
    const auto E = trajectory(rng, T, {0.05, 0.02, 0.0}, {0.1, 0, 0}, 0.02);
    double et, er;
    run_sequence<double>(E, 1e-8, &et, &er);
    CHECK(et > 0.05);
    CHECK(er > 0.05);
    CHECK(et <= 1.0);  // each term is |a - b| / (|a| + |b| + eps) <= 1
    CHECK(er <= 1.0);
  }
}

TEST(matches_independent_formula) {
  vt::Rng rng(23);
  for (int i = 0; i < 200; ++i) {
    const int T = int(rng.integer(3, 16));
    const double jitter = i % 4 == 0 ? 0.0 : std::pow(10.0, rng.uniform(-4, -0.5));
    const auto E = trajectory(rng, T, {0.1 * rng.normal(), 0.1 * rng.normal(), 0.1 * rng.normal()},
                              {rng.normal(), rng.normal(), rng.normal()}, jitter);
    double et, er, rt, rr;
    run_sequence<double>(E, 1e-8, &et, &er);
    reference(E, 1e-8, &rt, &rr);
    CHECK_NEAR(et, rt, 1e-11);
    CHECK_NEAR(er, rr, 1e-11);
    run_sequence<float>(E, 1e-8, &et, &er);
    CHECK_NEAR(et, rt, 1e-3);
    CHECK_NEAR(er, rr, 1e-3);
  }
}

TEST(hand_computed_values) {
  // Identity rotations, centres 0, 1, 3 along x: v = (1, 0, 0), (2, 0, 0).
  // e_trans = |2 - 1| / (2 + 1 + eps), e_rot = 0 / (0 + 0 + eps) = 0.
  const double eps = 1e-8;
  std::vector<double> E;
  for (double cx : {0.0, 1.0, 3.0}) {
    const auto e = vt::extrinsic({1, 0, 0, 0, 1, 0, 0, 0, 1}, {cx, 0, 0});
    E.insert(E.end(), e.begin(), e.end());
  }
  double et, er;
  run_sequence<double>(E, eps, &et, &er);
  CHECK_NEAR(et, 1.0 / (3.0 + eps), 1e-16);
  CHECK_EQ(er, 0.0);
  // A fourth frame at 3 (v = 0): second term |0 - 2| / (0 + 2 + eps); mean of two terms.
  const auto e = vt::extrinsic({1, 0, 0, 0, 1, 0, 0, 0, 1}, {3, 0, 0});
  E.insert(E.end(), e.begin(), e.end());
  run_sequence<double>(E, eps, &et, &er);
  CHECK_NEAR(et, (1.0 / (3.0 + eps) + 2.0 / (2.0 + eps)) / 2, 1e-16);
  // Rotation about z by 0.1, 0.1, 0.3 (body frame), no translation: omega = 0.1 z, 0.1 z, 0.3 z.
  E.clear();
  double ang = 0;
  for (double step : {0.0, 0.1, 0.1, 0.3}) {
    ang += step;
    const Mat3 Rwc = vt::rodrigues({0, 0, ang});
    const auto f = vt::extrinsic(vt::transpose(Rwc), {0, 0, 0});
    E.insert(E.end(), f.begin(), f.end());
  }
  run_sequence<double>(E, eps, &et, &er);
  CHECK_EQ(et, 0.0);
  CHECK_NEAR(er, (0.0 / (0.2 + eps) + 0.2 / (0.4 + eps)) / 2, 1e-14);
  // The sign of the step matters: rotating back by the same angle is a full change.
  E.clear();
  for (double a : {0.0, 0.1, 0.0}) {
    const auto f = vt::extrinsic(vt::transpose(vt::rodrigues({a, 0, 0})), {0, 0, 0});
    E.insert(E.end(), f.begin(), f.end());
  }
  run_sequence<double>(E, eps, &et, &er);
  CHECK_NEAR(er, 0.2 / (0.2 + eps), 1e-14);
}

TEST(stationary_camera) {
  vt::Rng rng(24);
  const auto E = trajectory(rng, 6, {0, 0, 0}, {0, 0, 0}, 0.0);
  double et, er;
  run_sequence<double>(E, 1e-8, &et, &er);
  CHECK_NEAR(et, 0.0, 1e-6);  // |v| ~ rounding: a / (|v1| + |v0| + eps) stays tiny
  CHECK_EQ(er, 0.0);          // R R^T rounds to I's log: tiny too
  std::vector<double> g(E.size(), 0.0);
  vggrpo::motion_smoothness_sequence_vjp(E.data(), 6, 1e-8, 1.0, 1.0, g.data());
  bool finite = true;
  for (double x : g) finite = finite && std::isfinite(x);
  CHECK(finite);
}

TEST(smoothness_term_vjp_at_zero) {
  const double zero[3] = {0, 0, 0}, x[3] = {1, 0, 0};
  const double eps = 1e-8;
  // Both zero: term = 0 / eps, every gradient 0 (norms have a zero gradient at zero).
  double g0[3] = {0, 0, 0}, g1[3] = {0, 0, 0};
  vggrpo::smoothness_term_vjp(zero, zero, eps, 1.0, g0, g1);
  for (int i = 0; i < 3; ++i) {
    CHECK_EQ(g0[i], 0.0);
    CHECK_EQ(g1[i], 0.0);
  }
  CHECK_EQ(vggrpo::smoothness_term(zero, zero, eps), 0.0);
  // x0 = 0, x1 = e_x: term = 1 / (1 + eps).
  //   d/dx1 = e_x / (1 + eps) - e_x / (1 + eps)^2;  d/dx0 = -e_x / (1 + eps) (|x0|'s gradient 0).
  vggrpo::smoothness_term_vjp(zero, x, eps, 2.0, g0, g1);
  const double den = 1 + eps;
  CHECK_NEAR(g1[0], 2 * eps / (den * den), 1e-15);
  CHECK_NEAR(g0[0], -2 / den, 1e-15);
  CHECK_EQ(g0[1], 0.0);
  CHECK_EQ(g1[2], 0.0);
  // float32 too.
  const float zf[3] = {0, 0, 0};
  float gf0[3] = {0, 0, 0}, gf1[3] = {0, 0, 0};
  vggrpo::smoothness_term_vjp(zf, zf, 1e-8f, 1.0f, gf0, gf1);
  for (int i = 0; i < 3; ++i) CHECK(std::isfinite(gf0[i]) && gf0[i] == 0 && gf1[i] == 0);
}

namespace {

double weighted(const std::vector<double>& E, double eps, double wt, double wr) {
  double et, er;
  run_sequence<double>(E, eps, &et, &er);
  return wt * et + wr * er;
}

bool regular_branch_stable(const std::vector<double>& E, double margin) {
  // All relative rotations well inside one branch piece (|c| > margin).
  for (size_t t = 0; t + 1 < E.size() / 12; ++t) {
    double rel[9];
    vggrpo::relative_rotation(E.data() + 12 * t, E.data() + 12 * (t + 1), rel);
    if (std::fabs(vggrpo::so3_cos_part(rel)) < margin) return false;
  }
  return true;
}

}  // namespace

TEST(sequence_vjp_matches_fd) {
  vt::Rng rng(25);
  int near_pi_cases = 0;
  for (int i = 0; i < 120; ++i) {
    const int T = int(rng.integer(3, 7));
    const double step = i % 3 == 2 ? rng.uniform(1.8, 2.6) : rng.uniform(0.01, 0.6);
    const Vec3 a = rng.unit();
    auto E = trajectory(rng, T, {step * a[0], step * a[1], step * a[2]},
                        {rng.normal(), rng.normal(), rng.normal()}, 0.05);
    if (i % 5 == 1)
      for (double& x : E) x += 0.01 * rng.normal();  // off SO(3): the ambient derivative
    if (!regular_branch_stable(E, 0.05)) continue;
    near_pi_cases += step > 1.7;
    const double eps = 1e-8, wt = rng.normal(), wr = rng.normal();
    std::vector<double> g(E.size(), 0.0);
    vggrpo::motion_smoothness_sequence_vjp(E.data(), T, eps, wt, wr, g.data());
    const auto fd = vt::numeric_grad(
        E, [&](const std::vector<double>& x) { return weighted(x, eps, wt, wr); }, 1e-6);
    const double scale = 1 + vt::max_abs(fd);
    for (size_t k = 0; k < E.size(); ++k)
      CHECK_NEAR_MSG(g[k], fd[k], 1e-6 * scale, "case " << i << " T=" << T << " entry " << k);
  }
  CHECK(near_pi_cases > 10);
}

TEST(sequence_vjp_accumulates) {
  vt::Rng rng(26);
  const auto E = trajectory(rng, 5, {0.1, 0, 0}, {0, 0.2, 0}, 0.05);
  std::vector<double> g0(E.size(), 0.0), g1(E.size(), 1.5);
  vggrpo::motion_smoothness_sequence_vjp(E.data(), 5, 1e-8, 0.7, -0.3, g0.data());
  vggrpo::motion_smoothness_sequence_vjp(E.data(), 5, 1e-8, 0.7, -0.3, g1.data());
  for (size_t k = 0; k < E.size(); ++k) CHECK_NEAR(g1[k] - 1.5, g0[k], 1e-14);
}

TEST(cpu_kernels_equal_per_sequence) {
  vt::Rng rng(27);
  for (int threads : {1, 2}) {
    for (const int64_t T : {int64_t(3), int64_t(9)}) {
      const int64_t B = 300;  // enough work for the parallel path
      std::vector<double> E;
      for (int64_t b = 0; b < B; ++b) {
        const auto e = trajectory(rng, int(T), {0.1, 0.05, 0}, {0.3, 0, 0.1}, 0.03);
        E.insert(E.end(), e.begin(), e.end());
      }
      std::vector<double> et(B), er(B), gt(B), gr(B), gE(E.size(), 123.0);
      for (int64_t b = 0; b < B; ++b) {
        gt[b] = rng.normal();
        gr[b] = rng.normal();
      }
      vggrpo::kernels::motion_smoothness_cpu(E.data(), B, T, 1e-8, et.data(), er.data(), threads);
      vggrpo::kernels::motion_smoothness_backward_cpu(E.data(), B, T, 1e-8, gt.data(), gr.data(),
                                                      gE.data(), threads);
      for (int64_t b = 0; b < B; ++b) {
        double a, c;
        vggrpo::motion_smoothness_sequence(E.data() + 12 * T * b, T, 1e-8, &a, &c);
        CHECK_EQ(et[b], a);
        CHECK_EQ(er[b], c);
        std::vector<double> g(12 * T, 0.0);  // the kernel overwrites (zeroes) its output
        vggrpo::motion_smoothness_sequence_vjp(E.data() + 12 * T * b, T, 1e-8, gt[b], gr[b],
                                               g.data());
        for (int64_t k = 0; k < 12 * T; ++k) CHECK_EQ(gE[12 * T * b + k], g[k]);
      }
      // float32 path too.
      std::vector<float> Ef(E.begin(), E.end()), etf(B), erf(B);
      vggrpo::kernels::motion_smoothness_cpu(Ef.data(), B, T, 1e-8f, etf.data(), erf.data(),
                                             threads);
      for (int64_t b = 0; b < B; ++b) {
        CHECK_NEAR(etf[b], et[b], 1e-4);
        CHECK_NEAR(erf[b], er[b], 1e-4);
      }
    }
  }
}
