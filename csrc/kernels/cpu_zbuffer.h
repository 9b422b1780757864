// The CPU z-buffer of one view, shared by splat_depth and the fused reprojection path. One thread
// owns one view's buffer, so a plain compare-and-store replaces the CUDA atomicMin; the key order
// (include/vggrpo/zbuffer.h) makes the winner independent of the point order either way.
#pragma once

#include <cstdint>

#include "vggrpo/camera.h"
#include "vggrpo/zbuffer.h"

namespace vggrpo {
namespace kernels {

// keys: H*W entries, overwritten. keep may be null (every point is a candidate).
template <typename T>
void splat_view_serial(const T* points, const bool* keep, const T* E, const T* K, int64_t N,
                       int64_t H, int64_t W, uint64_t* keys) {
  for (int64_t i = 0; i < H * W; ++i) keys[i] = kEmptyKey;
  for (int64_t n = 0; n < N; ++n) {
    if (keep != nullptr && !keep[n]) continue;
    T z;
    int64_t pixel;
    if (!project_to_pixel(E, K, points + 3 * n, H, W, &z, &pixel)) continue;
    const uint64_t key = zbuffer_key(z, n);
    if (key < keys[pixel]) keys[pixel] = key;
  }
}

// Turns keys into winner indices in place (-1 for empty pixels): the key buffer is the winner
// tensor's memory, so the z-buffer costs no allocation beyond the output.
inline void keys_to_winners(int64_t* buffer, int64_t pixels) {
  uint64_t* keys = reinterpret_cast<uint64_t*>(buffer);
  for (int64_t i = 0; i < pixels; ++i) buffer[i] = zbuffer_winner(keys[i]);
}

}  // namespace kernels
}  // namespace vggrpo
