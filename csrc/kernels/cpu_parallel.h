// OpenMP helper shared by the CPU kernels: a static-schedule parallel loop that stays serial for
// small work (a team start costs microseconds; many calls here are on a few hundred elements).
#pragma once

#include <cstdint>

namespace vggrpo {
namespace kernels {

template <typename F>
void parallel_for(int64_t n, int64_t work_per_item, int threads, F&& body) {
  const bool go_parallel = threads > 1 && n > 1 && n * work_per_item >= 32768;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (go_parallel)
  for (int64_t i = 0; i < n; ++i) body(i);
#else
  (void)go_parallel;
  for (int64_t i = 0; i < n; ++i) body(i);
#endif
}

}  // namespace kernels
}  // namespace vggrpo
