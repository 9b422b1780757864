// Unit tests of the torch-free CPU kernels (csrc/kernels/*_cpu.cpp) against docs/ops.md:
// splat_depth equals a brute-force z-buffer, is identical for 1 and 2 threads and for any point
// order; static_points / view_depth_error / worst_k_mean equal direct evaluations;
// reprojection_errors equals static_points + splat_depth + view_depth_error composed; the
// backward kernels equal central differences where no winner changes, and the fused backward
// equals the composed one.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <utility>
#include <vector>

#include "check.h"
#include "kernels.h"
#include "test_util.h"
#include "vggrpo/so3.h"

using vggrpo::kernels::ViewGrid;
namespace kn = vggrpo::kernels;

namespace {

// int64_t -> size_t for indexing (a function, so `std::vector<T> x(sz(n))` declares a vector).
inline size_t sz(int64_t x) { return static_cast<size_t>(x); }

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Cameras near the origin looking roughly along +z, centred pinhole intrinsics.
struct Cameras {
  std::vector<double> E;  // [B, V, 12]
  std::vector<double> K;  // [B, V, 9]
};

Cameras make_cameras(vt::Rng& rng, int64_t B, int64_t V, int64_t H, int64_t W) {
  Cameras c;
  vt::append_random_cameras(rng, B * V, H, W, &c.E, &c.K);
  return c;
}

// The pinhole projection of docs/ops.md, written independently (long double). Returns false
// when not projectable; sets the pixel and how close (u, v) is to a pixel border.
bool project_ref(const double* E, const double* K, const double* p, int64_t H, int64_t W,
                 int64_t* pixel, long double* border) {
  long double pc[3];
  for (int i = 0; i < 3; ++i) {
    pc[i] = (long double)E[i * 4] * p[0] + (long double)E[i * 4 + 1] * p[1] +
            (long double)E[i * 4 + 2] * p[2] + E[i * 4 + 3];
  }
  if (!std::isfinite(p[0]) || !std::isfinite(p[1]) || !std::isfinite(p[2])) return false;
  if (!(pc[2] > 0)) return false;
  const long double u = K[0] * pc[0] / pc[2] + K[1] * pc[1] / pc[2] + K[2];
  const long double v = K[3] * pc[0] / pc[2] + K[4] * pc[1] / pc[2] + K[5];
  *border = std::min(std::fabs(u - std::round(u)), std::fabs(v - std::round(v)));
  if (!(u >= 0 && u < W && v >= 0 && v < H)) return false;
  *pixel = int64_t(std::floor(v)) * W + int64_t(std::floor(u));
  return true;
}

// A point cloud in front of the cameras (x/z in [-0.7, 0.2], y/z in [-0.7, 0.7], z in [2, 6]: the
// right part of every image stays empty), some behind,
// some non-finite, some exact duplicates (equal depths: ties to the smaller index). Points whose
// projection is within `margin` of a pixel border in any view are redrawn, so that the test's
// projection and the kernel's cannot round to different pixels.
std::vector<double> make_cloud(vt::Rng& rng, const Cameras& cams, int64_t B, int64_t V, int64_t N,
                               int64_t H, int64_t W, double margin, bool duplicates) {
  std::vector<double> pts(sz(3 * B * N));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t n = 0; n < N; ++n) {
      double* p = &pts[sz(3 * (b * N + n))];
      if (duplicates && n > 0 && rng.uniform() < 0.05) {
        const int64_t m = rng.integer(0, n - 1);
        std::memcpy(p, &pts[sz(3 * (b * N + m))], 3 * sizeof(double));
        continue;
      }
      const double r = rng.uniform();
      if (r < 0.02) {
        p[0] = 1;
        p[1] = rng.uniform() < 0.5 ? kNaN : kInf;
        p[2] = 3;
        continue;
      }
      for (int attempt = 0;; ++attempt) {
        const double z = r < 0.07 ? -rng.uniform(0.5, 3) : rng.uniform(2, 6);
        // Float32-representable coordinates: the same cloud for both dtypes.
        p[0] = double(float(rng.uniform(-0.7, 0.2) * std::fabs(z)));
        p[1] = double(float(rng.uniform(-0.7, 0.7) * std::fabs(z)));
        p[2] = double(float(z));
        bool ok = true;
        for (int64_t v = 0; v < V && ok; ++v) {
          int64_t pix;
          long double border = 1;
          project_ref(&cams.E[sz(12 * (b * V + v))], &cams.K[sz(9 * (b * V + v))], p, H,
                      W, &pix, &border);
          ok = border > margin;
        }
        if (ok) break;
      }
    }
  }
  return pts;
}

