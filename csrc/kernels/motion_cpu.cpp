// CPU kernels of so3_log and motion_smoothness: loops over the per-element functions of
// include/vggrpo/so3.h and motion.h.
#include "kernels.h"

#include "cpu_parallel.h"
#include "vggrpo/motion.h"
#include "vggrpo/so3.h"

namespace vggrpo {
namespace kernels {

template <typename T>
void so3_log_cpu(const T* R, int64_t n, T* omega, int threads) {
  parallel_for(n, 64, threads, [&](int64_t i) { so3_log(R + 9 * i, omega + 3 * i); });
}

template <typename T>
void so3_log_backward_cpu(const T* R, const T* grad_omega, int64_t n, T* grad_R, int threads) {
  parallel_for(n, 128, threads,
               [&](int64_t i) { so3_log_vjp(R + 9 * i, grad_omega + 3 * i, grad_R + 9 * i); });
}

template <typename T>
void motion_smoothness_cpu(const T* E, int64_t B, int64_t num_frames, T eps, T* e_trans, T* e_rot,
                           int threads) {
  parallel_for(B, 200 * num_frames, threads, [&](int64_t b) {
    motion_smoothness_sequence(E + 12 * num_frames * b, num_frames, eps, e_trans + b, e_rot + b);
  });
}

template <typename T>
void motion_smoothness_backward_cpu(const T* E, int64_t B, int64_t num_frames, T eps,
                                    const T* grad_trans, const T* grad_rot, T* grad_E,
                                    int threads) {
  parallel_for(B, 800 * num_frames, threads, [&](int64_t b) {
    T* g = grad_E + 12 * num_frames * b;
    for (int64_t i = 0; i < 12 * num_frames; ++i) g[i] = T(0);
    motion_smoothness_sequence_vjp(E + 12 * num_frames * b, num_frames, eps, grad_trans[b],
                                   grad_rot[b], g);
  });
}

#define VGGRPO_INSTANTIATE(T)                                                                  \
  template void so3_log_cpu<T>(const T*, int64_t, T*, int);                                   \
  template void so3_log_backward_cpu<T>(const T*, const T*, int64_t, T*, int);                \
  template void motion_smoothness_cpu<T>(const T*, int64_t, int64_t, T, T*, T*, int);          \
  template void motion_smoothness_backward_cpu<T>(const T*, int64_t, int64_t, T, const T*,     \
                                                  const T*, T*, int);
VGGRPO_INSTANTIATE(float)
VGGRPO_INSTANTIATE(double)
#undef VGGRPO_INSTANTIATE

}  // namespace kernels
}  // namespace vggrpo
