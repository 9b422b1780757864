// The CUDA kernels (csrc/kernels/*.cu), run on the CPU under the emulated runtime of
// cuda_runtime.h here, against the CPU kernels: every op and every backward, float and double,
// on inputs with the awkward cases (NaN points, points behind the cameras, exact duplicates that
// tie in the z-buffer, empty pixels and views, dynamic points).
//
// What must be bitwise equal to the CPU: per-element ops (so3_log, motion_smoothness, static
// points, per-pixel backwards, worst-k), the z-buffer's winners and depths, and the deterministic
// gather path of the backward. What may differ by summation order only: per-view means and
// extrinsic gradients (double tree sums vs sequential sums) and the float-atomic point gradients;
// their tolerances are derived from the sum of absolute terms (the same backward on |inputs|).
// Every CUDA result is also checked to be the same under shuffled block and thread schedules.
//
// This checks the kernels' logic, not the GPU: see cuda_runtime.h for what is not emulated.
// CMake builds it three times: test_cuda_emulated with the real grid caps;
// test_cuda_emulated_asan with ASan/UBSan and grids capped at 2 blocks (3 along y), so that every
// grid-stride and block-stride loop runs several turns, and a splat thread floor of 7000, so that
// the z-buffer splat takes its several-views-per-thread path on the small inputs; and
// test_cuda_emulated_tsan with ThreadSanitizer, blocks on 2 OS threads at once and grids capped
// at 4 blocks, so that a data race in a kernel fails it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#include "check.h"
#include "cuda_common.cuh"
#include "kernels.h"
#include "test_util.h"
#include "vggrpo/camera.h"
#include "vggrpo/zbuffer.h"

namespace kn = vggrpo::kernels;
using kn::CudaExec;
using kn::ViewGrid;

namespace {

inline size_t sz(int64_t x) { return static_cast<size_t>(x); }

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr uint64_t kSchedules[] = {0, 1, 2};

CudaExec exec(bool deterministic) { return CudaExec{nullptr, deterministic}; }

template <typename T>
constexpr double eps() {
  return static_cast<double>(std::numeric_limits<T>::epsilon());
}

// Bitwise equality (NaN payloads included), reporting the first differing element.
template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b, const char* what) {
  if (a.size() != b.size()) return CHECK_MSG(a.size() == b.size(), what);
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) {
      return CHECK_MSG(false, what << ": element " << i << " differs: " << +a[i] << " vs "
                                   << +b[i]);
    }
  }
  return CHECK_MSG(true, what);
}

// |a - b| <= factor * eps(T) * bound elementwise (bound >= 0, the sum of |terms|), plus the
// smallest normal number for sums that cancel to zero.
template <typename T>
bool near_bound(const std::vector<T>& a, const std::vector<T>& b, const std::vector<T>& bound,
                double factor, const char* what) {
  for (size_t i = 0; i < a.size(); ++i) {
    const double tol = factor * eps<T>() * std::fabs(double(bound[i])) +
                       double(std::numeric_limits<T>::min());
    if (!(std::fabs(double(a[i]) - double(b[i])) <= tol)) {
      return CHECK_NEAR_MSG(double(a[i]), double(b[i]), tol, what << ": element " << i);
    }
  }
  return CHECK_MSG(true, what);
}

template <typename T>
std::vector<T> abs_of(std::vector<T> x) {
  for (T& v : x) v = std::fabs(v);
  return x;
}

// ---- inputs --------------------------------------------------------------------------------

struct Scene {
  int64_t B, V, H, W, N;
  std::vector<double> E, K, points;  // [B, V, 12], [B, V, 9], [B, N, 3]
  std::vector<bool> valid;           // [B, N]
  ViewGrid grid() const { return ViewGrid{B, V, H, W}; }
};

// Cameras of vt::append_random_cameras; a cloud mostly in their frusta, with 4% behind them,
// 2% NaN, 6% exact duplicates of earlier points (equal depths: ties to the smaller index) and 6%
// far outside every image; points are float32-representable.
Scene make_scene(uint64_t seed, int64_t B, int64_t V, int64_t H, int64_t W, int64_t N) {
  vt::Rng rng(seed);
  Scene s{B, V, H, W, N, {}, {}, {}, {}};
  vt::append_random_cameras(rng, B * V, H, W, &s.E, &s.K);
  s.points.resize(sz(3 * B * N));
  for (int64_t i = 0; i < B * N; ++i) {
    double* p = &s.points[sz(3 * i)];
    const double kind = rng.uniform();
    const double z = rng.uniform(2.0, 6.0);
    p[0] = rng.uniform(-0.6, 0.6) * z;
    p[1] = rng.uniform(-0.6, 0.6) * z;
    p[2] = z;
    if (kind < 0.04) {
      p[2] = -z;
    } else if (kind < 0.06) {
      p[int(rng.integer(0, 2))] = kNaN;
    } else if (kind < 0.12 && i % N > 0) {
      const int64_t j = i - rng.integer(1, i % N);
      for (int c = 0; c < 3; ++c) p[c] = s.points[sz(3 * j + c)];
    } else if (kind < 0.18) {
      p[0] = 50.0 * z;
    }
  }
  for (double& x : s.points) x = double(float(x));
  s.valid.resize(sz(B * N));
  for (int64_t i = 0; i < B * N; ++i) s.valid[sz(i)] = rng.uniform() < 0.85;
  return s;
}

