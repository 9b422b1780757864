// Which points enter the scene point cloud (docs/ops.md#static_points).
#pragma once

#include "common.h"

namespace vggrpo {

// All three coordinates finite: x - x is 0 for a finite x and NaN otherwise, and a sum of such
// terms cannot overflow.
template <typename T>
VGGRPO_HD bool finite3(const T* p) {
  return ((p[0] - p[0]) + (p[1] - p[1]) + (p[2] - p[2])) == T(0);
}

// A point is kept when its coordinates are finite and, given a scene flow, the flow is finite
// with norm at most the threshold (a pixel is dynamic when its flow norm exceeds it).
// Branch-free, so CPU loops over it vectorise.
template <typename T>
VGGRPO_HD bool point_is_static_with_flow(const T* p, const T* flow, T flow_threshold) {
  return finite3(p) & finite3(flow) & (norm3(flow) <= flow_threshold);
}

// flow may be null (no scene flow: every finite point is static).
template <typename T>
VGGRPO_HD bool point_is_static(const T* p, const T* flow, T flow_threshold) {
  return flow == nullptr ? finite3(p) : point_is_static_with_flow(p, flow, flow_threshold);
}

}  // namespace vggrpo
