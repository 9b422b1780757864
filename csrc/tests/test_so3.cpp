// Unit tests of include/vggrpo/so3.h against docs/ops.md#so3_log: the log inverts an independent
// Rodrigues exponential at every angle, in float64 and float32; the VJP is the derivative of the
// stated formula (central differences in the 9 ambient entries, both branches, off SO(3) too); the
// VJP is finite at 0 and pi; float32 keeps full relative accuracy of the Jacobian at small angles.
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#include "check.h"
#include "test_util.h"
#include "vggrpo/so3.h"

using vt::kPi;
using vt::Mat3;
using vt::Vec3;

namespace {

template <typename T>
Vec3 log_of(const Mat3& R) {
  T Rt[9], w[3];
  for (int i = 0; i < 9; ++i) Rt[i] = static_cast<T>(R[i]);
  vggrpo::so3_log(Rt, w);
  return {double(w[0]), double(w[1]), double(w[2])};
}

// The matrix as the T-typed op sees it, back in double (the rounding of the input, nothing else).
template <typename T>
Mat3 rounded(const Mat3& R) {
  Mat3 out;
  for (int i = 0; i < 9; ++i) out[i] = double(static_cast<T>(R[i]));
  return out;
}

double dist(const Vec3& a, const Vec3& b) {
  return vt::norm({a[0] - b[0], a[1] - b[1], a[2] - b[2]});
}

double mat_dist(const Mat3& A, const Mat3& B) {
  double m = 0;
  for (int i = 0; i < 9; ++i) m = std::fmax(m, std::fabs(A[i] - B[i]));
  return m;
}

// Every test angle (radians) below pi, including the ones the branches and the series meet at.
std::vector<double> special_angles() {
  return {0.0,           1e-12,         1e-8,          1e-6,         1e-4,
          1e-3,          1e-2,          0.0999,        0.1001,       0.5,
          1.0,           kPi / 2 - 1e-3, kPi / 2,       kPi / 2 + 1e-3, 2.0,
          3.0,           kPi - 1e-3,    kPi - 1e-6,    kPi - 1e-9};
}

std::vector<Vec3> test_axes(vt::Rng& rng) {
  const double r = 1 / std::sqrt(3.0);
  std::vector<Vec3> axes = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}, {-1, 0, 0}, {0, -1, 0},
                            {0, 0, -1}, {r, r, r}, {r, -r, r}};
  for (int i = 0; i < 6; ++i) axes.push_back(rng.unit());
  return axes;
}

// log(exp(omega)) == omega. Error bound: the input entries carry a relative rounding error of
// T's epsilon, and log is well conditioned below pi (|d omega| <~ |omega| * |dR| / |R| and the
// off-diagonal entries that carry omega are ~|omega| in size at small angles), so the error is a
// small multiple of eps * |omega|.
template <typename T>
void check_log_exp(const Vec3& omega, double rel_tol_eps) {
  const double eps = std::numeric_limits<T>::epsilon();
  const Mat3 R = vt::rodrigues(omega);
  const Vec3 w = log_of<T>(R);
  const double tol = rel_tol_eps * eps * vt::norm(omega);
  if (kPi - vt::norm(omega) < 8 * eps) {
    // Within rounding of pi, +-omega are both logs of the rounded matrix (v's sign is noise):
    // the result must be one of them.
    CHECK_NEAR(vt::norm(w), vt::norm(omega), tol);
    const Vec3 neg = {-omega[0], -omega[1], -omega[2]};
    CHECK_NEAR(std::fmin(dist(w, omega), dist(w, neg)), 0.0, tol);
    return;
  }
  CHECK_NEAR_MSG(dist(w, omega), 0.0, tol,
                 "omega " << omega[0] << " " << omega[1] << " " << omega[2] << " got " << w[0]
                          << " " << w[1] << " " << w[2]);
}

}  // namespace

TEST(log_inverts_exp_special_angles_double) {
  vt::Rng rng(1);
  for (const Vec3& a : test_axes(rng))
    for (double t : special_angles()) check_log_exp<double>({a[0] * t, a[1] * t, a[2] * t}, 16);
}

TEST(log_inverts_exp_special_angles_float) {
  vt::Rng rng(1);
  for (const Vec3& a : test_axes(rng))
    for (double t : special_angles()) check_log_exp<float>({a[0] * t, a[1] * t, a[2] * t}, 16);
}

