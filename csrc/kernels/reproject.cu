// CUDA kernels of the geometry path: static_points, splat_depth, view_depth_error, worst_k_mean
// and the fused reprojection_errors, with their backwards (docs/ops.md). The per-element math is
// the CPU kernels' (include/vggrpo/*.h); what differs is the parallel schedule:
//
// * the z-buffer is one 64-bit atomicMin per projection on (float32 depth bits << 32 | index),
//   after a plain read that skips hopeless writes (a stale read is an older, larger key, so it
//   can only let a useless atomic through, never skip a needed one); a thread takes one point
//   into a chunk of views (all of them when the points fill the GPU). The key order is total, so
//   the winners equal the CPU's whatever order the atomics land in; with --fmad=false the
//   projections round exactly as on the CPU, so the same pixels are hit. The fused forward with
//   no winners to keep (no gradient to come) on float32 splats 32-bit depth-only keys instead,
//   as the CPU does: the nearest depth is all it needs, at half the memory and traffic;
// * per-view sums (errors, counts, extrinsic gradients) are block reductions in a fixed tree
//   order: deterministic, and equal to the CPU's up to the summation order of a double sum;
// * gradients that several views scatter into one point use float atomics (run-to-run
//   differences in the last bits) unless CudaExec::deterministic is set
//   (torch.use_deterministic_algorithms(True)), which takes a gather path: one thread per point
//   re-projects it into every view in view order, as the CPU does.
#include "cuda_common.cuh"
#include "vggrpo/camera.h"
#include "vggrpo/common.h"
#include "vggrpo/depth_error.h"
#include "vggrpo/points.h"
#include "vggrpo/topk.h"
#include "vggrpo/zbuffer.h"

