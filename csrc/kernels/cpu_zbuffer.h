// The CPU z-buffer of one view, shared by splat_depth and the fused reprojection path. One thread
// owns one view's buffer, so a compare-and-store replaces the CUDA atomicMin; the key order
// (include/vggrpo/zbuffer.h) makes the winner independent of the point order either way.
//
// Two passes per chunk of points: (1) project: the pixel (or a dummy slot past the image for a
// rejected point) and the z-buffer key of each point, a branch-free loop the compiler vectorises;
// (2) scatter: an unsigned min into the key buffer with a conditional move. The arithmetic is
// project_to_pixel's, operation for operation, so results are bitwise identical to it (and to the
// CUDA kernel); only the schedule differs. Together with the chunking below, 5x faster than one
// branchy loop over points (measured on the 2-core CI machine).
//
// Two key types: uint64_t, (float32 depth bits << 32) | point index, when the winners are needed
// (splat_depth, and the fused path when a gradient will be asked for); uint32_t, the float32
// depth bits alone, for the fused path without gradient on float32 inputs: the nearest depth is
// all the forward needs, and for float32 it is the winner's depth exactly.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "vggrpo/camera.h"
#include "vggrpo/points.h"
#include "vggrpo/zbuffer.h"

namespace vggrpo {
namespace kernels {

constexpr int64_t kSplatChunk = 512;
// A task splats at most this many views (their per-view sums live on the stack).
constexpr int64_t kMaxViewsPerTask = 16;

template <typename Key>
struct ZKey;
template <>
struct ZKey<uint64_t> {
  static constexpr uint64_t kEmpty = kEmptyKey;
  template <typename T>
  static uint64_t make(T z, uint64_t index) {
    return zbuffer_key(z, static_cast<int64_t>(index));
  }
};
template <>
struct ZKey<uint32_t> {
  static constexpr uint32_t kEmpty = kEmptyDepthKey;
  template <typename T>
  static uint32_t make(T z, uint64_t) {
    return zbuffer_depth_key(z);
  }
};

#if defined(__GNUC__)
#define VGGRPO_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define VGGRPO_ALWAYS_INLINE inline
#endif

// A chunk of points split into x/y/z arrays: a 3-way interleaved load needs shuffles that
// baseline x86-64 lacks, and without this copy the float loop does not vectorise there. A point
// with keep[n] false gets a NaN z coordinate, which the projection rejects like any non-finite
// point (NaN * 0 is NaN), so the mask costs no pass of its own. The chunk is read once for a
// whole group of views.
template <typename T>
struct PointChunk {
  T x[kSplatChunk], y[kSplatChunk], z[kSplatChunk];
  int64_t n0 = 0, count = 0;