// Brute-force z-buffer: for every pixel, the smallest (float32(z), n) over valid projectable
// points, z = R[2].p + t[2] in the input dtype. `tied` marks pixels whose winning float32 depth
// was shared by another candidate.
template <typename T>
void brute_force_splat(const std::vector<T>& pts, const std::vector<uint8_t>& valid,
                       const Cameras& cams, int64_t B, int64_t V, int64_t N, int64_t H, int64_t W,
                       std::vector<T>* depth, std::vector<int64_t>* winner,
                       std::vector<uint8_t>* tied) {
  const int64_t P = H * W;
  depth->assign(sz(B * V * P), T(0));
  winner->assign(sz(B * V * P), -1);
  tied->assign(sz(B * V * P), 0);
  std::vector<float> best(sz(P));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t v = 0; v < V; ++v) {
      const int64_t bv = b * V + v;
      const double* Ed = &cams.E[sz(12 * bv)];
      std::vector<T> Et(Ed, Ed + 12);
      for (int64_t n = 0; n < N; ++n) {
        if (!valid.empty() && !valid[sz(b * N + n)]) continue;
        const T* p = &pts[sz(3 * (b * N + n))];
        const double pd[3] = {double(p[0]), double(p[1]), double(p[2])};
        int64_t pix;
        long double border;
        // Project the T-typed cameras and point (as the kernel sees them).
        std::vector<double> Er(Et.begin(), Et.end());
        std::vector<double> Kr(9);
        for (int i = 0; i < 9; ++i) Kr[i] = double(static_cast<T>(cams.K[sz(9 * bv + i)]));
        if (!project_ref(Er.data(), Kr.data(), pd, H, W, &pix, &border)) continue;
        const T z = Et[8] * p[0] + Et[9] * p[1] + Et[10] * p[2] + Et[11];
        const float zf = static_cast<float>(z);
        const size_t o = sz(bv * P + pix);
        int64_t& w = (*winner)[o];
        if (w < 0 || zf < best[sz(pix)]) {
          w = n;
          best[sz(pix)] = zf;
          (*depth)[o] = z;
          (*tied)[o] = 0;
        } else if (zf == best[sz(pix)]) {
          (*tied)[o] = 1;  // n > w: the smaller index keeps the pixel
        }
      }
    }
  }
}

template <typename T>
std::vector<T> as(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

// bool arrays for the kernels (std::vector<bool> has no data()).
struct BoolBuf {
  std::unique_ptr<bool[]> p;
  explicit BoolBuf(const std::vector<uint8_t>& v) : p(new bool[v.size() + 1]) {
    for (size_t i = 0; i < v.size(); ++i) p[i] = v[i] != 0;
  }
};

template <typename T>
void run_splat(const std::vector<T>& pts, const std::vector<uint8_t>& valid,
               const std::vector<T>& E, const std::vector<T>& K, int64_t N, ViewGrid g, int threads,
               std::vector<T>* depth, std::vector<int64_t>* winner) {
  depth->assign(sz(g.B * g.V * g.pixels()), T(-99));
  winner->assign(sz(g.B * g.V * g.pixels()), -99);
  BoolBuf vb(valid);
  kn::splat_depth_cpu(pts.data(), valid.empty() ? nullptr : vb.p.get(), E.data(), K.data(), N, g,
                      depth->data(), winner->data(), threads);
}

template <typename T>
void check_splat_brute_force(double margin) {
  vt::Rng rng(51);
  const int64_t B = 2, V = 3, H = 12, W = 16, N = 3000;
  const ViewGrid g{B, V, H, W};
  const Cameras cams = make_cameras(rng, B, V, H, W);
  const std::vector<T> pts = as<T>(make_cloud(rng, cams, B, V, N, H, W, margin, true));
  std::vector<uint8_t> valid(sz(B * N));
  for (auto& x : valid) x = rng.uniform() < 0.85;
  const std::vector<T> E = as<T>(cams.E), K = as<T>(cams.K);

  for (const bool use_valid : {true, false}) {
    const std::vector<uint8_t> vv = use_valid ? valid : std::vector<uint8_t>();
    std::vector<T> bd, d1, d2;
    std::vector<int64_t> bw, w1, w2;
    std::vector<uint8_t> tied;
    brute_force_splat(pts, vv, cams, B, V, N, H, W, &bd, &bw, &tied);
    run_splat(pts, vv, E, K, N, g, 1, &d1, &w1);
    run_splat(pts, vv, E, K, N, g, 2, &d2, &w2);
    int64_t mismatches = 0, filled = 0, ties = 0;
    for (size_t i = 0; i < bd.size(); ++i) {
      filled += bw[i] >= 0;
      ties += tied[i];
      if (w1[i] != bw[i] || !(d1[i] == bd[i])) {
        if (++mismatches <= 5)
          CHECK_MSG(false, "pixel " << i << ": winner " << w1[i] << " depth " << double(d1[i])
                                    << " expected " << bw[i] << " " << double(bd[i]));
      }
    }
    CHECK_EQ(mismatches, int64_t(0));
    CHECK(filled > int64_t(bd.size()) / 2);  // the test exercises a mostly covered image...
    CHECK(filled < int64_t(bd.size()));      // ...with some empty pixels
    if (use_valid) CHECK(ties > 0);          // and duplicate-depth ties
    // Bitwise identical with 2 threads.
    CHECK(w1 == w2);
    CHECK(std::memcmp(d1.data(), d2.data(), d1.size() * sizeof(T)) == 0);
  }
}

}  // namespace

TEST(splat_depth_equals_brute_force_double) { check_splat_brute_force<double>(1e-9); }
TEST(splat_depth_equals_brute_force_float) { check_splat_brute_force<float>(1e-4); }