std::vector<double> normal_vector(vt::Rng& rng, int64_t n, double scale = 1.0) {
  std::vector<double> x(sz(n));
  for (double& v : x) v = scale * rng.normal();
  return x;
}

// std::vector<bool> has no data(): a byte array for the kernels.
struct Mask {
  std::unique_ptr<bool[]> data;
  explicit Mask(const std::vector<bool>& v) : data(new bool[v.size()]) {
    for (size_t i = 0; i < v.size(); ++i) data[i] = v[i];
  }
};

// ---- the emulator itself ----------------------------------------------------------------------

TEST(emulator_barrier_orders_every_thread_of_the_block) {
  for (uint64_t seed : kSchedules) {
    vggrpo_emu::set_schedule(seed);
    std::vector<long long> sums(3, -1);
    std::vector<int> neighbour(3 * 256, -1);
    vggrpo_emu::Launch(dim3(3), dim3(256)) << [&] {
      // block_sum is the kernels' fixed-tree reduction: it needs the barrier to mean "all".
      const long long total = kn::cuda::block_sum<256, long long>(threadIdx.x + 1000 * blockIdx.x);
      __shared__ int slot[256];
      slot[threadIdx.x] = static_cast<int>(threadIdx.x);
      __syncthreads();
      neighbour[256 * blockIdx.x + threadIdx.x] = slot[(threadIdx.x + 1) % 256];
      if (threadIdx.x == 0) sums[blockIdx.x] = total;
    };
    CHECK_EQ(static_cast<int>(cudaGetLastError()), 0);
    for (long long b = 0; b < 3; ++b) CHECK_EQ(sums[sz(b)], 255 * 256 / 2 + 256000 * b);
    for (int i = 0; i < 3 * 256; ++i) CHECK_EQ(neighbour[sz(i)], (i % 256 + 1) % 256);
  }
  vggrpo_emu::set_schedule(0);
}

TEST(emulator_rejects_what_the_hardware_rejects) {
  int ran = 0;
  vggrpo_emu::Launch(dim3(1), dim3(2048)) << [&] { ++ran; };
  CHECK_EQ(static_cast<int>(cudaGetLastError()), static_cast<int>(cudaErrorInvalidConfiguration));
  vggrpo_emu::Launch(dim3(1, 70000), dim3(32)) << [&] { ++ran; };
  CHECK_EQ(static_cast<int>(cudaGetLastError()), static_cast<int>(cudaErrorInvalidConfiguration));
  vggrpo_emu::Launch(dim3(0), dim3(32)) << [&] { ++ran; };
  CHECK_EQ(static_cast<int>(cudaGetLastError()), static_cast<int>(cudaErrorInvalidConfiguration));
  CHECK_EQ(ran, 0);
  // A barrier that only some threads reach is reported, not hung on.
  vggrpo_emu::Launch(dim3(1), dim3(64)) << [&] {
    if (threadIdx.x < 10) __syncthreads();
  };
  CHECK_EQ(static_cast<int>(cudaGetLastError()), static_cast<int>(cudaErrorLaunchFailure));
  CHECK_EQ(static_cast<int>(cudaGetLastError()), 0);  // read once, then cleared
}

TEST(emulator_workers_run_every_block_once_side_by_side) {
  // What the TSan build relies on: with k workers a launch's blocks run on k OS threads (block i
  // on worker i % k), each block once, each with its own shared memory and barriers.
  const unsigned before = vggrpo_emu::workers();
  vggrpo_emu::set_workers(3);
  for (uint64_t seed : kSchedules) {
    vggrpo_emu::set_schedule(seed);
    constexpr unsigned kBlocks = 7;
    std::vector<long long> sums(kBlocks, -1);
    std::vector<int> runs(kBlocks * 64, 0);
    std::vector<std::thread::id> ran_on(kBlocks);
    vggrpo_emu::Launch(dim3(kBlocks), dim3(64)) << [&] {
      const long long total = kn::cuda::block_sum<64, long long>(threadIdx.x + 100 * blockIdx.x);
      ++runs[64 * blockIdx.x + threadIdx.x];
      if (threadIdx.x == 0) {
        sums[blockIdx.x] = total;
        ran_on[blockIdx.x] = std::this_thread::get_id();
      }
    };
    CHECK_EQ(static_cast<int>(cudaGetLastError()), 0);
    for (unsigned b = 0; b < kBlocks; ++b) CHECK_EQ(sums[b], 63 * 64 / 2 + 6400LL * b);
    for (int r : runs) CHECK_EQ(r, 1);
    std::vector<std::thread::id> threads(ran_on);
    std::sort(threads.begin(), threads.end());
    CHECK_EQ(std::unique(threads.begin(), threads.end()) - threads.begin(), 3);
    for (std::thread::id id : ran_on) CHECK(id != std::this_thread::get_id());
  }
  vggrpo_emu::set_schedule(0);
  vggrpo_emu::set_workers(before);
}

