// Unit tests of include/vggrpo/camera.h against docs/ops.md#conventions: the pixel rule of
// project_to_pixel (pixel (x, y) covers [x, x+1) x [y, y+1); kept when 0 <= u < W, 0 <= v < H;
// behind the camera, z == 0 and non-finite rejected), camera_z, camera_center = -R^T t, and the
// VJPs against central differences.
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "check.h"
#include "test_util.h"
#include "vggrpo/camera.h"

using vt::Mat3;
using vt::Vec3;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Identity camera at the origin with K = [[1, 0, 0], [0, 1, 0]]: a point (u, v, 1) projects to
// exactly (u, v), so the pixel rule can be probed at exact boundaries.
template <typename T>
struct UnitCam {
  T E[12] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0};
  T K[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
};

template <typename T>
bool project(const T* E, const T* K, double x, double y, double z, int64_t H, int64_t W,
             int64_t* pixel, T* depth = nullptr) {
  const T p[3] = {static_cast<T>(x), static_cast<T>(y), static_cast<T>(z)};
  T zz = T(-7);
  int64_t pix = -7;
  const bool ok = vggrpo::project_to_pixel(E, K, p, H, W, &zz, &pix);
  if (!ok) {
    // Outputs are untouched on rejection.
    CHECK_EQ(pix, int64_t(-7));
    CHECK_EQ(zz, T(-7));
  }
  *pixel = pix;
  if (depth) *depth = zz;
  return ok;
}

template <typename T>
void check_pixel_rule() {
  UnitCam<T> cam;
  const int64_t H = 4, W = 6;
  int64_t pix;
  const T below_one = std::nextafter(T(1), T(0));
  // (u, v, expected pixel or -1 for dropped)
  struct Case {
    double u, v;
    int64_t expect;
  };
  const double Wm = double(std::nextafter(static_cast<T>(W), T(0)));  // largest u below W
  const double Hm = double(std::nextafter(static_cast<T>(H), T(0)));
  const Case cases[] = {
      {0.0, 0.0, 0},                       // u == 0 and v == 0 kept: pixel (0, 0)
      {-0.0, -0.0, 0},                     // -0 == 0
      {0.5, 0.5, 0},
      {double(below_one), 0.0, 0},         // still pixel 0: [0, 1)
      {1.0, 0.0, 1},                       // exactly 1 belongs to pixel 1
      {2.5, 1.0, 1 * W + 2},
      {5.999, 3.999, 3 * W + 5},
      {Wm, Hm, (H - 1) * W + (W - 1)},     // just inside the far corner
      {double(W), 0.0, -1},                // u == W dropped
      {0.0, double(H), -1},                // v == H dropped
      {double(W), double(H), -1},
      {-1e-6, 0.0, -1},                    // just left of the image
      {0.0, -1e-6, -1},
      {-0.5, 2.0, -1},                     // would truncate to 0: must still be dropped
      {2.0, -0.5, -1},
      {1e30, 1.0, -1},
      {-1e30, 1.0, -1},
      {kNaN, 1.0, -1},
      {1.0, kNaN, -1},
      {kInf, 1.0, -1},
      {1.0, -kInf, -1},
  };
  for (const Case& c : cases) {
    const bool ok = project(cam.E, cam.K, c.u, c.v, 1.0, H, W, &pix);
    CHECK_MSG(ok == (c.expect >= 0), "u=" << c.u << " v=" << c.v);
    if (ok) CHECK_EQ(pix, c.expect);
  }
}

}  // namespace

TEST(pixel_rule_double) { check_pixel_rule<double>(); }
TEST(pixel_rule_float) { check_pixel_rule<float>(); }