TEST(splat_depth_float64_ties_at_float32_resolution) {
  // One pixel, two points closer than float32's resolution: a tie, the smaller index wins even
  // though it is farther in float64, and its depth is re-read exactly in float64.
  const double E[12] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0};
  const double K[9] = {1, 0, 0.5, 0, 1, 0.5, 0, 0, 1};
  const double pts[6] = {0, 0, 2.0 + 1e-12, 0, 0, 2.0};
  double depth = -1;
  int64_t winner = -2;
  kn::splat_depth_cpu(pts, static_cast<const bool*>(nullptr), E, K, 2, ViewGrid{1, 1, 1, 1},
                      &depth, &winner, 1);
  CHECK_EQ(winner, int64_t(0));
  CHECK_EQ(depth, 2.0 + 1e-12);
  // Resolvable in float32: the nearer one wins.
  const double pts2[6] = {0, 0, 2.0 + 1e-3, 0, 0, 2.0};
  kn::splat_depth_cpu(pts2, static_cast<const bool*>(nullptr), E, K, 2, ViewGrid{1, 1, 1, 1},
                      &depth, &winner, 1);
  CHECK_EQ(winner, int64_t(1));
  CHECK_EQ(depth, 2.0);
  // Empty image: winner -1, depth 0.
  const double behind[3] = {0, 0, -1};
  kn::splat_depth_cpu(behind, static_cast<const bool*>(nullptr), E, K, 1, ViewGrid{1, 1, 1, 1},
                      &depth, &winner, 1);
  CHECK_EQ(winner, int64_t(-1));
  CHECK_EQ(depth, 0.0);
}

namespace {

template <typename T>
void check_splat_order_independent(double margin) {
  vt::Rng rng(52);
  const int64_t B = 2, V = 3, H = 10, W = 14, N = 2500;
  const ViewGrid g{B, V, H, W};
  const Cameras cams = make_cameras(rng, B, V, H, W);
  const std::vector<T> pts = as<T>(make_cloud(rng, cams, B, V, N, H, W, margin, false));
  std::vector<uint8_t> valid(sz(B * N));
  for (auto& x : valid) x = rng.uniform() < 0.9;
  const std::vector<T> E = as<T>(cams.E), K = as<T>(cams.K);

  // perm[j] = old index of new point j (the same permutation for every video).
  std::vector<int64_t> perm(sz(N));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng.gen);
  std::vector<T> spts(pts.size());
  std::vector<uint8_t> svalid(valid.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < N; ++j) {
      for (int k = 0; k < 3; ++k)
        spts[sz(3 * (b * N + j) + k)] = pts[sz(3 * (b * N + perm[sz(j)]) + k)];
      svalid[sz(b * N + j)] = valid[sz(b * N + perm[j])];
    }
  std::vector<T> d, sd, bd;
  std::vector<int64_t> w, sw, bw;
  std::vector<uint8_t> tied;
  brute_force_splat(pts, valid, cams, B, V, N, H, W, &bd, &bw, &tied);
  for (int threads : {1, 2}) {
    run_splat(pts, valid, E, K, N, g, threads, &d, &w);
    run_splat(spts, svalid, E, K, N, g, threads, &sd, &sw);
    int64_t compared = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      if (tied[i]) continue;  // equal float32 depths: the index decides, and indices moved
      ++compared;
      const int64_t remapped = sw[i] < 0 ? -1 : perm[sz(sw[i])];
      CHECK_EQ(remapped, w[i]);
      CHECK_EQ(sd[i], d[i]);
    }
    CHECK(compared > int64_t(w.size()) * 9 / 10);
  }
}

}  // namespace

TEST(splat_depth_independent_of_point_order_double) { check_splat_order_independent<double>(1e-9); }
TEST(splat_depth_independent_of_point_order_float) { check_splat_order_independent<float>(1e-4); }

// ---- static_points, view_depth_error, worst_k_mean ---------------------------------------------

TEST(static_points_cpu_masks) {
  vt::Rng rng(53);
  const int64_t B = 3, N = 4000;
  std::vector<double> pm(sz(3 * B * N)), fl(sz(3 * B * N));
  for (auto& x : pm) x = rng.uniform() < 0.01 ? kNaN : rng.normal();
  for (auto& x : fl) x = rng.uniform() < 0.01 ? kInf : 0.08 * rng.normal();
  const double thr = 0.1;
  for (int threads : {1, 2}) {
    for (const bool with_flow : {true, false}) {
      std::vector<double> out(pm.size(), 7.0);
      BoolBuf valid(std::vector<uint8_t>(sz(B * N), 2));
      kn::static_points_cpu(pm.data(), with_flow ? fl.data() : nullptr, thr, B, N, out.data(),
                            valid.p.get(), threads);
      int64_t kept = 0, dropped = 0;
      for (int64_t i = 0; i < B * N; ++i) {
        const double* p = &pm[sz(3 * i)];
        const double* f = &fl[sz(3 * i)];
        bool expect = std::isfinite(p[0]) && std::isfinite(p[1]) && std::isfinite(p[2]);
        if (with_flow)
          expect = expect && std::isfinite(f[0]) && std::isfinite(f[1]) && std::isfinite(f[2]) &&
                   std::sqrt(f[0] * f[0] + f[1] * f[1] + f[2] * f[2]) <= thr;
        CHECK_EQ(valid.p[sz(i)], expect);
        (expect ? kept : dropped)++;
        for (int k = 0; k < 3; ++k) CHECK_EQ(out[sz(3 * i + k)], expect ? p[k] : 0.0);
      }
      CHECK(kept > 100);
      CHECK(dropped > 100);
    }
  }
}