TEST(grid_caps_of_this_build) {
  // The sizes below need several blocks per launch; with the test caps each block loops.
  CHECK(kn::cuda::blocks_for(3000) == (kn::cuda::kMaxBlocks < 12 ? kn::cuda::kMaxBlocks : 12));
  CHECK(kn::cuda::grid_y_for(70000) == kn::cuda::kMaxGridY);
  // Splat views per thread: all while the points alone fill the floor, else halved.
  const int64_t min_threads = kn::cuda::kSplatMinThreads;
  CHECK_EQ(kn::cuda::splat_views_per_thread(min_threads, 21), 21);
  CHECK_EQ(kn::cuda::splat_views_per_thread(min_threads / 4, 21), 6);  // 4 chunks of 6, 6, 6, 3
  CHECK_EQ(kn::cuda::splat_views_per_thread(1, 21), 1);
  CHECK_EQ(kn::cuda::splat_views_per_thread(min_threads, 0), 1);
  std::printf("grid caps: %lld blocks, %lld along y; splat thread floor %lld; per-view blocks of "
              "%d threads\n",
              static_cast<long long>(kn::cuda::kMaxBlocks),
              static_cast<long long>(kn::cuda::kMaxGridY), static_cast<long long>(min_threads),
              kn::cuda::kViewThreads);
}

// ---- so3_log, motion_smoothness --------------------------------------------------------------

template <typename T>
void check_so3_log() {
  vt::Rng rng(11);
  std::vector<double> R;
  const int64_t n = 600;
  for (int64_t i = 0; i < n; ++i) {
    vt::Vec3 axis = rng.unit();
    // Near the identity, generic, and near pi (the log's two delicate regions).
    const double angle = i % 3 == 0 ? 1e-4 * rng.uniform() : i % 3 == 1 ? rng.uniform(0, 3.0)
                                                                        : vt::kPi - 1e-3 * rng.uniform();
    const vt::Mat3 m = vt::rodrigues({axis[0] * angle, axis[1] * angle, axis[2] * angle});
    R.insert(R.end(), m.begin(), m.end());
  }
  const std::vector<T> Rt = vt::cast<T>(R);
  const std::vector<T> g = vt::cast<T>(normal_vector(rng, 3 * n));
  std::vector<T> cpu(sz(3 * n)), grad_cpu(sz(9 * n));
  kn::so3_log_cpu(Rt.data(), n, cpu.data(), 2);
  kn::so3_log_backward_cpu(Rt.data(), g.data(), n, grad_cpu.data(), 2);
  for (uint64_t seed : kSchedules) {
    vggrpo_emu::set_schedule(seed);
    std::vector<T> out(sz(3 * n), T(-7)), grad(sz(9 * n), T(-7));
    CHECK_EQ(kn::so3_log_cuda(Rt.data(), n, out.data(), exec(false)), 0);
    CHECK_EQ(kn::so3_log_backward_cuda(Rt.data(), g.data(), n, grad.data(), exec(false)), 0);
    same_bits(out, cpu, "so3_log");
    same_bits(grad, grad_cpu, "so3_log backward");
  }
  vggrpo_emu::set_schedule(0);
}
TEST(so3_log_matches_cpu_float) { check_so3_log<float>(); }
TEST(so3_log_matches_cpu_double) { check_so3_log<double>(); }