namespace vggrpo {
namespace kernels {

namespace {

// The two z-buffer key types, as CUDA's atomicMin overloads name them: the packed (depth | index)
// key, and the depth-only key of the fused forward that keeps no winners (float32).
using Key = unsigned long long;
using DepthKey = unsigned int;
static_assert(sizeof(Key) == sizeof(uint64_t), "64-bit z-buffer keys");
static_assert(sizeof(DepthKey) == sizeof(uint32_t), "32-bit depth-only keys");

// ---- static_points ---------------------------------------------------------------------------

template <typename T>
__global__ void static_mask_kernel(const T* pointmaps, const T* flow, T threshold, int64_t count,
                                   bool* keep, T* points) {
  for (int64_t i = cuda::global_thread(); i < count; i += cuda::grid_stride()) {
    const T* p = pointmaps + 3 * i;
    const bool k = point_is_static(p, flow ? flow + 3 * i : nullptr, threshold);
    keep[i] = k;
    if (points != nullptr) {
      for (int c = 0; c < 3; ++c) points[3 * i + c] = k ? p[c] : T(0);
    }
  }
}

// ---- the z-buffer ------------------------------------------------------------------------------

// Grid: x over the B*N points, y over chunks of `views` consecutive views. A thread loads its
// point (and mask byte) once and splats it into each view of its chunk in turn: with a chunk of
// all V views, V times less point traffic than a thread per (point, view). The cameras, read by
// every thread, stay in cache. Z is Key or DepthKey.
template <typename T, typename Z>
__global__ void splat_kernel(const T* points, const bool* keep, const T* E, const T* K, int64_t N,
                             int64_t total, int64_t V, int64_t views, int64_t H, int64_t W,
                             Z* keys) {
  const int64_t P = H * W;
  const int64_t chunks = (V + views - 1) / views;
  for (int64_t c = blockIdx.y; c < chunks; c += gridDim.y) {
    const int64_t v0 = c * views;
    const int64_t v1 = v0 + views < V ? v0 + views : V;
    for (int64_t i = cuda::global_thread(); i < total; i += cuda::grid_stride()) {
      if (keep != nullptr && !keep[i]) continue;
      const int64_t b = i / N;
      const int64_t n = i - b * N;
      const T p[3] = {points[3 * i], points[3 * i + 1], points[3 * i + 2]};
      for (int64_t v = v0; v < v1; ++v) {
        const int64_t bv = b * V + v;
        T z;
        int64_t pixel;
        if (!project_to_pixel(E + 12 * bv, K + 9 * bv, p, H, W, &z, &pixel)) continue;
        Z key;
        if constexpr (sizeof(Z) == sizeof(Key)) {
          key = zbuffer_key(z, n);
        } else {
          key = zbuffer_depth_key(z);
        }
        Z* slot = keys + P * bv + pixel;
        if (key < cuda::racing_load(slot)) atomicMin(slot, key);
      }
    }
  }
}

// Keys -> winner indices in place, and the winners' depths re-read exactly (splat_depth).
template <typename T>
__global__ void splat_finish_kernel(const T* points, const T* E, int64_t N, int64_t V, int64_t P,
                                    int64_t total, int64_t* winner, T* depth) {
  for (int64_t i = cuda::global_thread(); i < total; i += cuda::grid_stride()) {
    const int64_t bv = i / P;
    // Read the key through the int64_t pointer it is rewritten through (int64_t and unsigned long
    // long may not alias): the conversion keeps the bits.
    const int64_t w = zbuffer_winner(static_cast<uint64_t>(winner[i]));
    winner[i] = w;
    depth[i] = w >= 0 ? camera_z(E + 12 * bv, points + 3 * (N * (bv / V) + w)) : T(0);
  }
}

// ---- backward scatters ------------------------------------------------------------------------

// The backward scatters read the gradient w.r.t. each rendered depth as sign * grad_pixel[j]:
// splat_depth_backward passes grad_depth with sign +1, the fused backward passes grad_depths
// (which holds -d err / d rendered) with sign -1, so no extra per-pixel buffer is needed.

// Atomic path: each pixel adds its gradient to its winning point (up to V views per point).
template <typename T>
__global__ void scatter_points_kernel(const T* grad_pixel, T sign, const int64_t* winner,
                                      const T* E, int64_t N, int64_t V, int64_t P, int64_t total,
                                      T* grad_points) {
  for (int64_t i = cuda::global_thread(); i < total; i += cuda::grid_stride()) {
    const int64_t w = winner[i];
    const T g = sign * grad_pixel[i];
    if (w < 0 || w >= N || g == T(0)) continue;
    const int64_t bv = i / P;
    T d[3] = {T(0), T(0), T(0)};  // 0 + g * E[8 + c]: exactly camera_z_vjp's product
    camera_z_vjp(E + 12 * bv, static_cast<const T*>(nullptr), g, d, static_cast<T*>(nullptr));
    T* gp = grad_points + 3 * (N * (bv / V) + w);
    for (int c = 0; c < 3; ++c) atomicAdd(gp + c, d[c]);
  }
}

// Gather path: one thread per point walks the views in order and picks up the gradient of every
// pixel it won, as the CPU does (bitwise reproducible). grad_pixel is indexed [B, V, P].
template <typename T>
__global__ void gather_points_kernel(const T* grad_pixel, T sign, const int64_t* winner,
                                     const T* points, const T* E, const T* K, int64_t N, int64_t V,
                                     int64_t H, int64_t W, int64_t total, T* grad_points) {
  const int64_t P = H * W;
  for (int64_t i = cuda::global_thread(); i < total; i += cuda::grid_stride()) {
    const int64_t b = i / N;
    const int64_t n = i % N;
    const T* p = points + 3 * i;
    T acc[3] = {T(0), T(0), T(0)};
    for (int64_t v = 0; v < V; ++v) {
      const int64_t bv = b * V + v;
      T z;
      int64_t pixel;
      if (!project_to_pixel(E + 12 * bv, K + 9 * bv, p, H, W, &z, &pixel)) continue;
      if (winner[P * bv + pixel] != n) continue;
      camera_z_vjp(E + 12 * bv, p, sign * grad_pixel[P * bv + pixel], acc,
                   static_cast<T*>(nullptr));
    }
    for (int c = 0; c < 3; ++c) grad_points[3 * i + c] = acc[c];
  }
}

// d / d E[2, :] of every rendered depth of a view: one block per (video, view), fixed-order
// reduction (deterministic on both paths).
template <typename T>
__global__ void __launch_bounds__(cuda::kViewThreads)
    extrinsics_grad_kernel(const T* grad_pixel, T sign, const int64_t* winner, const T* points,
                           int64_t N, int64_t V, int64_t P, int64_t BV, T* grad_E) {
  for (int64_t bv = blockIdx.x; bv < BV; bv += gridDim.x) {
    const T* pts = points + 3 * N * (bv / V);
    acc_t g[4] = {0, 0, 0, 0};
    for (int64_t i = threadIdx.x; i < P; i += blockDim.x) {
      const int64_t w = winner[P * bv + i];
      if (w < 0 || w >= N) continue;
      const T gi = sign * grad_pixel[P * bv + i];
      for (int c = 0; c < 3; ++c) g[c] += static_cast<acc_t>(gi * pts[3 * w + c]);
      g[3] += static_cast<acc_t>(gi);
    }
    for (int c = 0; c < 4; ++c) g[c] = cuda::block_sum<cuda::kViewThreads>(g[c]);
    if (threadIdx.x < 12) {
      grad_E[12 * bv + threadIdx.x] = threadIdx.x >= 8 ? static_cast<T>(g[threadIdx.x - 8]) : T(0);
    }
  }
}

// ---- per-view depth error -------------------------------------------------------------------

// One block per (video, view). The rendered depth comes from one of three places: `rendered`
// (view_depth_error); `keys`, the packed z-buffer as int64_t, where it is the winner's (float32:
// from the key; float64: re-read) and each key is turned into its winner index in place after it
// is read; or `depth_keys`, the depth-only z-buffer (float32, no winners kept).
template <typename T>
__global__ void __launch_bounds__(cuda::kViewThreads)
    view_error_kernel(const T* rendered, int64_t* keys, const DepthKey* depth_keys,
                      const T* points, const T* E, const T* depths, const bool* own, int64_t N,
                      int64_t V, int64_t P, int64_t BV, T* err, int64_t* count) {
  for (int64_t bv = blockIdx.x; bv < BV; bv += gridDim.x) {
    const int64_t b = bv / V;
    acc_t sum = 0;
    unsigned long long n = 0;
    for (int64_t i = threadIdx.x; i < P; i += blockDim.x) {
      const int64_t j = P * bv + i;
      T r;
      if (keys != nullptr) {
        const uint64_t key = static_cast<uint64_t>(keys[j]);
        const int64_t w = zbuffer_winner(key);
        if (sizeof(T) == sizeof(float)) {
          r = static_cast<T>(zbuffer_depth(key));  // exact for float32; NaN when empty
        } else {
          r = w >= 0 ? camera_z(E + 12 * bv, points + 3 * (N * b + w))
                     : static_cast<T>(zbuffer_depth(kEmptyKey));  // NaN
        }
        keys[j] = w;  // read above through the same pointer
      } else if (depth_keys != nullptr) {
        r = static_cast<T>(zbuffer_depth(static_cast<uint32_t>(depth_keys[j])));  // NaN when empty
      } else {
        r = rendered[j];
      }
      const bool counts = pixel_counts(r, depths[j], own == nullptr || own[j]);
      sum += counts ? static_cast<acc_t>(pixel_error(r, depths[j])) : acc_t(0);
      n += counts ? 1 : 0;
    }
    sum = cuda::block_sum<cuda::kViewThreads>(sum);
    n = cuda::block_sum<cuda::kViewThreads>(n);
    if (threadIdx.x == 0) {
      count[bv] = static_cast<int64_t>(n);
      err[bv] = n > 0 ? static_cast<T>(sum / static_cast<acc_t>(n)) : T(0);
    }
  }
}

// Per pixel: d err / d rendered (into grad_rendered, unless null) and d err / d depths of the
// counted pixels. rendered == nullptr: the rendered depth is the winner's, re-read (fused path).
template <typename T>
__global__ void view_error_backward_kernel(const T* grad_err, const T* rendered,
                                           const int64_t* winner, const T* points, const T* E,
                                           const T* depths, const bool* own,
                                           const int64_t* count, int64_t N, int64_t V, int64_t P,
                                           int64_t total, T* grad_rendered, T* grad_depths) {
  for (int64_t j = cuda::global_thread(); j < total; j += cuda::grid_stride()) {
    const int64_t bv = j / P;
    T r;
    if (rendered != nullptr) {
      r = rendered[j];
    } else {
      const int64_t w = winner[j];
      r = (w >= 0 && w < N) ? camera_z(E + 12 * bv, points + 3 * (N * (bv / V) + w)) : T(0);
    }
    const bool counts = pixel_counts(r, depths[j], own == nullptr || own[j]);
    const T scale = count[bv] > 0 ? grad_err[bv] / static_cast<T>(count[bv]) : T(0);
    const T g = counts ? scale * pixel_error_grad(r, depths[j]) : T(0);
    if (grad_rendered != nullptr) grad_rendered[j] = g;
    grad_depths[j] = T(0) - g;  // +0 where nothing counts, as on the CPU
  }
}

// ---- worst-k -----------------------------------------------------------------------------------

template <typename T>
__global__ void worst_k_kernel(const T* err, const int64_t* count, int64_t B, int64_t V, int64_t k,
                               T* out) {
  for (int64_t b = cuda::global_thread(); b < B; b += cuda::grid_stride()) {
    const T* e = err + V * b;
    acc_t sum = 0;
    const int64_t n = worst_k_visit(e, count + V * b, V, k, [&](int64_t v) { sum += e[v]; });
    out[b] = n > 0 ? static_cast<T>(sum / static_cast<acc_t>(n)) : T(0);
  }
}

template <typename T>
__global__ void worst_k_backward_kernel(const T* grad, const T* err, const int64_t* count,
                                        int64_t B, int64_t V, int64_t k, T* grad_err) {
  for (int64_t b = cuda::global_thread(); b < B; b += cuda::grid_stride()) {
    T* ge = grad_err + V * b;
    int64_t valid_views = 0;
    for (int64_t v = 0; v < V; ++v) {
      ge[v] = T(0);
      valid_views += count[V * b + v] > 0 ? 1 : 0;
    }
    const int64_t selected = valid_views < k ? valid_views : k;
    if (selected == 0) continue;
    const T share = grad[b] / static_cast<T>(selected);
    worst_k_visit(err + V * b, count + V * b, V, k, [&](int64_t v) { ge[v] = share; });
  }
}

// Launch helpers.
template <typename T, typename Z>
int splat_into(const T* points, const bool* keep, const T* E, const T* K, int64_t N, ViewGrid g,
               Z* keys, cudaStream_t stream) {
  const int64_t BV = g.B * g.V;
  // All bits set: every key kEmptyKey (or kEmptyDepthKey).
  cudaMemsetAsync(keys, 0xff, sizeof(Z) * BV * g.pixels(), stream);
  const int64_t total = g.B * N;
  if (total == 0) return cuda::last_error();
  const int64_t views = cuda::splat_views_per_thread(total, g.V);
  const dim3 grid(cuda::blocks_for(total), cuda::grid_y_for((g.V + views - 1) / views));
  splat_kernel<<<grid, cuda::kThreads, 0, stream>>>(points, keep, E, K, N, total, g.V, views, g.H,
                                                    g.W, keys);
  return cuda::last_error();
}

unsigned blocks_per_view(int64_t BV) { return cuda::grid_y_for(BV); }

// Gradients of the rendered depths (sign * grad_pixel) to the winning points and to row 2 of
// each view's extrinsics.
template <typename T>
int scatter_to_points_and_cameras(const T* grad_pixel, T sign, const int64_t* winner,
                                  const T* points, const T* E, const T* K, int64_t N, ViewGrid g,
                                  T* grad_points, T* grad_E, CudaExec ex) {
  const cudaStream_t stream = cuda::stream_of(ex);
  const int64_t BV = g.B * g.V;
  const int64_t total = BV * g.pixels();
  if (BV > 0) {
    extrinsics_grad_kernel<<<blocks_per_view(BV), cuda::kViewThreads, 0, stream>>>(
        grad_pixel, sign, winner, points, N, g.V, g.pixels(), BV, grad_E);
  }
  if (g.B * N == 0) return cuda::last_error();
  if (ex.deterministic) {
    gather_points_kernel<<<cuda::blocks_for(g.B * N), cuda::kThreads, 0, stream>>>(
        grad_pixel, sign, winner, points, E, K, N, g.V, g.H, g.W, g.B * N, grad_points);
  } else {
    cudaMemsetAsync(grad_points, 0, sizeof(T) * 3 * g.B * N, stream);
    if (total > 0) {
      scatter_points_kernel<<<cuda::blocks_for(total), cuda::kThreads, 0, stream>>>(
          grad_pixel, sign, winner, E, N, g.V, g.pixels(), total, grad_points);
    }
  }
  return cuda::last_error();
}

}  // namespace

template <typename T>
int static_points_cuda(const T* pointmaps, const T* flow, T flow_threshold, int64_t B, int64_t N,
                       T* points, bool* valid, CudaExec ex) {
  if (B * N == 0) return 0;
  static_mask_kernel<<<cuda::blocks_for(B * N), cuda::kThreads, 0, cuda::stream_of(ex)>>>(
      pointmaps, flow, flow_threshold, B * N, valid, points);
  return cuda::last_error();
}

template <typename T>
int splat_depth_cuda(const T* points, const bool* valid, const T* E, const T* K, int64_t N,
                     ViewGrid g, T* depth, int64_t* winner, CudaExec ex) {
  const int64_t total = g.B * g.V * g.pixels();
  if (total == 0) return 0;
  const cudaStream_t stream = cuda::stream_of(ex);
  const int e = splat_into(points, valid, E, K, N, g, reinterpret_cast<Key*>(winner), stream);
  if (e != 0) return e;
  splat_finish_kernel<<<cuda::blocks_for(total), cuda::kThreads, 0, stream>>>(
      points, E, N, g.V, g.pixels(), total, winner, depth);
  return cuda::last_error();
}

template <typename T>
int splat_depth_backward_cuda(const T* grad_depth, const int64_t* winner, const T* points,
                              const T* E, const T* K, int64_t N, ViewGrid g, T* grad_points,
                              T* grad_E, CudaExec ex) {
  return scatter_to_points_and_cameras(grad_depth, T(1), winner, points, E, K, N, g, grad_points,
                                       grad_E, ex);
}

template <typename T>
int view_depth_error_cuda(const T* rendered, const T* depths, const bool* valid, ViewGrid g,
                          T* err, int64_t* count, CudaExec ex) {
  const int64_t BV = g.B * g.V;
  if (BV == 0) return 0;
  view_error_kernel<<<blocks_per_view(BV), cuda::kViewThreads, 0, cuda::stream_of(ex)>>>(
      rendered, static_cast<int64_t*>(nullptr), static_cast<const DepthKey*>(nullptr),
      static_cast<const T*>(nullptr),
      static_cast<const T*>(nullptr), depths, valid, 0, g.V, g.pixels(), BV, err, count);
  return cuda::last_error();
}

template <typename T>
int view_depth_error_backward_cuda(const T* grad_err, const T* rendered, const T* depths,
                                   const bool* valid, const int64_t* count, ViewGrid g,
                                   T* grad_rendered, T* grad_depths, CudaExec ex) {
  const int64_t total = g.B * g.V * g.pixels();
  if (total == 0) return 0;
  view_error_backward_kernel<<<cuda::blocks_for(total), cuda::kThreads, 0, cuda::stream_of(ex)>>>(
      grad_err, rendered, static_cast<const int64_t*>(nullptr), static_cast<const T*>(nullptr),
      static_cast<const T*>(nullptr), depths, valid, count, 0, g.V, g.pixels(), total,
      grad_rendered, grad_depths);
  return cuda::last_error();
}

template <typename T>
int worst_k_mean_cuda(const T* err, const int64_t* count, int64_t B, int64_t V, int64_t k, T* out,
                      CudaExec ex) {
  if (B == 0) return 0;
  worst_k_kernel<<<cuda::blocks_for(B), cuda::kThreads, 0, cuda::stream_of(ex)>>>(err, count, B, V,
                                                                                  k, out);
  return cuda::last_error();
}

template <typename T>
int worst_k_mean_backward_cuda(const T* grad, const T* err, const int64_t* count, int64_t B,
                               int64_t V, int64_t k, T* grad_err, CudaExec ex) {
  if (B == 0) return 0;
  worst_k_backward_kernel<<<cuda::blocks_for(B), cuda::kThreads, 0, cuda::stream_of(ex)>>>(
      grad, err, count, B, V, k, grad_err);
  return cuda::last_error();
}

template <typename T>
int reprojection_errors_cuda(const T* pointmaps, const T* depths, const T* E, const T* K,
                             const T* flow, T flow_threshold, ViewGrid g, T* err, int64_t* count,
                             int64_t* winner, uint32_t* depth_keys, bool* valid, CudaExec ex) {
  const int64_t N = g.V * g.pixels();
  const int64_t BV = g.B * g.V;
  if (BV == 0) return 0;
  // Exactly one z-buffer (images of no pixels need none: an empty tensor's data pointer may be
  // null); the depth-only one holds a float32 depth, which is exact for float32 inputs only
  // (float64 re-reads the winner's depth, so it needs the winners).
  if (g.pixels() > 0 && (winner == nullptr) == (depth_keys == nullptr)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (depth_keys != nullptr && sizeof(T) != sizeof(float)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const cudaStream_t stream = cuda::stream_of(ex);
  if (g.B * N > 0) {
    static_mask_kernel<<<cuda::blocks_for(g.B * N), cuda::kThreads, 0, stream>>>(
        pointmaps, flow, flow_threshold, g.B * N, valid, static_cast<T*>(nullptr));
  }
  DepthKey* dkeys = reinterpret_cast<DepthKey*>(depth_keys);
  const int e = winner != nullptr
                    ? splat_into(pointmaps, valid, E, K, N, g, reinterpret_cast<Key*>(winner), stream)
                    : splat_into(pointmaps, valid, E, K, N, g, dkeys, stream);
  if (e != 0) return e;
  // The frames are the views: view v's own pixels are frame v's points, valid[b, v*P + i].
  view_error_kernel<<<blocks_per_view(BV), cuda::kViewThreads, 0, stream>>>(
      static_cast<const T*>(nullptr), winner, dkeys, pointmaps, E, depths, valid, N, g.V,
      g.pixels(), BV, err, count);
  return cuda::last_error();
}

template <typename T>
int reprojection_errors_backward_cuda(const T* grad_err, const int64_t* count,
                                      const int64_t* winner, const bool* valid,
                                      const T* pointmaps, const T* depths, const T* E,
                                      const T* K, ViewGrid g, T* grad_pointmaps, T* grad_depths,
                                      T* grad_E, CudaExec ex) {
  const int64_t N = g.V * g.pixels();
  const int64_t total = g.B * g.V * g.pixels();
  if (total > 0) {
    // grad_depths = -d err / d rendered on counted pixels (0 elsewhere); the scatter below reads
    // it back with sign -1.
    view_error_backward_kernel<<<cuda::blocks_for(total), cuda::kThreads, 0, cuda::stream_of(ex)>>>(
        grad_err, static_cast<const T*>(nullptr), winner, pointmaps, E, depths, valid, count, N,
        g.V, g.pixels(), total, static_cast<T*>(nullptr), grad_depths);
  }
  return scatter_to_points_and_cameras(static_cast<const T*>(grad_depths), T(-1), winner, pointmaps,
                                       E, K, N, g, grad_pointmaps, grad_E, ex);
}

#define VGGRPO_INSTANTIATE(T)                                                                    \
  template int static_points_cuda<T>(const T*, const T*, T, int64_t, int64_t, T*, bool*,         \
                                     CudaExec);                                                  \
  template int splat_depth_cuda<T>(const T*, const bool*, const T*, const T*, int64_t, ViewGrid, \
                                   T*, int64_t*, CudaExec);                                      \
  template int splat_depth_backward_cuda<T>(const T*, const int64_t*, const T*, const T*,        \
                                            const T*, int64_t, ViewGrid, T*, T*, CudaExec);      \
  template int view_depth_error_cuda<T>(const T*, const T*, const bool*, ViewGrid, T*, int64_t*, \
                                        CudaExec);                                               \
  template int view_depth_error_backward_cuda<T>(const T*, const T*, const T*, const bool*,      \
                                                 const int64_t*, ViewGrid, T*, T*, CudaExec);    \
  template int worst_k_mean_cuda<T>(const T*, const int64_t*, int64_t, int64_t, int64_t, T*,     \
                                    CudaExec);                                                   \
  template int worst_k_mean_backward_cuda<T>(const T*, const T*, const int64_t*, int64_t,        \
                                             int64_t, int64_t, T*, CudaExec);                    \
  template int reprojection_errors_cuda<T>(const T*, const T*, const T*, const T*, const T*, T,  \
                                           ViewGrid, T*, int64_t*, int64_t*, uint32_t*, bool*,   \
                                           CudaExec);                                            \
  template int reprojection_errors_backward_cuda<T>(const T*, const int64_t*, const int64_t*,    \
                                                    const bool*, const T*, const T*, const T*,   \
                                                    const T*, ViewGrid, T*, T*, T*, CudaExec);
VGGRPO_INSTANTIATE(float)
VGGRPO_INSTANTIATE(double)
#undef VGGRPO_INSTANTIATE

}  // namespace kernels
}  // namespace vggrpo