TEST(view_depth_error_cpu_direct) {
  vt::Rng rng(54);
  const int64_t B = 2, V = 5, H = 30, W = 40, P = H * W;
  const ViewGrid g{B, V, H, W};
  std::vector<double> r(sz(B * V * P)), d(sz(B * V * P));
  for (size_t i = 0; i < r.size(); ++i) {
    const double a = rng.uniform();
    r[i] = a < 0.2 ? 0.0 : a < 0.22 ? kNaN : a < 0.24 ? -1.0 : rng.uniform(1, 5);
    const double c = rng.uniform();
    d[i] = c < 0.1 ? 0.0 : c < 0.12 ? kInf : rng.uniform(1, 5);
  }
  // View 1 of video 0 has no counted pixel.
  for (int64_t i = 0; i < P; ++i) r[sz(1 * P + i)] = 0.0;
  std::vector<uint8_t> keep(sz(B * V * P));
  for (auto& k : keep) k = rng.uniform() < 0.7;
  const BoolBuf keep_buf(keep);
  for (int threads : {1, 2})
  for (const bool masked : {false, true}) {
    const bool* mask = masked ? keep_buf.p.get() : nullptr;
    std::vector<double> err(sz(B * V), -1), errf(sz(B * V));
    std::vector<int64_t> count(sz(B * V), -1), countf(sz(B * V));
    kn::view_depth_error_cpu(r.data(), d.data(), mask, g, err.data(), count.data(), threads);
    std::vector<float> rf = as<float>(r), df = as<float>(d), ef(sz(B * V));
    kn::view_depth_error_cpu(rf.data(), df.data(), mask, g, ef.data(), countf.data(), threads);
    for (int64_t bv = 0; bv < B * V; ++bv) {
      long double sum = 0;
      int64_t n = 0;
      for (int64_t i = 0; i < P; ++i) {
        const double a = r[sz(bv * P + i)], b = d[sz(bv * P + i)];
        if (masked && !keep[sz(bv * P + i)]) continue;
        if (std::isfinite(a) && a > 0 && std::isfinite(b) && b > 0) {
          sum += std::fabs((long double)a - b);
          ++n;
        }
      }
      CHECK_EQ(count[sz(bv)], n);
      CHECK_EQ(countf[sz(bv)], n);
      const double expect = n > 0 ? double(sum / n) : 0.0;
      CHECK_NEAR(err[sz(bv)], expect, 1e-14);
      CHECK_NEAR(ef[sz(bv)], expect, 4e-6);
    }
    CHECK_EQ(count[1], int64_t(0));
    CHECK_EQ(err[1], 0.0);
  }
}

namespace {

double worst_k_ref(const double* e, const int64_t* c, int64_t V, int64_t k) {
  std::vector<int64_t> views;
  for (int64_t v = 0; v < V; ++v)
    if (c[v] > 0) views.push_back(v);
  std::stable_sort(views.begin(), views.end(), [&](int64_t a, int64_t b) {
    const bool na = std::isnan(e[a]), nb = std::isnan(e[b]);
    if (na || nb) return na && !nb;
    return e[a] > e[b];
  });
  const size_t m = std::min(views.size(), sz(k));
  if (m == 0) return 0.0;
  double s = 0;
  for (size_t i = 0; i < m; ++i) s += e[views[i]];
  return s / double(m);
}

}  // namespace

TEST(worst_k_mean_cpu_and_backward) {
  vt::Rng rng(55);
  const int64_t B = 400, V = 6;
  std::vector<double> err(sz(B * V));
  std::vector<int64_t> count(sz(B * V));
  for (size_t i = 0; i < err.size(); ++i) {
    err[i] = rng.uniform(0, 2);  // distinct: the selection is stable under small steps
    count[i] = rng.uniform() < 0.3 ? 0 : rng.integer(1, 50);
  }
  for (int64_t v = 0; v < V; ++v) count[sz(v)] = 0;  // video 0: no view counted
  for (int threads : {1, 2}) {
    for (int64_t k : {int64_t(1), int64_t(3), int64_t(10)}) {
      std::vector<double> out(sz(B)), grad(sz(B)), gerr(err.size(), 9.0);
      for (auto& x : grad) x = rng.normal();
      kn::worst_k_mean_cpu(err.data(), count.data(), B, V, k, out.data(), threads);
      kn::worst_k_mean_backward_cpu(grad.data(), err.data(), count.data(), B, V, k, gerr.data(),
                                    threads);
      for (int64_t b = 0; b < B; ++b) {
        const double* e = &err[sz(b * V)];
        const int64_t* c = &count[sz(b * V)];
        CHECK_NEAR(out[sz(b)], worst_k_ref(e, c, V, k), 1e-15);
        // Central differences of grad * worst_k_mean w.r.t. each error.
        std::vector<double> ev(e, e + V);
        for (int64_t v = 0; v < V; ++v) {
          const double h = 1e-7, x0 = ev[sz(v)];
          ev[sz(v)] = x0 + h;
          const double fp = worst_k_ref(ev.data(), c, V, k);
          ev[sz(v)] = x0 - h;
          const double fm = worst_k_ref(ev.data(), c, V, k);
          ev[sz(v)] = x0;
          CHECK_NEAR(gerr[sz(b * V + v)], grad[sz(b)] * (fp - fm) / (2 * h), 1e-6);
        }
      }
      CHECK_EQ(out[0], 0.0);
      for (int64_t v = 0; v < V; ++v) CHECK_EQ(gerr[sz(v)], 0.0);
    }
  }
}