template <typename T>
void check_motion(int64_t B, int64_t F) {
  vt::Rng rng(static_cast<uint64_t>(B * 100 + F));
  std::vector<double> E;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t f = 0; f < F; ++f) {
      const vt::Mat3 R = vt::rodrigues({0.05 * f + 0.01 * rng.normal(), 0.02 * rng.normal(), 0.0});
      const auto e = vt::extrinsic(R, {0.1 * f + 0.01 * rng.normal(), 0.01 * rng.normal(), 0.0});
      E.insert(E.end(), e.begin(), e.end());
    }
  }
  const std::vector<T> Et = vt::cast<T>(E);
  const std::vector<T> gt = vt::cast<T>(normal_vector(rng, B));
  const std::vector<T> gr = vt::cast<T>(normal_vector(rng, B));
  const T epsilon = T(1e-6);
  std::vector<T> t_cpu(sz(B)), r_cpu(sz(B)), gE_cpu(sz(12 * B * F));
  kn::motion_smoothness_cpu(Et.data(), B, F, epsilon, t_cpu.data(), r_cpu.data(), 2);
  kn::motion_smoothness_backward_cpu(Et.data(), B, F, epsilon, gt.data(), gr.data(), gE_cpu.data(),
                                     2);
  for (uint64_t seed : kSchedules) {
    vggrpo_emu::set_schedule(seed);
    std::vector<T> t(sz(B), T(-7)), r(sz(B), T(-7)), gE(sz(12 * B * F), T(-7));
    CHECK_EQ(kn::motion_smoothness_cuda(Et.data(), B, F, epsilon, t.data(), r.data(), exec(false)),
             0);
    CHECK_EQ(kn::motion_smoothness_backward_cuda(Et.data(), B, F, epsilon, gt.data(), gr.data(),
                                                 gE.data(), exec(false)),
             0);
    same_bits(t, t_cpu, "motion e_trans");
    same_bits(r, r_cpu, "motion e_rot");
    same_bits(gE, gE_cpu, "motion backward");
  }
  vggrpo_emu::set_schedule(0);
}
// 300 videos: more than one block of 256 threads.
TEST(motion_smoothness_matches_cpu_float) { check_motion<float>(300, 7); }
TEST(motion_smoothness_matches_cpu_double) { check_motion<double>(300, 7); }
TEST(motion_smoothness_matches_cpu_three_frames) { check_motion<double>(5, 3); }

// ---- static_points -------------------------------------------------------------------------

template <typename T>
void check_static_points(bool with_flow) {
  const Scene s = make_scene(21, 2, 1, 4, 4, 700);
  vt::Rng rng(22);
  std::vector<double> flow = normal_vector(rng, 3 * s.B * s.N, 0.06);
  flow[5] = kNaN;
  const std::vector<T> p = vt::cast<T>(s.points), fl = vt::cast<T>(flow);
  const T threshold = T(0.1);
  std::vector<T> pts_cpu(p.size());
  Mask keep_cpu(std::vector<bool>(sz(s.B * s.N)));
  kn::static_points_cpu(p.data(), with_flow ? fl.data() : nullptr, threshold, s.B, s.N,
                        pts_cpu.data(), keep_cpu.data.get(), 2);
  std::vector<T> pts(p.size(), T(-7));
  Mask keep(std::vector<bool>(sz(s.B * s.N)));
  CHECK_EQ(kn::static_points_cuda(p.data(), with_flow ? fl.data() : nullptr, threshold, s.B, s.N,
                                  pts.data(), keep.data.get(), exec(false)),
           0);
  same_bits(pts, pts_cpu, "static points");
  int64_t kept = 0;
  for (int64_t i = 0; i < s.B * s.N; ++i) {
    CHECK_EQ(keep.data[sz(i)], keep_cpu.data[sz(i)]);
    kept += keep.data[sz(i)];
  }
  CHECK_MSG(kept > s.B * s.N / 3 && kept < s.B * s.N, "kept " << kept);
}
TEST(static_points_matches_cpu_with_flow) { check_static_points<float>(true); }
TEST(static_points_matches_cpu_without_flow) { check_static_points<double>(false); }

// ---- splat_depth -------------------------------------------------------------------------------

// Sum-of-|terms| bounds of the splat backward: the same backward on |grad|, |points|, |E|.
template <typename T>
void abs_bounds(const std::vector<T>& grad_pixel, const std::vector<int64_t>& winner,
                const std::vector<T>& points, const std::vector<T>& E, int64_t N, ViewGrid g,
                std::vector<T>* bound_points, std::vector<T>* bound_E) {
  const std::vector<T> ag = abs_of(grad_pixel), ap = abs_of(points), aE = abs_of(E);
  bound_points->assign(points.size(), T(0));
  bound_E->assign(E.size(), T(0));
  kn::splat_depth_backward_cpu(ag.data(), winner.data(), ap.data(), aE.data(), N, g,
                               bound_points->data(), bound_E->data(), 1);
}