TEST(depth_rules) {
  UnitCam<double> cam;
  int64_t pix;
  double z;
  // Behind, at, barely in front of the camera plane; non-finite depths; non-finite x/y/z.
  CHECK(!project(cam.E, cam.K, 0.5, 0.5, -1.0, 4, 4, &pix));
  CHECK(!project(cam.E, cam.K, 0.0, 0.0, 0.0, 4, 4, &pix));
  CHECK(!project(cam.E, cam.K, 0.0, 0.0, -0.0, 4, 4, &pix));
  CHECK(project(cam.E, cam.K, 0.0, 0.0, 1e-300, 4, 4, &pix, &z));
  CHECK_EQ(z, 1e-300);
  CHECK(!project(cam.E, cam.K, 0.5, 0.5, kInf, 4, 4, &pix));
  CHECK(!project(cam.E, cam.K, 0.5, 0.5, -kInf, 4, 4, &pix));
  CHECK(!project(cam.E, cam.K, 0.5, 0.5, kNaN, 4, 4, &pix));
  CHECK(!project(cam.E, cam.K, kInf, 0.5, 1.0, 4, 4, &pix));
  CHECK(!project(cam.E, cam.K, 0.5, kNaN, 1.0, 4, 4, &pix));
  // A non-finite coordinate with a zero weight in R[2] still poisons z (0 * inf = NaN).
  CHECK(!project(cam.E, cam.K, kInf, 0.0, 1.0, 4, 4, &pix));
  CHECK(project(cam.E, cam.K, 1.5, 2.5, 2.0, 8, 8, &pix, &z));
  CHECK_EQ(z, 2.0);
  CHECK_EQ(pix, int64_t(1 * 8 + 0));  // (0.75, 1.25)

  UnitCam<float> camf;
  float zf;
  CHECK(!project(camf.E, camf.K, 0.0, 0.0, 0.0, 4, 4, &pix));
  CHECK(!project(camf.E, camf.K, 0.0, 0.0, -1e-30, 4, 4, &pix));
  CHECK(project(camf.E, camf.K, 0.0, 0.0, 1e-30, 4, 4, &pix, &zf));
  CHECK_EQ(zf, 1e-30f);
  CHECK(!project(camf.E, camf.K, 0.5, 0.5, kNaN, 4, 4, &pix));
}

TEST(projection_of_general_cameras) {
  // Random cameras and points: the pixel is floor of the pinhole projection, the depth is R[2].p+t.
  vt::Rng rng(11);
  int kept = 0, dropped = 0;
  for (int i = 0; i < 5000; ++i) {
    const Mat3 R = vt::random_rotation(rng);
    const Vec3 C = {rng.normal(), rng.normal(), rng.normal()};
    const auto E = vt::extrinsic(R, C);
    const int64_t H = rng.integer(1, 40), W = rng.integer(1, 40);
    const double fx = rng.uniform(0.5, 2) * W, fy = rng.uniform(0.5, 2) * H;
    // General first two rows (skew and a nonzero K10); the last row is never read.
    const double K[9] = {fx, rng.uniform(-0.1, 0.1) * fx, W / 2.0, rng.uniform(-0.1, 0.1) * fy,
                         fy, H / 2.0, rng.normal(), rng.normal(), rng.normal()};
    // Half the points anywhere around the camera, half inside (or just around) its frustum.
    Vec3 p = {C[0] + 3 * rng.normal(), C[1] + 3 * rng.normal(), C[2] + 3 * rng.normal()};
    if (i % 2) {
      const double zc = rng.uniform(0.1, 5);
      const double xc = rng.uniform(-0.6, 0.6) * zc, yc = rng.uniform(-0.6, 0.6) * zc;
      for (int a = 0; a < 3; ++a)
        p[a] = C[a] + R[0 * 3 + a] * xc + R[1 * 3 + a] * yc + R[2 * 3 + a] * zc;  // C + R^T pc
    }
    // Independent projection: camera frame, then pinhole.
    double pc[3];
    for (int a = 0; a < 3; ++a) pc[a] = R[a * 3] * (p[0] - C[0]) + R[a * 3 + 1] * (p[1] - C[1]) +
                                         R[a * 3 + 2] * (p[2] - C[2]);
    const double u = K[0] * pc[0] / pc[2] + K[1] * pc[1] / pc[2] + K[2];
    const double v = K[3] * pc[0] / pc[2] + K[4] * pc[1] / pc[2] + K[5];
    // Stay clear of pixel borders, where the two roundings could disagree.
    const double margin = 1e-9 * (1 + std::fabs(u) + std::fabs(v));
    if (std::fabs(u - std::round(u)) < margin || std::fabs(v - std::round(v)) < margin) continue;
    const bool expect = pc[2] > 0 && u >= 0 && u < W && v >= 0 && v < H;
    double z;
    int64_t pix;
    const bool ok = vggrpo::project_to_pixel(E.data(), K, p.data(), H, W, &z, &pix);
    CHECK_EQ(ok, expect);
    CHECK_NEAR(vggrpo::camera_z(E.data(), p.data()), pc[2], 1e-12 * (1 + vt::norm(p)));
    if (ok && expect) {
      ++kept;
      CHECK_EQ(pix, int64_t(std::floor(v)) * W + int64_t(std::floor(u)));
      CHECK_EQ(z, vggrpo::camera_z(E.data(), p.data()));  // bitwise: the same function
    } else {
      ++dropped;
    }
  }
  CHECK(kept > 500);
  CHECK(dropped > 500);
}

