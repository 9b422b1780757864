// The per-pixel term of the reprojection error (docs/ops.md#view_depth_error): a pixel counts when
// the rendered and the predicted depth are both valid, and contributes |rendered - predicted|.
#pragma once

#include "common.h"

namespace vggrpo {

// `keep` is the pixel's own mask (false for a dynamic or non-finite pixel of the target view).
template <typename T>
VGGRPO_HD bool pixel_counts(T rendered, T predicted, bool keep = true) {
  return keep & depth_valid(rendered) & depth_valid(predicted);
}

// fabs, not a comparison: a branch on the sign of a random difference mispredicts half the time
// (measured on the CPU: 1.8x slower per-view error loop, 0.90 ms against 0.49 ms).
template <typename T>
VGGRPO_HD T pixel_error(T rendered, T predicted) {
  return std::fabs(rendered - predicted);
}

// d pixel_error / d rendered (its negation is d / d predicted); 0 at the kink, as in PyTorch.
template <typename T>
VGGRPO_HD T pixel_error_grad(T rendered, T predicted) {
  const T diff = rendered - predicted;
  return static_cast<T>(static_cast<int>(diff > T(0)) - static_cast<int>(diff < T(0)));
}

}  // namespace vggrpo