template <typename T>
void check_splat(bool with_valid) {
  const Scene s = make_scene(31, 2, 3, 12, 20, 3000);  // 12 blocks per view
  const ViewGrid g = s.grid();
  const int64_t total = s.B * s.V * g.pixels();
  const std::vector<T> p = vt::cast<T>(s.points), E = vt::cast<T>(s.E), K = vt::cast<T>(s.K);
  const Mask valid(s.valid);
  const bool* vm = with_valid ? valid.data.get() : nullptr;

  std::vector<T> depth_cpu(sz(total));
  std::vector<int64_t> win_cpu(sz(total));
  kn::splat_depth_cpu(p.data(), vm, E.data(), K.data(), s.N, g, depth_cpu.data(), win_cpu.data(),
                      2);
  int64_t hit = 0;
  for (int64_t w : win_cpu) hit += w >= 0;
  CHECK_MSG(hit > total / 2 && hit < total, "pixels hit " << hit << " of " << total);

  vt::Rng rng(32);
  const std::vector<T> grad = vt::cast<T>(normal_vector(rng, total));
  std::vector<T> gp_cpu(p.size()), gE_cpu(E.size()), bound_p, bound_E;
  kn::splat_depth_backward_cpu(grad.data(), win_cpu.data(), p.data(), E.data(), s.N, g,
                               gp_cpu.data(), gE_cpu.data(), 2);
  abs_bounds(grad, win_cpu, p, E, s.N, g, &bound_p, &bound_E);

  for (uint64_t seed : kSchedules) {
    vggrpo_emu::set_schedule(seed);
    std::vector<T> depth(sz(total), T(-7));
    std::vector<int64_t> win(sz(total), -7);
    CHECK_EQ(kn::splat_depth_cuda(p.data(), vm, E.data(), K.data(), s.N, g, depth.data(),
                                  win.data(), exec(false)),
             0);
    same_bits(win, win_cpu, "splat winners");
    same_bits(depth, depth_cpu, "splat depths");
    for (bool deterministic : {true, false}) {
      std::vector<T> gp(p.size(), T(-7)), gE(E.size(), T(-7));
      CHECK_EQ(kn::splat_depth_backward_cuda(grad.data(), win.data(), p.data(), E.data(), K.data(),
                                             s.N, g, gp.data(), gE.data(), exec(deterministic)),
               0);
      if (deterministic) {
        same_bits(gp, gp_cpu, "splat backward points (gather path)");
      } else {
        near_bound(gp, gp_cpu, bound_p, 2.0 * (s.V + 1), "splat backward points (atomics)");
      }
      near_bound(gE, gE_cpu, bound_E, 2.0 * (g.pixels() + 1), "splat backward extrinsics");
    }
  }
  vggrpo_emu::set_schedule(0);
}
TEST(splat_depth_matches_cpu_float) { check_splat<float>(true); }
TEST(splat_depth_matches_cpu_double) { check_splat<double>(true); }
TEST(splat_depth_matches_cpu_without_valid_mask) { check_splat<float>(false); }

// ---- view_depth_error, worst_k_mean ------------------------------------------------------------

template <typename T>
void check_view_error(bool with_valid) {
  const int64_t B = 2, V = 3, H = 20, W = 30;  // 600 pixels: each thread visits 2-3
  const ViewGrid g{B, V, H, W};
  const int64_t total = B * V * H * W;
  vt::Rng rng(41);
  std::vector<double> r(sz(total)), d(sz(total));
  std::vector<bool> keep(sz(total));
  for (int64_t i = 0; i < total; ++i) {
    const double u = rng.uniform();
    r[sz(i)] = u < 0.1 ? 0.0 : u < 0.13 ? kNaN : rng.uniform(1, 6);
    d[sz(i)] = u > 0.95 ? -1.0 : r[sz(i)] * (1 + 0.1 * rng.normal()) + 0.05 * rng.normal();
    keep[sz(i)] = rng.uniform() < 0.9;
  }
  // A view with no valid pixel at all: count 0, error 0, no gradient.
  for (int64_t i = 0; i < H * W; ++i) r[sz(4 * H * W + i)] = 0.0;
  const std::vector<T> rt = vt::cast<T>(r), dt = vt::cast<T>(d);
  const Mask km(keep);
  const bool* vm = with_valid ? km.data.get() : nullptr;
  std::vector<T> err_cpu(sz(B * V));
  std::vector<int64_t> cnt_cpu(sz(B * V));
  kn::view_depth_error_cpu(rt.data(), dt.data(), vm, g, err_cpu.data(), cnt_cpu.data(), 2);
  CHECK_EQ(cnt_cpu[4], int64_t(0));
  const std::vector<T> ge = vt::cast<T>(normal_vector(rng, B * V));
  std::vector<T> gr_cpu(sz(total)), gd_cpu(sz(total));
  kn::view_depth_error_backward_cpu(ge.data(), rt.data(), dt.data(), vm, cnt_cpu.data(), g,
                                    gr_cpu.data(), gd_cpu.data(), 2);
  for (uint64_t seed : kSchedules) {
    vggrpo_emu::set_schedule(seed);
    std::vector<T> err(sz(B * V), T(-7));
    std::vector<int64_t> cnt(sz(B * V), -7);
    CHECK_EQ(kn::view_depth_error_cuda(rt.data(), dt.data(), vm, g, err.data(), cnt.data(),
                                       exec(false)),
             0);
    same_bits(cnt, cnt_cpu, "view error counts");
    // Means of doubles summed in two orders, rounded to T: a few ulps of T at most.
    near_bound(err, err_cpu, err_cpu, 4.0, "view error");
    std::vector<T> gr(sz(total), T(-7)), gd(sz(total), T(-7));
    CHECK_EQ(kn::view_depth_error_backward_cuda(ge.data(), rt.data(), dt.data(), vm, cnt.data(), g,
                                                gr.data(), gd.data(), exec(false)),
             0);
    same_bits(gr, gr_cpu, "view error backward (rendered)");
    same_bits(gd, gd_cpu, "view error backward (depths)");
  }
  vggrpo_emu::set_schedule(0);
}
TEST(view_depth_error_matches_cpu_float) { check_view_error<float>(true); }
TEST(view_depth_error_matches_cpu_double) { check_view_error<double>(true); }
TEST(view_depth_error_matches_cpu_without_valid_mask) { check_view_error<float>(false); }

