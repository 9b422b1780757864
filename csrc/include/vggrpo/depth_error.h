// The per-pixel term of the reprojection error (docs/ops.md#view_depth_error): a pixel counts when
// the rendered and the predicted depth are both valid, and contributes |rendered - predicted|.
#pragma once

#include "common.h"

namespace vggrpo {

// `keep` is the pixel's own mask (false for a dynamic or non-finite pixel of the target view).
template <typename T>
VGGRPO_HD bool pixel_counts(T rendered, T predicted, bool keep = true) {
  return keep && depth_valid(rendered) && depth_valid(predicted);
}

template <typename T>
VGGRPO_HD T pixel_error(T rendered, T predicted) {
  const T diff = rendered - predicted;
  return diff < T(0) ? -diff : diff;
}

// d pixel_error / d rendered (its negation is d / d predicted); 0 at the kink, as in PyTorch.
template <typename T>
VGGRPO_HD T pixel_error_grad(T rendered, T predicted) {
  const T diff = rendered - predicted;
  return diff > T(0) ? T(1) : (diff < T(0) ? T(-1) : T(0));
}

}  // namespace vggrpo
