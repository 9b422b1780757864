// The packed 64-bit z-buffer key (docs/ops.md#splat_depth): (float32 bits of depth) << 32 | index.
// For positive floats the bit pattern orders like the value, so one unsigned 64-bit min picks the
// nearest point and, on equal float32 depths, the smaller index: a total order, hence the same
// winner whatever order points arrive in (OpenMP loop or CUDA atomicMin).
#pragma once

#include <cstring>

#include "common.h"

namespace vggrpo {

// No real key reaches this value: its depth bits would be a NaN, and NaN depths are rejected.
constexpr uint64_t kEmptyKey = ~uint64_t(0);

VGGRPO_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

VGGRPO_HD float float_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

template <typename T>
VGGRPO_HD uint64_t zbuffer_key(T depth, int64_t index) {
  return (static_cast<uint64_t>(float_bits(static_cast<float>(depth))) << 32) |
         static_cast<uint64_t>(static_cast<uint32_t>(index));
}

// Point index of a key, -1 for an empty pixel.
VGGRPO_HD int64_t zbuffer_winner(uint64_t key) {
  return key == kEmptyKey ? int64_t(-1) : static_cast<int64_t>(key & 0xffffffffu);
}

// The depth a key was made from, rounded to float32. For float32 inputs this is the winner's depth
// exactly (float(z) == z), so the re-read needs no access to the point.
VGGRPO_HD float zbuffer_depth(uint64_t key) { return float_from_bits(static_cast<uint32_t>(key >> 32)); }

// The depth-only key: the float32 bits of depth alone. Enough where only the nearest depth is
// wanted and not which point gave it (the fused forward with no gradient to come, float32 inputs):
// half the memory and traffic of the packed key, and for float32 inputs the same depth exactly.
constexpr uint32_t kEmptyDepthKey = ~uint32_t(0);  // a NaN pattern: no valid depth has it

template <typename T>
VGGRPO_HD uint32_t zbuffer_depth_key(T depth) {
  return float_bits(static_cast<float>(depth));
}

VGGRPO_HD float zbuffer_depth(uint32_t depth_key) { return float_from_bits(depth_key); }

// Indices must fit the key's low 32 bits.
constexpr int64_t kMaxPoints = int64_t(0xffffffff);

}  // namespace vggrpo