template <typename T>
void check_worst_k() {
  const int64_t B = 300, V = 9;  // two blocks of videos
  vt::Rng rng(51);
  std::vector<double> e(sz(B * V));
  std::vector<int64_t> cnt(sz(B * V));
  for (int64_t i = 0; i < B * V; ++i) {
    e[sz(i)] = double(rng.integer(0, 5)) * 0.25;  // many ties
    cnt[sz(i)] = rng.uniform() < 0.2 ? 0 : rng.integer(1, 50);
  }
  for (int64_t v = 0; v < V; ++v) cnt[sz(V + v)] = 0;  // a video with no valid view
  const std::vector<T> et = vt::cast<T>(e);
  const std::vector<T> gt = vt::cast<T>(normal_vector(rng, B));
  for (int64_t k : {int64_t(1), int64_t(3), V, V + 4}) {
    std::vector<T> out_cpu(sz(B)), g_cpu(sz(B * V));
    kn::worst_k_mean_cpu(et.data(), cnt.data(), B, V, k, out_cpu.data(), 2);
    kn::worst_k_mean_backward_cpu(gt.data(), et.data(), cnt.data(), B, V, k, g_cpu.data(), 2);
    std::vector<T> out(sz(B), T(-7)), gr(sz(B * V), T(-7));
    CHECK_EQ(kn::worst_k_mean_cuda(et.data(), cnt.data(), B, V, k, out.data(), exec(false)), 0);
    CHECK_EQ(kn::worst_k_mean_backward_cuda(gt.data(), et.data(), cnt.data(), B, V, k, gr.data(),
                                            exec(false)),
             0);
    same_bits(out, out_cpu, "worst_k_mean");
    same_bits(gr, g_cpu, "worst_k_mean backward");
  }
}
TEST(worst_k_mean_matches_cpu_float) { check_worst_k<float>(); }
TEST(worst_k_mean_matches_cpu_double) { check_worst_k<double>(); }

// ---- the fused reprojection path ---------------------------------------------------------------