TEST(worst_k_mean_nan_ranks_first) {
  const double err[4] = {1.0, kNaN, 3.0, 2.0};
  const int64_t count[4] = {1, 1, 1, 1};
  double out;
  kn::worst_k_mean_cpu(err, count, 1, 4, 1, &out, 1);
  CHECK(std::isnan(out));
  const int64_t count2[4] = {1, 0, 1, 1};
  kn::worst_k_mean_cpu(err, count2, 1, 4, 2, &out, 1);
  CHECK_EQ(out, 2.5);
  double g = 1.0, gerr[4];
  kn::worst_k_mean_backward_cpu(&g, err, count2, 1, 4, 2, gerr, 1);
  CHECK_EQ(gerr[0], 0.0);
  CHECK_EQ(gerr[1], 0.0);
  CHECK_EQ(gerr[2], 0.5);
  CHECK_EQ(gerr[3], 0.5);
}

// ---- reprojection_errors -----------------------------------------------------------------------

namespace {

struct Scene {
  int64_t B, V, H, W;
  Cameras cams;
  std::vector<double> pointmaps;  // [B, V*H*W, 3]
  std::vector<double> depths;     // [B, V, H, W]
  std::vector<double> flow;       // [B, V*H*W, 3]
};

// Each frame's pixels unprojected at a smooth depth with its own camera (plus noise), so the
// points land in the other views; predicted depths = a noisy copy, with some invalid pixels;
// flow mostly small, some above threshold, some non-finite; a few non-finite points.
Scene make_scene(vt::Rng& rng, int64_t B, int64_t V, int64_t H, int64_t W, double noise) {
  Scene s{B, V, H, W, make_cameras(rng, B, V, H, W), {}, {}, {}};
  const int64_t P = H * W, N = V * P;
  s.pointmaps.resize(sz(3 * B * N));
  s.depths.resize(sz(B * V * P));
  s.flow.resize(sz(3 * B * N));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t v = 0; v < V; ++v) {
      const double* E = &s.cams.E[sz(12 * (b * V + v))];
      const double* K = &s.cams.K[sz(9 * (b * V + v))];
      for (int64_t y = 0; y < H; ++y) {
        for (int64_t x = 0; x < W; ++x) {
          const int64_t pix = y * W + x;
          const double z = 3 + std::sin(0.3 * x) + 0.5 * std::cos(0.2 * y) + noise * rng.normal();
          const double xn = (x + rng.uniform(0.1, 0.9) - K[2]) / K[0];
          const double yn = (y + rng.uniform(0.1, 0.9) - K[5]) / K[4];
          const double pc[3] = {xn * z, yn * z, z};
          double* p = &s.pointmaps[sz(3 * (b * N + v * P + pix))];
          for (int j = 0; j < 3; ++j) {  // p = R^T (pc - t)
            p[j] = 0;
            for (int i = 0; i < 3; ++i) p[j] += E[i * 4 + j] * (pc[i] - E[i * 4 + 3]);
          }
          if (rng.uniform() < 0.01) p[rng.integer(0, 2)] = kNaN;
          const double a = rng.uniform();
          double* f = &s.flow[sz(3 * (b * N + v * P + pix))];
          for (int j = 0; j < 3; ++j) f[j] = 0.03 * rng.normal();
          if (a < 0.1) f[0] = 0.5;
          if (a > 0.99) f[1] = kNaN;
          const double c = rng.uniform();
          s.depths[sz((b * V + v) * P + pix)] =
              c < 0.05 ? 0.0 : c < 0.07 ? kNaN : z + 0.05 * rng.normal();
        }
      }
    }
  }
  return s;
}

template <typename T>
struct Composed {
  std::vector<T> points, rendered, err;
  std::vector<uint8_t> valid;
  std::vector<int64_t> winner, count;
};

template <typename T>
Composed<T> composed_forward(const std::vector<T>& pm, const std::vector<T>& depths,
                             const std::vector<T>& E, const std::vector<T>& K, const T* flow,
                             T thr, ViewGrid g, int threads) {
  const int64_t N = g.V * g.pixels();
  Composed<T> c;
  c.points.resize(pm.size());
  BoolBuf valid(std::vector<uint8_t>(sz(g.B * N), 0));
  kn::static_points_cpu(pm.data(), flow, thr, g.B, N, c.points.data(), valid.p.get(), threads);
  c.valid.resize(sz(g.B * N));
  for (size_t i = 0; i < c.valid.size(); ++i) c.valid[i] = valid.p[i];
  c.rendered.resize(sz(g.B * g.V * g.pixels()));
  c.winner.resize(c.rendered.size());
  kn::splat_depth_cpu(c.points.data(), valid.p.get(), E.data(), K.data(), N, g, c.rendered.data(),
                      c.winner.data(), threads);
  c.err.resize(sz(g.B * g.V));
  c.count.resize(sz(g.B * g.V));
  // The target view's own static mask: [B, V*P] is laid out as [B, V, H, W].
  kn::view_depth_error_cpu(c.rendered.data(), depths.data(), valid.p.get(), g, c.err.data(),
                           c.count.data(), threads);
  return c;
}