TEST(log_inverts_exp_random) {
  vt::Rng rng(2);
  for (int i = 0; i < 20000; ++i) {
    const Vec3 a = rng.unit();
    // Half uniform in angle, half log-uniform down to 1e-9.
    const double t = i % 2 ? rng.uniform(0, kPi - 1e-6) : std::pow(10.0, rng.uniform(-9, 0.4));
    const Vec3 omega = {a[0] * t, a[1] * t, a[2] * t};
    check_log_exp<double>(omega, 16);
    check_log_exp<float>(omega, 16);
  }
}

TEST(log_result_bounded_by_pi) {
  // |omega| <= pi, and the angle is atan2-accurate at every magnitude.
  vt::Rng rng(3);
  for (int i = 0; i < 2000; ++i) {
    const Mat3 R = vt::random_rotation(rng);
    const Vec3 wd = log_of<double>(R);
    const Vec3 wf = log_of<float>(R);
    CHECK(vt::norm(wd) <= kPi * (1 + 4 * DBL_EPSILON));
    CHECK(vt::norm(wf) <= kPi * (1 + 4 * FLT_EPSILON));
    CHECK_NEAR(mat_dist(vt::rodrigues(wd), R), 0.0, 1e-14);
  }
}

// At exactly pi both +-pi n are logs; the result must be one of them, with |omega| == pi, and the
// documented sign convention n_k > 0 (k = argmax_i S_ii, here the largest |n_i|, first on ties).
template <typename T>
void check_exact_pi(const Mat3& R, const char* what) {
  const double eps = std::numeric_limits<T>::epsilon();
  const Vec3 w = log_of<T>(R);
  const Mat3 Rin = rounded<T>(R);
  CHECK_NEAR_MSG(vt::norm(w), kPi, 4 * eps * kPi, what);
  CHECK_NEAR_MSG(mat_dist(vt::rodrigues(w), Rin), 0.0, 8 * eps, what);
  int k = 0;
  for (int i = 1; i < 3; ++i)
    if (Rin[i * 4] > Rin[k * 4]) k = i;
  CHECK_MSG(w[k] > 0, what << ": omega[" << k << "] = " << w[k]);
}

TEST(log_at_exactly_pi) {
  for (int pass = 0; pass < 2; ++pass) {
    const Mat3 cases[] = {
        {-1, 0, 0, 0, -1, 0, 0, 0, 1},  // pi about z
        {1, 0, 0, 0, -1, 0, 0, 0, -1},  // pi about x
        {-1, 0, 0, 0, 1, 0, 0, 0, -1},  // pi about y
    };
    for (const Mat3& R : cases) {
      if (pass == 0) check_exact_pi<double>(R, "axis-aligned pi, double");
      if (pass == 1) check_exact_pi<float>(R, "axis-aligned pi, float");
    }
  }
  const Mat3 Rz = {-1, 0, 0, 0, -1, 0, 0, 0, 1};
  const Vec3 wz = log_of<double>(Rz);
  CHECK_EQ(wz[0], 0.0);
  CHECK_EQ(wz[1], 0.0);
  CHECK_EQ(wz[2], kPi);
  // The same half turn written with signed zeros (as -R, transposes or products produce): v has a
  // -0 entry, and the convention n_k > 0 must still give +pi, not atan2(-0, -1) = -pi.
  const Mat3 Rz_signed = {-1, +0.0, -0.0, -0.0, -1, -0.0, -0.0, -0.0, 1};
  const Vec3 w_signed = log_of<double>(Rz_signed);
  const Vec3 wf_signed = log_of<float>(Rz_signed);
  CHECK_EQ(w_signed[2], kPi);
  CHECK_EQ(wf_signed[2], static_cast<double>(static_cast<float>(kPi)));

  // 2 n n^T - I: exactly symmetric, v == 0 exactly, rotation by pi about n.
  vt::Rng rng(4);
  for (int i = 0; i < 200; ++i) {
    const Vec3 n = rng.unit();
    Mat3 R;
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b) R[a * 3 + b] = 2 * n[a] * n[b] - (a == b ? 1.0 : 0.0);
    check_exact_pi<double>(R, "2nn^T - I, double");
    check_exact_pi<float>(R, "2nn^T - I, float");
  }

  // Rodrigues at t = pi (sin(pi) rounds to 1.2e-16, so v is tiny but not zero): log recovers
  // the axis with the sign of v, |omega| == pi.
  for (const Vec3& a : std::vector<Vec3>{{1, 0, 0}, {0, 1, 0}, {0, 0, 1}, rng.unit(), rng.unit()}) {
    const Mat3 R = vt::rodrigues({a[0] * kPi, a[1] * kPi, a[2] * kPi});
    const Vec3 w = log_of<double>(R);
    CHECK_NEAR(vt::norm(w), kPi, 8 * DBL_EPSILON);
    CHECK_NEAR(mat_dist(vt::rodrigues(w), R), 0.0, 8 * DBL_EPSILON);
    const Vec3 wf = log_of<float>(R);
    CHECK_NEAR(vt::norm(wf), kPi, 4 * FLT_EPSILON * kPi);
    CHECK_NEAR(mat_dist(vt::rodrigues(wf), rounded<float>(R)), 0.0, 8 * FLT_EPSILON);
  }
}