  void load(const T* points, const bool* keep, int64_t first, int64_t n) {
    n0 = first;
    count = n;
    const T* src = points + 3 * first;
    for (int64_t i = 0; i < n; ++i) {
      x[i] = src[3 * i];
      y[i] = src[3 * i + 1];
      z[i] = src[3 * i + 2];
    }
    if (keep != nullptr) {
      const T nan = std::numeric_limits<T>::quiet_NaN();
      for (int64_t i = 0; i < n; ++i) z[i] = keep[first + i] ? z[i] : nan;
    }
  }
};

// Pixel of each point of the chunk in view (E, K) (or `dummy`), and its z-buffer key.
template <typename T, typename Key>
VGGRPO_ALWAYS_INLINE void project_chunk_impl(const PointChunk<T>& c, const T* E, const T* K,
                                             int64_t H, int64_t W, int32_t dummy, int32_t* pixel,
                                             Key* key) {
  const int32_t Wi = static_cast<int32_t>(W);
  const T Wf = static_cast<T>(W);
  const T Hf = static_cast<T>(H);
  // Locals, not c.count/c.n0: key (uint64_t) may alias int64_t members as far as the compiler
  // knows, which would hide the trip count and stop vectorisation.
  const int64_t count = c.count;
  const uint64_t n0 = static_cast<uint64_t>(c.n0);
  for (int64_t i = 0; i < count; ++i) {
    const T p[3] = {c.x[i], c.y[i], c.z[i]};
    const T z = camera_z(E, p);
    const T xn = (E[0] * p[0] + E[1] * p[1] + E[2] * p[2] + E[3]) / z;
    const T yn = (E[4] * p[0] + E[5] * p[1] + E[6] * p[2] + E[7]) / z;
    const T u = K[0] * xn + K[1] * yn + K[2];
    const T v = K[3] * xn + K[4] * yn + K[5];
    // project_to_pixel's acceptance test, branch-free; int32 rather than bool keeps one lane
    // width across the loop for the vectoriser.
    const int32_t ok = static_cast<int32_t>(z > T(0)) & static_cast<int32_t>(finite(z)) &
                       static_cast<int32_t>(u >= T(0)) & static_cast<int32_t>(u < Wf) &
                       static_cast<int32_t>(v >= T(0)) & static_cast<int32_t>(v < Hf);
    // Converting only in-range values keeps the float-to-int conversion defined for every lane.
    const int32_t ix = static_cast<int32_t>(ok ? u : T(0));
    const int32_t iy = static_cast<int32_t>(ok ? v : T(0));
    pixel[i] = ok ? iy * Wi + ix : dummy;
    key[i] = ZKey<Key>::make(z, n0 + static_cast<uint64_t>(i));
  }
}

// One copy of the projection per instruction set, picked at load time: on x86-64 with GCC an AVX2
// clone (1.6x faster here) besides the baseline SSE2 one. Both perform the same IEEE operations
// (no FMA: contraction is off), so they produce identical bits. Not under ThreadSanitizer: the
// clones' resolver runs at load time, before the TSan runtime it is instrumented for is up.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_THREAD__)
#define VGGRPO_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VGGRPO_CPU_CLONES
#endif

#define VGGRPO_PROJECT_CHUNK(T, Key)                                                         \
  VGGRPO_CPU_CLONES inline void project_chunk(const PointChunk<T>& c, const T* E, const T* K,  \
                                              int64_t H, int64_t W, int32_t dummy,             \
                                              int32_t* pixel, Key* key) {                      \
    project_chunk_impl(c, E, K, H, W, dummy, pixel, key);                                      \
  }
VGGRPO_PROJECT_CHUNK(float, uint64_t)
VGGRPO_PROJECT_CHUNK(float, uint32_t)
VGGRPO_PROJECT_CHUNK(double, uint64_t)
#undef VGGRPO_PROJECT_CHUNK

// The static mask of points [begin, end), cloned per instruction set like the projection (the
// stride-3 loads vectorise only with AVX2 shuffles or better).
template <typename T>
VGGRPO_ALWAYS_INLINE void static_mask_range_impl(const T* points, const T* flow, T threshold,
                                                 int64_t begin, int64_t end, bool* keep) {
  if (flow == nullptr) {
    for (int64_t i = begin; i < end; ++i) keep[i] = finite3(points + 3 * i);
  } else {
    for (int64_t i = begin; i < end; ++i) {
      keep[i] = point_is_static_with_flow(points + 3 * i, flow + 3 * i, threshold);
    }
  }
}

VGGRPO_CPU_CLONES inline void static_mask_range(const float* points, const float* flow,
                                                float threshold, int64_t begin, int64_t end,
                                                bool* keep) {
  static_mask_range_impl(points, flow, threshold, begin, end, keep);
}

VGGRPO_CPU_CLONES inline void static_mask_range(const double* points, const double* flow,
                                                double threshold, int64_t begin, int64_t end,
                                                bool* keep) {
  static_mask_range_impl(points, flow, threshold, begin, end, keep);
}

// Splats one video's points into `views` consecutive views (E, K: views x 12 and x 9 entries).
// keys: views x (H*W + 1) entries, the last of each view a dummy slot for rejected points;
// overwritten. keep may be null (every point is a candidate).
template <typename T, typename Key>
void splat_views_serial(const T* points, const bool* keep, const T* E, const T* K, int64_t N,
                        int64_t views, int64_t H, int64_t W, Key* keys) {
  const int64_t P = H * W;
  for (int64_t i = 0; i < views * (P + 1); ++i) keys[i] = ZKey<Key>::kEmpty;
  PointChunk<T> chunk;
  int32_t pixel[kSplatChunk];
  Key key[kSplatChunk];
  for (int64_t n0 = 0; n0 < N; n0 += kSplatChunk) {
    chunk.load(points, keep, n0, N - n0 < kSplatChunk ? N - n0 : kSplatChunk);
    for (int64_t v = 0; v < views; ++v) {
      project_chunk(chunk, E + 12 * v, K + 9 * v, H, W, static_cast<int32_t>(P), pixel, key);
      Key* view_keys = keys + (P + 1) * v;
      for (int64_t i = 0; i < chunk.count; ++i) {
        // Rejected points come in long runs (rows of a frame leaving the view), so this branch
        // predicts well and skips half the work on typical videos.
        if (pixel[i] == static_cast<int32_t>(P)) continue;
        Key& slot = view_keys[pixel[i]];
        slot = key[i] < slot ? key[i] : slot;
      }
    }
  }
}

// The winner's camera depth in view E, NaN for an empty pixel (so that no depth test passes
// there), branch-free: from the key itself for float32 (exact, no gather: float(z) == z; the empty
// keys' depth bits are a NaN), by re-reading the point for float64 (the key holds only a float32
// rounding).
inline float winner_depth(uint64_t key, const float*, const float*) { return zbuffer_depth(key); }
inline float winner_depth(uint32_t key, const float*, const float*) { return zbuffer_depth(key); }
inline double winner_depth(uint64_t key, const double* E, const double* points) {
  const bool empty = key == kEmptyKey;
  const double z = camera_z(E, points + 3 * (empty ? 0 : zbuffer_winner(key)));
  return empty ? std::numeric_limits<double>::quiet_NaN() : z;
}

// Splats views [v0, v0 + views) of one video, writes their winners (-1 for empty pixels) to
// winner (views x H*W; only with 64-bit keys, and skipped when winner is null), then calls
// finish(v, keys of view v) for each view so the caller can read the winners' depths
// (winner_depth) in a loop of its own. keys is scratch.
template <typename T, typename Key, typename Finish>
void splat_views(const T* points, const bool* keep, const T* E, const T* K, int64_t N,
                 int64_t views, int64_t H, int64_t W, std::vector<Key>& keys, int64_t* winner,
                 Finish&& finish) {
  const int64_t P = H * W;
  // Growing zero-fills; splat_views_serial then fills with the empty key. Callers keep `keys`
  // thread-local, so a thread reuses one buffer across calls of the same shape.
  if (keys.size() < static_cast<size_t>(views * (P + 1))) {
    keys.resize(static_cast<size_t>(views * (P + 1)));
  }
  splat_views_serial(points, keep, E, K, N, views, H, W, keys.data());
  for (int64_t v = 0; v < views; ++v) {
    const Key* view_keys = keys.data() + (P + 1) * v;
    if constexpr (std::is_same_v<Key, uint64_t>) {
      if (winner != nullptr) {
        int64_t* view_winner = winner + P * v;
        for (int64_t i = 0; i < P; ++i) view_winner[i] = zbuffer_winner(view_keys[i]);
      }
    }
    finish(v, view_keys);
  }
}

// One z-buffer scratch per thread and key type, reused across calls (a buffer of the same size is
// not reallocated or re-zeroed; splat_views_serial overwrites what it uses).
template <typename Key>
std::vector<Key>& thread_keys() {
  thread_local std::vector<Key> keys;
  return keys;
}

// How the (video, view) pairs are split into tasks: each task splats `group` consecutive views of
// one video, reading each chunk of points once for all of them. One task per thread (measured 7%
// faster than two on 2 cores: fewer chunk loads), as many views per task as that allows, and no
// more key buffers than fit a typical L2 cache (1 MiB).
struct ViewTasks {
  int64_t group, per_video, count;
  ViewTasks(int64_t B, int64_t V, int64_t pixels, int threads) {
    const int64_t want = static_cast<int64_t>(threads > 0 ? threads : 1);
    const int64_t by_cache = (int64_t(1) << 20) / (8 * (pixels + 1));
    group = (B * V + want - 1) / want;
    group = group > by_cache ? by_cache : group;
    group = group > V ? V : group;
    group = group > kMaxViewsPerTask ? kMaxViewsPerTask : group;
    group = group < 1 ? 1 : group;
    per_video = (V + group - 1) / group;
    count = B * per_video;
    views_total = V;
  }
  // Task t covers views [v0, v0 + views) of video b.
  struct Range {
    int64_t b, v0, views;
  };
  Range operator[](int64_t t) const {
    const int64_t v0 = (t % per_video) * group;
    return {t / per_video, v0, views_total - v0 < group ? views_total - v0 : group};
  }
  int64_t views_total;
};

}  // namespace kernels
}  // namespace vggrpo
