// CPU kernels of the geometry path: static_points, splat_depth, view_depth_error, worst_k_mean
// and the fused reprojection_errors (docs/ops.md). Work is split by video or by (video, views):
// every output element and every accumulated sum has one owner thread and a fixed loop order,
// so results are bitwise identical from run to run and for any thread count.
#include <type_traits>
#include <vector>

#include "cpu_parallel.h"
#include "cpu_zbuffer.h"
#include "kernels.h"
#include "vggrpo/camera.h"
#include "vggrpo/common.h"
#include "vggrpo/depth_error.h"
#include "vggrpo/points.h"
#include "vggrpo/topk.h"

namespace vggrpo {
namespace kernels {

// The static mask of B*N points, in blocks.
template <typename T>
void static_mask(const T* pointmaps, const T* flow, T flow_threshold, int64_t count, bool* keep,
                 int threads) {
  constexpr int64_t kBlock = 4096;
  parallel_for((count + kBlock - 1) / kBlock, 8 * kBlock, threads, [&](int64_t block) {
    const int64_t end = (block + 1) * kBlock < count ? (block + 1) * kBlock : count;
    static_mask_range(pointmaps, flow, flow_threshold, block * kBlock, end, keep);
  });
}

template <typename T>
void static_points_cpu(const T* pointmaps, const T* flow, T flow_threshold, int64_t B, int64_t N,
                       T* points, bool* valid, int threads) {
  static_mask(pointmaps, flow, flow_threshold, B * N, valid, threads);
  parallel_for(B * N, 4, threads, [&](int64_t i) {
    for (int k = 0; k < 3; ++k) points[3 * i + k] = valid[i] ? pointmaps[3 * i + k] : T(0);
  });
}

template <typename T>
void splat_depth_cpu(const T* points, const bool* valid, const T* E, const T* K, int64_t N,
                     ViewGrid g, T* depth, int64_t* winner, int threads) {
  const int64_t P = g.pixels();
  const ViewTasks tasks(g.B, g.V, P, threads);
  parallel_for(tasks.count, 20 * N * tasks.group, threads, [&](int64_t task) {
    const auto [b, v0, views] = tasks[task];
    const int64_t bv0 = b * g.V + v0;
    const T* pts = points + 3 * N * b;
    T* dep = depth + P * bv0;
    for (int64_t i = 0; i < P * views; ++i) dep[i] = T(0);
    std::vector<uint64_t>& keys = thread_keys<uint64_t>();
    splat_views(pts, valid ? valid + N * b : nullptr, E + 12 * bv0, K + 9 * bv0, N, views, g.H,
                g.W, keys, winner + P * bv0, [&](int64_t v, const uint64_t* view_keys) {
                  const T* Ev = E + 12 * (bv0 + v);
                  T* view_depth = dep + P * v;
                  for (int64_t i = 0; i < P; ++i) {
                    if (view_keys[i] != kEmptyKey) view_depth[i] = winner_depth(view_keys[i], Ev, pts);
                  }
                });
  });
}

template <typename T>
void splat_depth_backward_cpu(const T* grad_depth, const int64_t* winner, const T* points,
                              const T* E, int64_t N, ViewGrid g, T* grad_points, T* grad_E,
                              int threads) {
  const int64_t P = g.pixels();
  // One video per task: a point can win in several views, and its gradient sums them in view
  // order.
  parallel_for(g.B, 8 * g.V * P, threads, [&](int64_t b) {
    T* gp = grad_points + 3 * N * b;
    for (int64_t i = 0; i < 3 * N; ++i) gp[i] = T(0);
    const T* pts = points + 3 * N * b;
    for (int64_t v = 0; v < g.V; ++v) {
      const int64_t bv = b * g.V + v;
      T* gE = grad_E + 12 * bv;
      for (int i = 0; i < 12; ++i) gE[i] = T(0);
      const int64_t* win = winner + P * bv;
      const T* gd = grad_depth + P * bv;
      for (int64_t i = 0; i < P; ++i) {
        // Winners come from the forward; anything else out of range is ignored, never read.
        if (win[i] < 0 || win[i] >= N) continue;
        camera_z_vjp(E + 12 * bv, pts + 3 * win[i], gd[i], gp + 3 * win[i], gE);
      }
    }
  });
}

// Mean pixel_error over the pixels of one view that count, and their number: rendered(i) is
// pixel i's rendered depth, d the predicted depths, own(i) whether pixel i is the view's own
// (static, finite). The float64 sum is split into kErrorLanes partial sums, pixel i into lane
// i % kErrorLanes, added in lane order at the end: a fixed order, shared by view_depth_error and
// the fused path, so results are bitwise reproducible and the two agree bit for bit. One running
// sum is bound by the latency of its dependent adds; per-pixel terms computed a block at a time
// into lanes vectorise (measured on the 2-core CI machine, 16 views of 6240 pixels: 266 us with
// one sum, 159 us with lanes).
constexpr int64_t kErrorLanes = 8;

template <typename T, typename Rendered, typename Own>
VGGRPO_ALWAYS_INLINE T view_mean_error(Rendered&& rendered, const T* d, Own&& own, int64_t P,
                                       int64_t* count) {
  acc_t lane[kErrorLanes] = {};
  int64_t lane_count[kErrorLanes] = {};
  int64_t i = 0;
  for (; i + kErrorLanes <= P; i += kErrorLanes) {
    T z[kErrorLanes], e[kErrorLanes];
    int32_t counts[kErrorLanes];
    for (int64_t j = 0; j < kErrorLanes; ++j) z[j] = rendered(i + j);
    for (int64_t j = 0; j < kErrorLanes; ++j) {
      counts[j] = pixel_counts(z[j], d[i + j], own(i + j));
      e[j] = keep_or_zero(pixel_error(z[j], d[i + j]), counts[j]);  // +0 leaves a lane unchanged
    }
    for (int64_t j = 0; j < kErrorLanes; ++j) {
      lane[j] += e[j];
      lane_count[j] += counts[j];
    }
  }
  for (int64_t j = 0; i < P; ++i, ++j) {
    const T z = rendered(i);
    const bool counts = pixel_counts(z, d[i], own(i));
    lane[j] += keep_or_zero(pixel_error(z, d[i]), counts);
    lane_count[j] += counts;
  }
  acc_t sum = 0;
  int64_t n = 0;
  for (int64_t j = 0; j < kErrorLanes; ++j) {
    sum += lane[j];
    n += lane_count[j];
  }
  *count = n;
  return n > 0 ? static_cast<T>(sum / static_cast<acc_t>(n)) : T(0);
}

template <typename T>
void view_depth_error_cpu(const T* rendered, const T* depths, const bool* valid, ViewGrid g,
                          T* err, int64_t* count, int threads) {
  const int64_t P = g.pixels();
  parallel_for(g.B * g.V, 4 * P, threads, [&](int64_t bv) {
    const T* r = rendered + P * bv;
    const T* d = depths + P * bv;
    auto at = [r](int64_t i) { return r[i]; };
    if (valid == nullptr) {
      err[bv] = view_mean_error(at, d, [](int64_t) { return true; }, P, count + bv);
    } else {
      const bool* keep = valid + P * bv;
      err[bv] = view_mean_error(at, d, [keep](int64_t i) { return keep[i]; }, P, count + bv);
    }
  });
}

template <typename T>
void view_depth_error_backward_cpu(const T* grad_err, const T* rendered, const T* depths,
                                   const bool* valid, const int64_t* count, ViewGrid g,
                                   T* grad_rendered, T* grad_depths, int threads) {
  const int64_t P = g.pixels();
  parallel_for(g.B * g.V, 4 * P, threads, [&](int64_t bv) {
    const T* r = rendered + P * bv;
    const T* d = depths + P * bv;
    const bool* keep = valid ? valid + P * bv : nullptr;
    T* gr = grad_rendered + P * bv;
    T* gd = grad_depths + P * bv;
    const T scale = count[bv] > 0 ? grad_err[bv] / static_cast<T>(count[bv]) : T(0);
    for (int64_t i = 0; i < P; ++i) {
      const bool counts = pixel_counts(r[i], d[i], keep == nullptr || keep[i]);
      const T gi = counts ? scale * pixel_error_grad(r[i], d[i]) : T(0);
      gr[i] = gi;
      gd[i] = T(0) - gi;  // +0, not -0, where nothing counts: the same bits on every path
    }
  });
}

template <typename T>
void worst_k_mean_cpu(const T* err, const int64_t* count, int64_t B, int64_t V, int64_t k, T* out,
                      int threads) {
  parallel_for(B, V * V, threads, [&](int64_t b) {
    const T* e = err + V * b;
    acc_t sum = 0;
    const int64_t n = worst_k_visit(e, count + V * b, V, k, [&](int64_t v) { sum += e[v]; });
    out[b] = n > 0 ? static_cast<T>(sum / static_cast<acc_t>(n)) : T(0);
  });
}

template <typename T>
void worst_k_mean_backward_cpu(const T* grad, const T* err, const int64_t* count, int64_t B,
                               int64_t V, int64_t k, T* grad_err, int threads) {
  parallel_for(B, V * V, threads, [&](int64_t b) {
    T* ge = grad_err + V * b;
    for (int64_t v = 0; v < V; ++v) ge[v] = T(0);
    int64_t valid_views = 0;
    for (int64_t v = 0; v < V; ++v) valid_views += count[V * b + v] > 0 ? 1 : 0;
    const int64_t selected = valid_views < k ? valid_views : k;
    if (selected == 0) return;
    const T share = grad[b] / static_cast<T>(selected);
    worst_k_visit(err + V * b, count + V * b, V, k, [&](int64_t v) { ge[v] = share; });
  });
}

template <typename T>
void reprojection_errors_cpu(const T* pointmaps, const T* depths, const T* E, const T* K,
                             const T* flow, T flow_threshold, ViewGrid g, T* err, int64_t* count,
                             int64_t* winner, bool* keep, int threads) {
  const int64_t P = g.pixels();
  const int64_t N = g.V * P;
  // The static mask costs one byte per point, read by the splat below instead of the 12-byte flow
  // vector; it also marks which pixels of each view are compared, and is kept for the backward.
  static_mask(pointmaps, flow, flow_threshold, g.B * N, keep, threads);
  const ViewTasks tasks(g.B, g.V, P, threads);
  parallel_for(tasks.count, 20 * N * tasks.group, threads, [&](int64_t task) {
    const auto [b, v0, views] = tasks[task];
    const int64_t bv0 = b * g.V + v0;
    const T* pts = pointmaps + 3 * N * b;
    auto view_error = [&](int64_t v, const auto* view_keys) {
      const int64_t bv = bv0 + v;
      const T* Ev = E + 12 * bv;
      const T* d = depths + P * bv;
      const bool* own = keep + N * b + P * (v0 + v);  // the view's own pixels
      // The winner's depth, NaN if empty; summed as view_depth_error sums: bitwise its result.
      auto rendered = [&](int64_t i) { return winner_depth(view_keys[i], Ev, pts); };
      err[bv] = view_mean_error(rendered, d, [own](int64_t i) { return own[i]; }, P, count + bv);
    };
    const bool* keep_b = keep + N * b;
    if constexpr (std::is_same_v<T, float>) {
      if (winner == nullptr) {
        // No winners asked for (no gradient): depth-only keys suffice for float32.
        splat_views(pts, keep_b, E + 12 * bv0, K + 9 * bv0, N, views, g.H, g.W,
                    thread_keys<uint32_t>(), nullptr, view_error);
        return;
      }
    }
    splat_views(pts, keep_b, E + 12 * bv0, K + 9 * bv0, N, views, g.H, g.W,
                thread_keys<uint64_t>(), winner ? winner + P * bv0 : nullptr, view_error);
  });
}

template <typename T>
void reprojection_errors_backward_cpu(const T* grad_err, const int64_t* count,
                                      const int64_t* winner, const bool* valid,
                                      const T* pointmaps, const T* depths, const T* E, ViewGrid g,
                                      T* grad_pointmaps, T* grad_depths, T* grad_E, int threads) {
  const int64_t P = g.pixels();
  const int64_t N = g.V * P;
  parallel_for(g.B, 12 * N, threads, [&](int64_t b) {
    T* gp = grad_pointmaps + 3 * N * b;
    for (int64_t i = 0; i < 3 * N; ++i) gp[i] = T(0);
    const T* pts = pointmaps + 3 * N * b;
    for (int64_t v = 0; v < g.V; ++v) {
      const int64_t bv = b * g.V + v;
      const T* Ev = E + 12 * bv;
      T* gE = grad_E + 12 * bv;
      for (int i = 0; i < 12; ++i) gE[i] = T(0);
      const int64_t* win = winner + P * bv;
      const T* d = depths + P * bv;
      const bool* own = valid + N * b + P * v;
      T* gd = grad_depths + P * bv;
      const T scale = count[bv] > 0 ? grad_err[bv] / static_cast<T>(count[bv]) : T(0);
      for (int64_t i = 0; i < P; ++i) {
        gd[i] = T(0);
        if (win[i] < 0 || win[i] >= N) continue;
        const T* p = pts + 3 * win[i];
        const T z = camera_z(Ev, p);
        if (!pixel_counts(z, d[i], own[i])) continue;
        const T gi = scale * pixel_error_grad(z, d[i]);
        gd[i] = T(0) - gi;
        camera_z_vjp(Ev, p, gi, gp + 3 * win[i], gE);
      }
    }
  });
}

#define VGGRPO_INSTANTIATE(T)                                                                   \
  template void static_points_cpu<T>(const T*, const T*, T, int64_t, int64_t, T*, bool*, int);  \
  template void splat_depth_cpu<T>(const T*, const bool*, const T*, const T*, int64_t, ViewGrid, \
                                   T*, int64_t*, int);                                           \
  template void splat_depth_backward_cpu<T>(const T*, const int64_t*, const T*, const T*,        \
                                            int64_t, ViewGrid, T*, T*, int);                     \
  template void view_depth_error_cpu<T>(const T*, const T*, const bool*, ViewGrid, T*, int64_t*, \
                                        int);                                                    \
  template void view_depth_error_backward_cpu<T>(const T*, const T*, const T*, const bool*,      \
                                                 const int64_t*, ViewGrid, T*, T*, int);         \
  template void worst_k_mean_cpu<T>(const T*, const int64_t*, int64_t, int64_t, int64_t, T*,     \
                                    int);                                                        \
  template void worst_k_mean_backward_cpu<T>(const T*, const T*, const int64_t*, int64_t,        \
                                             int64_t, int64_t, T*, int);                         \
  template void reprojection_errors_cpu<T>(const T*, const T*, const T*, const T*, const T*, T,  \
                                           ViewGrid, T*, int64_t*, int64_t*, bool*, int);        \
  template void reprojection_errors_backward_cpu<T>(const T*, const int64_t*, const int64_t*,    \
                                                    const bool*, const T*, const T*, const T*,   \
                                                    ViewGrid, T*, T*, T*, int);
VGGRPO_INSTANTIATE(float)
VGGRPO_INSTANTIATE(double)
#undef VGGRPO_INSTANTIATE

}  // namespace kernels
}  // namespace vggrpo