TEST(near_pi_axis_choice_first_index_on_ties) {
  // pi about (1, 1, 0)/sqrt(2): S_00 == S_11, so k is 0 (first index on ties).
  const double r = 1 / std::sqrt(2.0);
  Mat3 R;
  const Vec3 n = {r, r, 0};
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) R[a * 3 + b] = 2 * n[a] * n[b] - (a == b ? 1.0 : 0.0);
  double v[3];
  vggrpo::so3_sin_part(R.data(), v);
  const double c = vggrpo::so3_cos_part(R.data());
  CHECK_EQ(vggrpo::so3_regular_branch(vt::norm({v[0], v[1], v[2]}), c), false);
  const vggrpo::So3NearPi<double> np = vggrpo::so3_near_pi(R.data(), c, v);
  CHECK_EQ(np.k, 0);
  CHECK_NEAR(np.n[0], r, 1e-15);
  CHECK_NEAR(np.n[1], r, 1e-15);
  CHECK_NEAR(np.theta, kPi, 1e-15);
}

TEST(branch_selection) {
  using vggrpo::so3_regular_branch;
  CHECK(so3_regular_branch(0.0, 1.0));
  CHECK(so3_regular_branch(1e-3, 1e-300));
  CHECK(so3_regular_branch(1.0, 0.0));      // c == 0, s > 0: regular (angle pi/2)
  CHECK(!so3_regular_branch(0.0, 0.0));     // degenerate: near-pi
  CHECK(!so3_regular_branch(1.0, -1e-300));
  CHECK(!so3_regular_branch(0.0, -1.0));
  CHECK(so3_regular_branch(0.5f, 0.0f));
  CHECK(so3_regular_branch(0.5f, -0.0f));  // -0 == 0: still the c == 0 rule
  // At exactly pi/2 about z the matrix has c == 0 in floating point: omega = (0, 0, pi/2).
  const Mat3 R = {0, -1, 0, 1, 0, 0, 0, 0, 1};
  const Vec3 w = log_of<double>(R);
  CHECK_EQ(w[0], 0.0);
  CHECK_EQ(w[1], 0.0);
  CHECK_NEAR(w[2], kPi / 2, 2 * DBL_EPSILON);
}

// g = atan2(s, c)/s and q = (dg/ds)/s against long double, on both sides of the series switch.
template <typename T>
void check_coeffs(double tol_g, double tol_q) {
  const long double cs[] = {1.0L, 0.3L, 2.0L};
  for (long double c : cs) {
    for (double lx = -9; lx <= 1.0; lx += 0.01) {
      const long double x = std::pow(10.0L, (long double)lx);
      const T s = static_cast<T>(x * c);
      const T ct = static_cast<T>(c);
      T g, q;
      vggrpo::so3_regular_coeffs(s, ct, &g, &q);
      const long double S = s, C = ct;
      const long double gl = std::atan2(S, C) / S;
      // q by its closed form in long double where it does not cancel, by the series elsewhere.
      long double ql;
      const long double X = S / C;
      if (X > 1e-2L) {
        ql = (C / (S * S + C * C) - gl) / (S * S);
      } else {
        const long double X2 = X * X;
        ql = (-2.0L / 3 + X2 * (4.0L / 5 - X2 * (6.0L / 7 - X2 * (8.0L / 9 - X2 * 10.0L / 11)))) /
             (C * C * C);
      }
      CHECK_NEAR_MSG(double(g), double(gl), tol_g * std::fabs(double(gl)), "x=" << double(X));
      CHECK_NEAR_MSG(double(q), double(ql), tol_q * std::fabs(double(ql)), "x=" << double(X));
    }
  }
}