template <typename T>
struct Fused {
  std::vector<T> err;
  std::vector<int64_t> count, winner;
  std::vector<uint8_t> mask;
};

template <typename T>
Fused<T> fused_forward(const std::vector<T>& pm, const std::vector<T>& depths,
                       const std::vector<T>& E, const std::vector<T>& K, const T* flow, T thr,
                       ViewGrid g, int threads) {
  Fused<T> f;
  f.err.assign(sz(g.B * g.V), T(-5));
  f.count.assign(sz(g.B * g.V), -5);
  f.winner.assign(sz(g.B * g.V * g.pixels()), -5);
  BoolBuf mask(std::vector<uint8_t>(sz(g.B * g.V * g.pixels()), 1));
  kn::reprojection_errors_cpu(pm.data(), depths.data(), E.data(), K.data(), flow, thr, g,
                              f.err.data(), f.count.data(), f.winner.data(), mask.p.get(),
                              threads);
  f.mask.assign(mask.p.get(), mask.p.get() + g.B * g.V * g.pixels());
  return f;
}

template <typename T>
void check_fused_equals_composed() {
  vt::Rng rng(56);
  const int64_t B = 2, V = 4, H = 12, W = 16;
  const ViewGrid g{B, V, H, W};
  const Scene s = make_scene(rng, B, V, H, W, 0.05);
  const std::vector<T> pm = as<T>(s.pointmaps), dep = as<T>(s.depths), E = as<T>(s.cams.E),
                       K = as<T>(s.cams.K), fl = as<T>(s.flow);
  const T thr = T(0.1);
  for (int threads : {1, 2}) {
    for (const bool with_flow : {true, false}) {
      const T* flow = with_flow ? fl.data() : nullptr;
      const Composed<T> c = composed_forward(pm, dep, E, K, flow, thr, g, threads);
      const Fused<T> f = fused_forward(pm, dep, E, K, flow, thr, g, threads);
      CHECK(f.winner == c.winner);
      CHECK(f.count == c.count);
      for (size_t i = 0; i < c.err.size(); ++i) CHECK_EQ(f.err[i], c.err[i]);
      int64_t counted = 0;
      for (int64_t n : c.count) counted += n;
      CHECK(counted > B * V * H * W / 4);  // views see each other
      // The mask is the static mask.
      for (size_t i = 0; i < c.valid.size(); ++i) CHECK_EQ(f.mask[i] != 0, c.valid[i] != 0);
    }
  }
  // Bitwise identical across thread counts.
  const Fused<T> f1 = fused_forward(pm, dep, E, K, fl.data(), thr, g, 1);
  const Fused<T> f2 = fused_forward(pm, dep, E, K, fl.data(), thr, g, 2);
  CHECK(f1.winner == f2.winner);
  CHECK(std::memcmp(f1.err.data(), f2.err.data(), f1.err.size() * sizeof(T)) == 0);
}

}  // namespace

TEST(reprojection_errors_equals_composition_double) { check_fused_equals_composed<double>(); }
TEST(reprojection_errors_equals_composition_float) { check_fused_equals_composed<float>(); }

// ---- backward kernels vs finite differences -------------------------------------------------

TEST(splat_depth_backward_matches_fd) {
  vt::Rng rng(57);
  const int64_t B = 2, V = 2, H = 4, W = 5, N = 12;
  const ViewGrid g{B, V, H, W};
  const int64_t P = H * W;
  Cameras cams = make_cameras(rng, B, V, H, W);
  std::vector<double> pts = make_cloud(rng, cams, B, V, N, H, W, 1e-3, false);
  std::vector<uint8_t> valid(sz(B * N), 1);
  std::vector<double> depth, gd(sz(B * V * P));
  std::vector<int64_t> winner;
  for (auto& x : gd) x = rng.normal();
  run_splat(pts, valid, cams.E, cams.K, N, g, 1, &depth, &winner);
  std::vector<double> gp(pts.size(), 5.0), gE(cams.E.size(), 5.0);
  kn::splat_depth_backward_cpu(gd.data(), winner.data(), pts.data(), cams.E.data(), N, g,
                               gp.data(), gE.data(), 1);
  // L = sum gd * depth; a perturbation that changes a winner is not a valid probe (skipped).
  int64_t probes = 0, skipped = 0;
  auto loss = [&](const std::vector<double>& p, const std::vector<double>& E, bool* same) {
    std::vector<double> d;
    std::vector<int64_t> w;
    run_splat(p, valid, E, cams.K, N, g, 1, &d, &w);
    *same = w == winner;
    double s = 0;
    for (size_t i = 0; i < d.size(); ++i) s += gd[i] * d[i];
    return s;
  };
  const double h = 1e-6;
  for (int which = 0; which < 2; ++which) {
    std::vector<double>& x = which == 0 ? pts : cams.E;
    const std::vector<double>& grad = which == 0 ? gp : gE;
    for (size_t i = 0; i < x.size(); ++i) {
      if (!std::isfinite(x[i])) continue;
      const double x0 = x[i];
      bool s1, s2;
      x[i] = x0 + h;
      const double fp = loss(pts, cams.E, &s1);
      x[i] = x0 - h;
      const double fm = loss(pts, cams.E, &s2);
      x[i] = x0;
      if (!s1 || !s2) {
        ++skipped;
        continue;
      }
      ++probes;
      CHECK_NEAR_MSG(grad[i], (fp - fm) / (2 * h), 1e-7,
                     (which ? "E" : "points") << " entry " << i);
    }
  }
  CHECK(probes > 80);
  CHECK(skipped < probes / 4);
  // Rows 0 and 1 of every extrinsic get nothing (only row 2 sets a depth).
  for (int64_t bv = 0; bv < B * V; ++bv)
    for (int k = 0; k < 8; ++k) CHECK_EQ(gE[sz(12 * bv + k)], 0.0);
}

