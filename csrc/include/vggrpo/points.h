// Which points enter the scene point cloud (docs/ops.md#static_points).
#pragma once

#include "common.h"

namespace vggrpo {

// A point is kept when its coordinates are finite and, given a scene flow, the flow is finite
// with norm at most the threshold (a pixel is dynamic when its flow norm exceeds it).
template <typename T>
VGGRPO_HD bool point_is_static(const T* p, const T* flow, T flow_threshold) {
  if (!finite(p[0]) || !finite(p[1]) || !finite(p[2])) return false;
  if (flow == nullptr) return true;
  if (!finite(flow[0]) || !finite(flow[1]) || !finite(flow[2])) return false;
  return norm3(flow) <= flow_threshold;
}

}  // namespace vggrpo