TEST(regular_coefficients_accurate_across_series_switch) {
  check_coeffs<double>(4 * DBL_EPSILON, 1e-10);
  // float32: g to rounding; q's closed form just above x = 0.1 loses ~1/x^2 to cancellation.
  check_coeffs<float>(4 * FLT_EPSILON, 1e-4);
}

// ---- VJP --------------------------------------------------------------------------------------

namespace {

std::vector<double> vjp_of(const std::vector<double>& R, const Vec3& gw) {
  std::vector<double> g(9);
  vggrpo::so3_log_vjp(R.data(), gw.data(), g.data());
  return g;
}

double loss(const std::vector<double>& R, const Vec3& gw) {
  double w[3];
  vggrpo::so3_log(R.data(), w);
  return gw[0] * w[0] + gw[1] * w[1] + gw[2] * w[2];
}

// Branch/selection state of a matrix: the piecewise-constant parts of the formula.
struct Pieces {
  bool regular;
  int k;
  double sigma;
};
Pieces pieces(const std::vector<double>& R) {
  double v[3];
  vggrpo::so3_sin_part(R.data(), v);
  const double c = vggrpo::so3_cos_part(R.data());
  const double s = vt::norm({v[0], v[1], v[2]});
  if (vggrpo::so3_regular_branch(s, c)) return {true, -1, 0};
  const auto np = vggrpo::so3_near_pi(R.data(), c, v);
  return {false, np.k, np.sigma};
}

// Safe for central differences with step h: every +-h perturbation keeps the same branch, k and
// sigma (the formula is smooth inside one piece).
bool fd_safe(const std::vector<double>& R, double margin) {
  const double c = vggrpo::so3_cos_part(R.data());
  if (std::fabs(c) < margin) return false;
  if (c > 0) return true;
  double S[3];
  for (int i = 0; i < 3; ++i) S[i] = R[i * 4] - c;
  double top = std::fmax(S[0], std::fmax(S[1], S[2]));
  int n_near = 0;
  for (double x : S) n_near += (top - x < margin) ? 1 : 0;
  if (n_near > 1) return false;
  double v[3];
  vggrpo::so3_sin_part(R.data(), v);
  const auto np = vggrpo::so3_near_pi(R.data(), c, v);
  return std::fabs(vggrpo::dot3(np.u, v)) > margin * np.m;
}

void check_vjp_fd(const std::vector<double>& R, const Vec3& gw, const char* what) {
  const std::vector<double> g = vjp_of(R, gw);
  const std::vector<double> fd =
      vt::numeric_grad(R, [&](const std::vector<double>& x) { return loss(x, gw); }, 1e-6);
  const double scale = 1 + vt::max_abs(fd);
  const Pieces p = pieces(R);
  for (int i = 0; i < 9; ++i)
    CHECK_NEAR_MSG(g[i], fd[i], 2e-8 * scale,
                   what << " entry " << i << (p.regular ? " regular" : " near-pi") << " k=" << p.k);
}

}  // namespace

TEST(vjp_matches_finite_differences_on_rotations) {
  vt::Rng rng(5);
  int regular = 0, near_pi = 0;
  for (int i = 0; i < 600; ++i) {
    const Mat3 Rm = vt::random_rotation(rng);
    std::vector<double> R(Rm.begin(), Rm.end());
    if (!fd_safe(R, 0.02)) continue;
    (pieces(R).regular ? regular : near_pi)++;
    check_vjp_fd(R, {rng.normal(), rng.normal(), rng.normal()}, "rotation");
  }
  // Small angles: both sides of the float64 series switch (x = 0.01), and 1e-6.
  for (double t : {1e-6, 1e-3, 0.0099, 0.0101, 0.05, 1.0, 3.0, kPi - 1e-3}) {
    const Vec3 a = rng.unit();
    const Mat3 Rm = vt::rodrigues({a[0] * t, a[1] * t, a[2] * t});
    std::vector<double> R(Rm.begin(), Rm.end());
    if (!fd_safe(R, 1e-4)) continue;
    (pieces(R).regular ? regular : near_pi)++;
    check_vjp_fd(R, {rng.normal(), rng.normal(), rng.normal()}, "fixed angle");
  }
  // Both branches were exercised.
  CHECK(regular > 100);
  CHECK(near_pi > 100);
}