TEST(view_depth_error_backward_matches_fd) {
  vt::Rng rng(58);
  const int64_t B = 2, V = 3, H = 3, W = 4, P = H * W;
  const ViewGrid g{B, V, H, W};
  std::vector<double> r(sz(B * V * P)), d(sz(B * V * P)), ge(sz(B * V));
  for (size_t i = 0; i < r.size(); ++i) {
    r[i] = rng.uniform() < 0.2 ? 0.0 : rng.uniform(1, 5);
    d[i] = rng.uniform() < 0.1 ? kNaN : rng.uniform(1, 5);
  }
  r[3] = d[3] = 2.0;  // a kink: gradient 0 on both sides
  for (auto& x : ge) x = rng.normal();
  std::vector<double> err(sz(B * V)), gr(r.size(), 9.0), gd(r.size(), 9.0);
  std::vector<int64_t> count(sz(B * V));
  kn::view_depth_error_cpu(r.data(), d.data(), nullptr, g, err.data(), count.data(), 1);
  kn::view_depth_error_backward_cpu(ge.data(), r.data(), d.data(), nullptr, count.data(), g, gr.data(),
                                    gd.data(), 1);
  auto loss = [&](const std::vector<double>& rr, const std::vector<double>& dd) {
    std::vector<double> e(sz(B * V));
    std::vector<int64_t> c(sz(B * V));
    kn::view_depth_error_cpu(rr.data(), dd.data(), nullptr, g, e.data(), c.data(), 1);
    double s = 0;
    for (size_t i = 0; i < e.size(); ++i) s += ge[i] * e[i];
    return s;
  };
  const auto fr =
      vt::numeric_grad(r, [&](const std::vector<double>& x) { return loss(x, d); }, 1e-7);
  const auto fdd =
      vt::numeric_grad(d, [&](const std::vector<double>& x) { return loss(r, x); }, 1e-7);
  for (size_t i = 0; i < r.size(); ++i) {
    if (i == 3) {
      CHECK_EQ(gr[i], 0.0);
      CHECK_EQ(gd[i], 0.0);
      continue;
    }
    const bool counted = r[i] > 0 && std::isfinite(d[i]);
    // An empty rendered pixel (0) is not valid; stepping it to +h would make it count, so the
    // central difference is not a derivative there: the documented gradient is 0.
    if (!counted) {
      CHECK_EQ(gr[i], 0.0);
      CHECK_EQ(gd[i], 0.0);
      continue;
    }
    CHECK_NEAR(gr[i], fr[i], 1e-7);
    CHECK_NEAR(gd[i], fdd[i], 1e-7);
  }
}