template <typename T>
void check_reprojection() {
  const int64_t B = 2, V = 4, H = 16, W = 20;  // 320 pixels per view
  const int64_t P = H * W, N = V * P, total = B * V * P;
  const Scene s = make_scene(61, B, V, H, W, N);
  const ViewGrid g = s.grid();
  vt::Rng rng(62);
  // Each view's depth map: its own points' depths, noisy, with holes.
  std::vector<double> d(sz(total));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t v = 0; v < V; ++v) {
      const double* Ev = &s.E[sz(12 * (b * V + v))];
      for (int64_t i = 0; i < P; ++i) {
        const double* q = &s.points[sz(3 * (N * b + P * v + i))];
        const double z = Ev[8] * q[0] + Ev[9] * q[1] + Ev[10] * q[2] + Ev[11];
        d[sz((b * V + v) * P + i)] =
            rng.uniform() < 0.05 ? kNaN : z * (1 + 0.05 * rng.normal());
      }
    }
  }
  std::vector<double> flow = normal_vector(rng, 3 * B * N, 0.06);
  const std::vector<T> p = vt::cast<T>(s.points), E = vt::cast<T>(s.E), K = vt::cast<T>(s.K);
  const std::vector<T> dt = vt::cast<T>(d), fl = vt::cast<T>(flow);
  const T threshold = T(0.1);

  std::vector<T> err_cpu(sz(B * V));
  std::vector<int64_t> cnt_cpu(sz(B * V)), win_cpu(sz(total));
  Mask keep_cpu(std::vector<bool>(sz(B * N)));
  kn::reprojection_errors_cpu(p.data(), dt.data(), E.data(), K.data(), fl.data(), threshold, g,
                              err_cpu.data(), cnt_cpu.data(), win_cpu.data(), keep_cpu.data.get(),
                              2);
  for (int64_t c : cnt_cpu) CHECK_MSG(c > P / 8, "counted pixels " << c);
  // The CPU's no-winner path (float32: 32-bit depth-only keys) gives the same errors.
  std::vector<T> err_nowin(sz(B * V));
  std::vector<int64_t> cnt_nowin(sz(B * V));
  Mask keep_nowin(std::vector<bool>(sz(B * N)));
  kn::reprojection_errors_cpu(p.data(), dt.data(), E.data(), K.data(), fl.data(), threshold, g,
                              err_nowin.data(), cnt_nowin.data(), nullptr, keep_nowin.data.get(),
                              2);
  const std::vector<T> ge = vt::cast<T>(normal_vector(rng, B * V));
  std::vector<T> gp_cpu(p.size()), gd_cpu(sz(total)), gE_cpu(E.size());
  kn::reprojection_errors_backward_cpu(ge.data(), cnt_cpu.data(), win_cpu.data(),
                                       keep_cpu.data.get(), p.data(), dt.data(), E.data(), g,
                                       gp_cpu.data(), gd_cpu.data(), gE_cpu.data(), 2);
  // d err / d rendered = -grad_depths: the bounds are the splat backward's on those.
  std::vector<T> bound_p, bound_E;
  abs_bounds(gd_cpu, win_cpu, p, E, N, g, &bound_p, &bound_E);

  for (uint64_t seed : kSchedules) {
    vggrpo_emu::set_schedule(seed);
    std::vector<T> err(sz(B * V), T(-7));
    std::vector<int64_t> cnt(sz(B * V), -7), win(sz(total), -7);
    Mask keep(std::vector<bool>(sz(B * N)));
    CHECK_EQ(kn::reprojection_errors_cuda(p.data(), dt.data(), E.data(), K.data(), fl.data(),
                                          threshold, g, err.data(), cnt.data(), win.data(),
                                          static_cast<uint32_t*>(nullptr), keep.data.get(),
                                          exec(false)),
             0);
    same_bits(win, win_cpu, "fused winners");
    same_bits(cnt, cnt_cpu, "fused counts");
    same_bits(cnt, cnt_nowin, "fused counts vs the no-winner CPU path");
    bool keep_same = true;
    for (int64_t i = 0; i < B * N; ++i) keep_same &= keep.data[sz(i)] == keep_cpu.data[sz(i)];
    CHECK(keep_same);
    near_bound(err, err_cpu, err_cpu, 4.0, "fused errors");
    near_bound(err, err_nowin, err_nowin, 4.0, "fused errors vs the no-winner CPU path");
    if constexpr (std::is_same_v<T, float>) {
      // No winners kept: the 32-bit depth-only z-buffer, which the CPU's no-winner path also uses.
      std::vector<T> err_dk(sz(B * V), T(-7));
      std::vector<int64_t> cnt_dk(sz(B * V), -7);
      std::vector<uint32_t> depth_keys(sz(total), 7u);
      Mask keep_dk(std::vector<bool>(sz(B * N)));
      CHECK_EQ(kn::reprojection_errors_cuda(p.data(), dt.data(), E.data(), K.data(), fl.data(),
                                            threshold, g, err_dk.data(), cnt_dk.data(),
                                            static_cast<int64_t*>(nullptr), depth_keys.data(),
                                            keep_dk.data.get(), exec(false)),
               0);
      same_bits(cnt_dk, cnt_nowin, "fused counts, depth-only keys");
      // The same per-pixel terms as the packed-key launch, summed in the same tree order.
      same_bits(err_dk, err, "fused errors, depth-only vs packed keys");
      near_bound(err_dk, err_nowin, err_nowin, 4.0, "fused errors, depth-only keys vs the CPU");
      // The z-buffer holds the float32 bits of each winner's depth (all bits set where empty).
      bool keys_match = true;
      for (int64_t j = 0; j < total; ++j) {
        const int64_t w = win_cpu[sz(j)], bv = j / P;
        const uint32_t expect =
            w < 0 ? ~uint32_t(0)
                  : vggrpo::float_bits(static_cast<float>(vggrpo::camera_z(
                        &E[sz(12 * bv)], &p[sz(3 * (N * (bv / V) + w))])));
        keys_match &= depth_keys[sz(j)] == expect;
      }
      CHECK(keys_match);
    }
    for (bool deterministic : {true, false}) {
      std::vector<T> gp(p.size(), T(-7)), gd(sz(total), T(-7)), gE(E.size(), T(-7));
      CHECK_EQ(kn::reprojection_errors_backward_cuda(
                   ge.data(), cnt.data(), win.data(), keep.data.get(), p.data(), dt.data(),
                   E.data(), K.data(), g, gp.data(), gd.data(), gE.data(), exec(deterministic)),
               0);
      same_bits(gd, gd_cpu, "fused backward depths");
      if (deterministic) {
        same_bits(gp, gp_cpu, "fused backward points (gather path)");
      } else {
        near_bound(gp, gp_cpu, bound_p, 2.0 * (V + 1), "fused backward points (atomics)");
      }
      near_bound(gE, gE_cpu, bound_E, 2.0 * (P + 1), "fused backward extrinsics");
    }
  }
  vggrpo_emu::set_schedule(0);
}
TEST(reprojection_errors_matches_cpu_float) { check_reprojection<float>(); }
TEST(reprojection_errors_matches_cpu_double) { check_reprojection<double>(); }