TEST(vjp_matches_finite_differences_off_so3) {
  // gradcheck perturbs the 9 entries freely: the VJP is the derivative of the ambient formula.
  vt::Rng rng(6);
  int regular = 0, near_pi = 0;
  for (int i = 0; i < 600; ++i) {
    const Mat3 Rm = vt::random_rotation(rng);
    std::vector<double> R(Rm.begin(), Rm.end());
    const double amp = i % 3 == 0 ? 0.3 : 0.03;
    for (double& x : R) x += amp * rng.normal();
    if (!fd_safe(R, 0.02)) continue;
    (pieces(R).regular ? regular : near_pi)++;
    check_vjp_fd(R, {rng.normal(), rng.normal(), rng.normal()}, "off SO(3)");
  }
  CHECK(regular > 100);
  CHECK(near_pi > 100);
}

TEST(vjp_at_identity_is_the_skew_projection) {
  // At R = I: omega ~ v, so d omega / dR is the skew part; the formula is smooth there.
  const std::vector<double> I = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  vt::Rng rng(7);
  for (int rep = 0; rep < 5; ++rep) {
    const Vec3 gw = {rng.normal(), rng.normal(), rng.normal()};
    const std::vector<double> g = vjp_of(I, gw);
    const double expect[9] = {0,          -gw[2] / 2, gw[1] / 2,  gw[2] / 2, 0,
                              -gw[0] / 2, -gw[1] / 2, gw[0] / 2,  0};
    for (int i = 0; i < 9; ++i) CHECK_NEAR(g[i], expect[i], 1e-15);
    check_vjp_fd(I, gw, "identity");
    float If[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1}, gwf[3] = {float(gw[0]), float(gw[1]), float(gw[2])};
    float gf[9];
    vggrpo::so3_log_vjp(If, gwf, gf);
    for (int i = 0; i < 9; ++i) CHECK_NEAR(gf[i], expect[i], 4e-7 * (1 + std::fabs(expect[i])));
  }
}

TEST(vjp_finite_at_zero_and_pi) {
  vt::Rng rng(8);
  std::vector<Mat3> mats = {{1, 0, 0, 0, 1, 0, 0, 0, 1},
                            {-1, 0, 0, 0, -1, 0, 0, 0, 1},
                            {1, 0, 0, 0, -1, 0, 0, 0, -1},
                            {-1, 0, 0, 0, 1, 0, 0, 0, -1}};
  for (int i = 0; i < 20; ++i) {
    const Vec3 n = rng.unit();
    Mat3 R;
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b) R[a * 3 + b] = 2 * n[a] * n[b] - (a == b ? 1.0 : 0.0);
    mats.push_back(R);
    mats.push_back(vt::rodrigues({n[0] * kPi, n[1] * kPi, n[2] * kPi}));
  }
  for (const Mat3& R : mats) {
    const Vec3 gw = {rng.normal(), rng.normal(), rng.normal()};
    double g[9];
    vggrpo::so3_log_vjp(R.data(), gw.data(), g);
    float Rf[9], gwf[3] = {float(gw[0]), float(gw[1]), float(gw[2])}, gf[9];
    for (int i = 0; i < 9; ++i) Rf[i] = float(R[i]);
    vggrpo::so3_log_vjp(Rf, gwf, gf);
    bool finite = true;
    double mx = 0;
    for (int i = 0; i < 9; ++i) {
      finite = finite && std::isfinite(g[i]) && std::isfinite(gf[i]);
      mx = std::fmax(mx, std::fabs(g[i]));
    }
    CHECK(finite);
    // On SO(3) the Jacobian of log is bounded (|J| <= pi/2 per ambient direction, roughly).
    CHECK(mx < 10 * vt::norm(gw));
  }
  // At exactly pi about z the derivative along the axis: omega = theta n with theta = pi, and
  // d theta / dR within the near-pi piece; check a one-sided difference that stays in the piece
  // (moving towards a smaller angle keeps v's sign along +z).
  {
    const std::vector<double> R = {-1, 0, 0, 0, -1, 0, 0, 0, 1};
    const Vec3 gw = {0.3, -0.2, 0.7};
    const std::vector<double> g = vjp_of(R, gw);
    // Perturb only entries that keep v = (0, 0, v2 >= 0), c < 0 and k == 2: R10 up, R01 down, and
    // the diagonal entries; compare a forward difference.
    const int idx[] = {0, 4, 8, 1, 3};
    const double sign[] = {1, 1, -1, -1, 1};
    for (int j = 0; j < 5; ++j) {
      const double h = 1e-7;
      std::vector<double> Rp = R;
      Rp[idx[j]] += sign[j] * h;
      const double d = (loss(Rp, gw) - loss(R, gw)) / h;
      CHECK_NEAR_MSG(sign[j] * g[idx[j]], d, 1e-5, "one-sided at pi, entry " << idx[j]);
    }
  }
}