TEST(reprojection_errors_backward_matches_fd_and_composition) {
  vt::Rng rng(59);
  const int64_t B = 2, V = 2, H = 3, W = 4, P = H * W, N = V * P;
  const ViewGrid g{B, V, H, W};
  Scene s = make_scene(rng, B, V, H, W, 0.3);
  const double thr = 0.1;
  const Fused<double> f0 = fused_forward(s.pointmaps, s.depths, s.cams.E, s.cams.K,
                                         s.flow.data(), thr, g, 1);
  std::vector<double> ge(sz(B * V));
  for (auto& x : ge) x = rng.normal();
  std::vector<double> gp(s.pointmaps.size(), 3.0), gd(s.depths.size(), 3.0),
      gE(s.cams.E.size(), 3.0);
  const BoolBuf mask0(f0.mask);
  kn::reprojection_errors_backward_cpu(ge.data(), f0.count.data(), f0.winner.data(),
                                       mask0.p.get(), s.pointmaps.data(), s.depths.data(),
                                       s.cams.E.data(), g, gp.data(), gd.data(), gE.data(), 1);

  // Finite differences of L = sum ge * err, skipping probes that change a winner or a count.
  auto loss = [&](bool* same) {
    const Fused<double> f = fused_forward(s.pointmaps, s.depths, s.cams.E, s.cams.K,
                                          s.flow.data(), thr, g, 1);
    *same = f.winner == f0.winner && f.count == f0.count;
    double acc = 0;
    for (size_t i = 0; i < f.err.size(); ++i) acc += ge[i] * f.err[i];
    return acc;
  };
  int64_t probes = 0, skipped = 0;
  const double h = 1e-6;
  std::vector<double>* xs[3] = {&s.pointmaps, &s.depths, &s.cams.E};
  const std::vector<double>* gs[3] = {&gp, &gd, &gE};
  const char* names[3] = {"pointmaps", "depths", "extrinsics"};
  for (int which = 0; which < 3; ++which) {
    std::vector<double>& x = *xs[which];
    for (size_t i = 0; i < x.size(); ++i) {
      if (!std::isfinite(x[i]) || (which == 1 && x[i] == 0)) continue;
      const double x0 = x[i];
      bool s1, s2;
      x[i] = x0 + h;
      const double fp = loss(&s1);
      x[i] = x0 - h;
      const double fm = loss(&s2);
      x[i] = x0;
      if (!s1 || !s2) {
        ++skipped;
        continue;
      }
      ++probes;
      CHECK_NEAR_MSG((*gs[which])[i], (fp - fm) / (2 * h), 1e-7, names[which] << " entry " << i);
    }
  }
  CHECK(probes > 150);
  CHECK(skipped < probes / 4);
  // Dynamic / non-finite points get no gradient.
  for (int64_t i = 0; i < B * N; ++i)
    if (!f0.mask[sz(i)])
      for (int k = 0; k < 3; ++k) CHECK_EQ(gp[sz(3 * i + k)], 0.0);

  // The composed backward: view_depth_error -> splat_depth -> static mask.
  const Composed<double> c = composed_forward(s.pointmaps, s.depths, s.cams.E, s.cams.K,
                                              s.flow.data(), thr, g, 1);
  std::vector<double> gr(c.rendered.size()), gd2(c.rendered.size()), gp2(s.pointmaps.size()),
      gE2(s.cams.E.size());
  const BoolBuf cvalid(c.valid);
  kn::view_depth_error_backward_cpu(ge.data(), c.rendered.data(), s.depths.data(), cvalid.p.get(),
                                    c.count.data(), g, gr.data(), gd2.data(), 1);
  kn::splat_depth_backward_cpu(gr.data(), c.winner.data(), c.points.data(), s.cams.E.data(), N, g,
                               gp2.data(), gE2.data(), 1);
  for (size_t i = 0; i < c.valid.size(); ++i)
    if (!c.valid[i])
      for (int k = 0; k < 3; ++k) gp2[3 * i + k] = 0;
  for (size_t i = 0; i < gp.size(); ++i) CHECK_NEAR(gp[i], gp2[i], 1e-15);
  for (size_t i = 0; i < gd.size(); ++i) CHECK_NEAR(gd[i], gd2[i], 1e-15);
  for (size_t i = 0; i < gE.size(); ++i) CHECK_NEAR(gE[i], gE2[i], 1e-14);

  // Thread count does not change the backward.
  std::vector<double> gp3(gp.size()), gd3(gd.size()), gE3(gE.size());
  kn::reprojection_errors_backward_cpu(ge.data(), f0.count.data(), f0.winner.data(),
                                       mask0.p.get(), s.pointmaps.data(), s.depths.data(),
                                       s.cams.E.data(), g, gp3.data(), gd3.data(), gE3.data(), 2);
  CHECK(gp3 == gp);
  CHECK(gd3 == gd);
  CHECK(gE3 == gE);
}

// ---- so3_log kernels -----------------------------------------------------------------------

TEST(so3_log_kernels_equal_per_element) {
  vt::Rng rng(60);
  const int64_t n = 3000;
  std::vector<double> R(sz(9 * n)), gw(sz(3 * n));
  for (int64_t i = 0; i < n; ++i) {
    const vt::Mat3 m = vt::random_rotation(rng);
    std::copy(m.begin(), m.end(), R.begin() + 9 * i);
  }
  for (auto& x : gw) x = rng.normal();
  for (int threads : {1, 2}) {
    std::vector<double> w(sz(3 * n)), gR(sz(9 * n), 4.0);
    kn::so3_log_cpu(R.data(), n, w.data(), threads);
    kn::so3_log_backward_cpu(R.data(), gw.data(), n, gR.data(), threads);
    std::vector<float> Rf = as<float>(R), gwf = as<float>(gw), wf(sz(3 * n)), gRf(sz(9 * n));
    kn::so3_log_cpu(Rf.data(), n, wf.data(), threads);
    kn::so3_log_backward_cpu(Rf.data(), gwf.data(), n, gRf.data(), threads);
    for (int64_t i = 0; i < n; ++i) {
      double e[3], ge[9];
      vggrpo::so3_log(&R[sz(9 * i)], e);
      vggrpo::so3_log_vjp(&R[sz(9 * i)], &gw[sz(3 * i)], ge);
      float ef[3], gef[9];
      vggrpo::so3_log(&Rf[sz(9 * i)], ef);
      vggrpo::so3_log_vjp(&Rf[sz(9 * i)], &gwf[sz(3 * i)], gef);
      for (int k = 0; k < 3; ++k) {
        CHECK_EQ(w[sz(3 * i + k)], e[k]);
        CHECK_EQ(wf[sz(3 * i + k)], ef[k]);
      }
      for (int k = 0; k < 9; ++k) {
        CHECK_EQ(gR[sz(9 * i + k)], ge[k]);
        CHECK_EQ(gRf[sz(9 * i + k)], gef[k]);
      }
    }
  }
}
