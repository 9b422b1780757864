// Worst-k reduction of per-view errors (docs/ops.md#worst_k_mean). V is small (the frames of one
// video), so selection is k passes over V with no scratch memory: each pass takes the best view
// ranked strictly after the previous pick.
#pragma once

#include "common.h"

namespace vggrpo {

// True when view a (error ea) ranks before view b: NaN first, then larger error, then smaller index.
template <typename T>
VGGRPO_HD bool ranks_before(T ea, int64_t a, T eb, int64_t b) {
  const bool nan_a = !(ea == ea);
  const bool nan_b = !(eb == eb);
  if (nan_a != nan_b) return nan_a;
  if (!nan_a && ea != eb) return ea > eb;
  return a < b;
}

// Calls visit(view) for the selected views in rank order; returns how many were selected,
// min(k, number of views with count > 0).
template <typename T, typename Visit>
VGGRPO_HD int64_t worst_k_visit(const T* err, const int64_t* count, int64_t V, int64_t k,
                                Visit&& visit) {
  int64_t prev = -1;
  int64_t selected = 0;
  while (selected < k) {
    int64_t best = -1;
    for (int64_t v = 0; v < V; ++v) {
      if (count[v] <= 0) continue;
      if (prev >= 0 && !ranks_before(err[prev], prev, err[v], v)) continue;
      if (best < 0 || ranks_before(err[v], v, err[best], best)) best = v;
    }
    if (best < 0) break;
    visit(best);
    prev = best;
    ++selected;
  }
  return selected;
}

}  // namespace vggrpo