TEST(float_jacobian_keeps_relative_accuracy_at_small_angles) {
  // Full Jacobian (3 x 9) in float32 vs float64 on the same (float-rounded) matrix: no cancelling
  // term at small angles, so every nonzero entry keeps float32's relative accuracy.
  vt::Rng rng(9);
  double worst = 0;
  for (int i = 0; i < 400; ++i) {
    const double t = std::pow(10.0, rng.uniform(-8, -2));
    const Vec3 a = rng.unit();
    const Mat3 Rd = vt::rodrigues({a[0] * t, a[1] * t, a[2] * t});
    float Rf[9];
    double Rr[9];
    for (int k = 0; k < 9; ++k) {
      Rf[k] = float(Rd[k]);
      Rr[k] = double(Rf[k]);
    }
    for (int j = 0; j < 3; ++j) {
      float gwf[3] = {0, 0, 0};
      double gwd[3] = {0, 0, 0};
      gwf[j] = 1;
      gwd[j] = 1;
      float gf[9];
      double gd[9];
      vggrpo::so3_log_vjp(Rf, gwf, gf);
      vggrpo::so3_log_vjp(Rr, gwd, gd);
      for (int k = 0; k < 9; ++k) {
        if (gd[k] == 0) {
          CHECK_EQ(double(gf[k]), 0.0);
          continue;
        }
        const double rel = std::fabs(double(gf[k]) - gd[k]) / std::fabs(gd[k]);
        worst = std::fmax(worst, rel);
        CHECK_NEAR_MSG(double(gf[k]), gd[k], 1e-5 * std::fabs(gd[k]),
                       "t=" << t << " row " << j << " entry " << k);
      }
    }
  }
  std::printf("  worst float32 relative Jacobian error at 1e-8..1e-2 rad: %.3g\n", worst);
}

TEST(float_vjp_matches_double_at_all_angles) {
  // Away from small angles: agreement to float rounding of the inputs' scale.
  vt::Rng rng(10);
  for (int i = 0; i < 2000; ++i) {
    const Mat3 Rd = vt::random_rotation(rng);
    std::vector<double> Rr(9);
    float Rf[9];
    for (int k = 0; k < 9; ++k) {
      Rf[k] = float(Rd[k]);
      Rr[k] = double(Rf[k]);
    }
    if (!fd_safe(Rr, 0.02)) continue;
    const Vec3 gw = {rng.normal(), rng.normal(), rng.normal()};
    const float gwf[3] = {float(gw[0]), float(gw[1]), float(gw[2])};
    const Vec3 gwr = {double(gwf[0]), double(gwf[1]), double(gwf[2])};
    const std::vector<double> gd = vjp_of(Rr, gwr);
    float gf[9];
    vggrpo::so3_log_vjp(Rf, gwf, gf);
    for (int k = 0; k < 9; ++k) CHECK_NEAR(double(gf[k]), gd[k], 2e-5 * (1 + vt::max_abs(gd)));
  }
}

// A NaN/inf entry anywhere: omega and all 9 VJP entries NaN, in both types (docs/ops.md#so3_log).
// Without the rule an inf on the diagonal gave omega = 0 through the series (g = 1/c = 0).
template <typename T>
void check_non_finite_entries() {
  const T bad[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                   -std::numeric_limits<T>::infinity()};
  const Mat3 Rd = vt::rodrigues({0.3, -0.2, 0.1});
  for (int entry = 0; entry < 9; ++entry) {
    for (const T value : bad) {
      T R[9], w[3], gw[3] = {T(0.5), T(-1), T(2)}, g[9];
      for (int i = 0; i < 9; ++i) R[i] = static_cast<T>(Rd[i]);
      R[entry] = value;
      vggrpo::so3_log(R, w);
      vggrpo::so3_log_vjp(R, gw, g);
      for (int i = 0; i < 3; ++i) CHECK_MSG(std::isnan(w[i]), "omega, entry " << entry);
      for (int i = 0; i < 9; ++i) CHECK_MSG(std::isnan(g[i]), "vjp, entry " << entry);
    }
  }
}

TEST(non_finite_entries_give_nan) {
  check_non_finite_entries<double>();
  check_non_finite_entries<float>();
}