TEST(camera_center_is_minus_RT_t) {
  vt::Rng rng(12);
  for (int i = 0; i < 500; ++i) {
    const Mat3 R = vt::random_rotation(rng);
    const Vec3 C = {rng.normal(), rng.normal(), rng.normal()};
    const auto E = vt::extrinsic(R, C);
    double c[3];
    vggrpo::camera_center(E.data(), c);
    for (int a = 0; a < 3; ++a) CHECK_NEAR(c[a], C[a], 1e-14 * (1 + vt::norm(C)));
    // Off SO(3) too: literally -R^T t.
    double Eg[12];
    for (double& x : Eg) x = rng.normal();
    vggrpo::camera_center(Eg, c);
    for (int j = 0; j < 3; ++j) {
      const double expect =
          -(Eg[0 * 4 + j] * Eg[3] + Eg[1 * 4 + j] * Eg[7] + Eg[2 * 4 + j] * Eg[11]);
      CHECK_NEAR(c[j], expect, 1e-14 * 10);
    }
    // The centre is on the camera plane.
    CHECK_NEAR(vggrpo::camera_z(E.data(), C.data()), 0.0, 1e-13 * (1 + vt::norm(C)));
  }
}

TEST(relative_rotation_is_R0_R1T) {
  vt::Rng rng(13);
  for (int i = 0; i < 200; ++i) {
    const Mat3 R0 = vt::random_rotation(rng), R1 = vt::random_rotation(rng);
    const auto E0 = vt::extrinsic(R0, {1, 2, 3});
    const auto E1 = vt::extrinsic(R1, {-1, 0, 2});
    double rel[9];
    vggrpo::relative_rotation(E0.data(), E1.data(), rel);
    // R_wc[0]^T R_wc[1] with R_wc = R^T is R0 R1^T.
    const Mat3 expect = vt::matmul(vt::transpose(vt::transpose(R0)), vt::transpose(R1));
    for (int k = 0; k < 9; ++k) CHECK_NEAR(rel[k], expect[k], 1e-15 * 8);
  }
}