// ---- the fused forward's z-buffer arguments -----------------------------------------------------

TEST(reprojection_errors_rejects_a_wrong_zbuffer) {
  const int64_t before = vggrpo_emu::stats().launches;
  const ViewGrid g{1, 2, 3, 4};
  std::vector<float> f(100, 1.0f);
  std::vector<double> d(100, 1.0);
  std::vector<int64_t> c(8), w(24);
  std::vector<uint32_t> k(24);
  Mask m(std::vector<bool>(24));
  const auto fused_f = [&](int64_t* winner, uint32_t* keys) {
    return kn::reprojection_errors_cuda(f.data(), f.data(), f.data(), f.data(),
                                        static_cast<const float*>(nullptr), 0.1f, g, f.data(),
                                        c.data(), winner, keys, m.data.get(), exec(false));
  };
  CHECK_EQ(fused_f(nullptr, nullptr), static_cast<int>(cudaErrorInvalidValue));  // no z-buffer
  CHECK_EQ(fused_f(w.data(), k.data()), static_cast<int>(cudaErrorInvalidValue));  // two
  // float64 needs the winners to re-read its depths: no depth-only z-buffer.
  CHECK_EQ(kn::reprojection_errors_cuda(d.data(), d.data(), d.data(), d.data(),
                                        static_cast<const double*>(nullptr), 0.1, g, d.data(),
                                        c.data(), static_cast<int64_t*>(nullptr), k.data(),
                                        m.data.get(), exec(false)),
           static_cast<int>(cudaErrorInvalidValue));
  CHECK_EQ(vggrpo_emu::stats().launches, before);
  // Images of no pixels need no z-buffer (an empty tensor's pointer may be null): every view
  // still gets its error and count, both 0.
  const ViewGrid no_pixels{1, 2, 0, 4};
  std::vector<float> err = {-7.0f, -7.0f};
  c.assign(2, -7);
  CHECK_EQ(kn::reprojection_errors_cuda(f.data(), f.data(), f.data(), f.data(),
                                        static_cast<const float*>(nullptr), 0.1f, no_pixels,
                                        err.data(), c.data(), static_cast<int64_t*>(nullptr),
                                        static_cast<uint32_t*>(nullptr), m.data.get(),
                                        exec(false)),
           0);
  CHECK(err[0] == 0.0f && err[1] == 0.0f && c[0] == 0 && c[1] == 0);
}

// ---- sizes of zero launch nothing ----------------------------------------------------------------

TEST(empty_inputs_launch_nothing) {
  const int64_t before = vggrpo_emu::stats().launches;
  float x = 0;
  int64_t c = 0;
  bool m = false;
  const ViewGrid empty{0, 3, 4, 4};
  CHECK_EQ(kn::so3_log_cuda(&x, 0, &x, exec(false)), 0);
  CHECK_EQ(kn::motion_smoothness_cuda(&x, 0, 5, 1e-6f, &x, &x, exec(false)), 0);
  CHECK_EQ(kn::static_points_cuda(&x, static_cast<const float*>(nullptr), 0.1f, 0, 10, &x, &m,
                                  exec(false)),
           0);
  CHECK_EQ(kn::splat_depth_cuda(&x, &m, &x, &x, 10, empty, &x, &c, exec(false)), 0);
  CHECK_EQ(kn::view_depth_error_cuda(&x, &x, &m, empty, &x, &c, exec(false)), 0);
  CHECK_EQ(kn::worst_k_mean_cuda(&x, &c, 0, 3, 1, &x, exec(false)), 0);
  CHECK_EQ(kn::reprojection_errors_cuda(&x, &x, &x, &x, static_cast<const float*>(nullptr), 0.1f,
                                        empty, &x, &c, &c, static_cast<uint32_t*>(nullptr), &m,
                                        exec(false)),
           0);
  CHECK_EQ(vggrpo_emu::stats().launches, before);
}

}  // namespace