namespace {

// grad_E += J^T g: every VJP here accumulates. Start from a nonzero buffer and subtract it.
void check_accumulates_fd(const char* what, const std::vector<double>& x0, size_t n_out,
                          const std::function<std::vector<double>(const std::vector<double>&)>& f,
                          const std::function<void(const std::vector<double>&,
                                                   const std::vector<double>&, double*)>& vjp,
                          vt::Rng& rng) {
  std::vector<double> g(n_out);
  for (double& x : g) x = rng.normal();
  std::vector<double> acc(x0.size()), base(x0.size());
  for (size_t i = 0; i < acc.size(); ++i) base[i] = acc[i] = rng.normal();
  vjp(x0, g, acc.data());
  const auto fd = vt::numeric_grad(
      x0,
      [&](const std::vector<double>& x) {
        const auto y = f(x);
        double s = 0;
        for (size_t i = 0; i < n_out; ++i) s += g[i] * y[i];
        return s;
      },
      1e-6);
  const double scale = 1 + vt::max_abs(fd);
  for (size_t i = 0; i < x0.size(); ++i)
    CHECK_NEAR_MSG(acc[i] - base[i], fd[i], 1e-8 * scale, what << " entry " << i);
}

std::vector<double> random_E(vt::Rng& rng, bool on_so3) {
  std::vector<double> E(12);
  if (on_so3) {
    const vt::Vec3 C = {rng.normal(), rng.normal(), rng.normal()};
    const auto e = vt::extrinsic(vt::random_rotation(rng), C);
    E.assign(e.begin(), e.end());
  } else {
    for (double& x : E) x = rng.normal();
  }
  return E;
}

}  // namespace

TEST(camera_center_vjp_matches_fd) {
  vt::Rng rng(14);
  for (int i = 0; i < 100; ++i) {
    check_accumulates_fd(
        "camera_center", random_E(rng, i % 2 == 0), 3,
        [](const std::vector<double>& E) {
          std::vector<double> C(3);
          vggrpo::camera_center(E.data(), C.data());
          return C;
        },
        [](const std::vector<double>& E, const std::vector<double>& g, double* acc) {
          vggrpo::camera_center_vjp(E.data(), g.data(), acc);
        },
        rng);
  }
}

TEST(relative_rotation_vjp_matches_fd) {
  vt::Rng rng(15);
  for (int i = 0; i < 100; ++i) {
    std::vector<double> x = random_E(rng, i % 2 == 0);
    const std::vector<double> E1 = random_E(rng, i % 2 == 0);
    x.insert(x.end(), E1.begin(), E1.end());  // x = [E0, E1]
    check_accumulates_fd(
        "relative_rotation", x, 9,
        [](const std::vector<double>& E) {
          std::vector<double> rel(9);
          vggrpo::relative_rotation(E.data(), E.data() + 12, rel.data());
          return rel;
        },
        [](const std::vector<double>& E, const std::vector<double>& g, double* acc) {
          vggrpo::relative_rotation_vjp(E.data(), E.data() + 12, g.data(), acc, acc + 12);
        },
        rng);
  }
}

TEST(camera_z_vjp_matches_fd) {
  vt::Rng rng(16);
  for (int i = 0; i < 100; ++i) {
    std::vector<double> x = random_E(rng, i % 2 == 0);
    for (int k = 0; k < 3; ++k) x.push_back(3 * rng.normal());  // x = [E, p]
    check_accumulates_fd(
        "camera_z", x, 1,
        [](const std::vector<double>& v) {
          return std::vector<double>{vggrpo::camera_z(v.data(), v.data() + 12)};
        },
        [](const std::vector<double>& v, const std::vector<double>& g, double* acc) {
          vggrpo::camera_z_vjp(v.data(), v.data() + 12, g[0], acc + 12, acc);
        },
        rng);
  }
  // Null outputs are skipped; only row 2 of E receives a gradient.
  const double E[12] = {1, 2, 3, 4, 5, 6, 7, 8, 0.5, -0.25, 2, 3};
  const double p[3] = {1, -2, 4};
  double gp[3] = {0, 0, 0}, gE[12] = {0};
  vggrpo::camera_z_vjp(E, p, 2.0, gp, static_cast<double*>(nullptr));
  CHECK_EQ(gp[0], 1.0);
  CHECK_EQ(gp[1], -0.5);
  CHECK_EQ(gp[2], 4.0);
  vggrpo::camera_z_vjp(E, p, 2.0, static_cast<double*>(nullptr), gE);
  const double expect[12] = {0, 0, 0, 0, 0, 0, 0, 0, 2, -4, 8, 2};
  for (int k = 0; k < 12; ++k) CHECK_EQ(gE[k], expect[k]);
}
