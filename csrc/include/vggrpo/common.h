// Shared definitions for the host+device math headers.
//
// Every per-element formula of vggrpo is written once, in a header under csrc/include/vggrpo/,
// as an inline function marked VGGRPO_HD so that the OpenMP CPU loops and the CUDA kernels call
// the same code. These headers include nothing from torch: they compile with a plain C++17
// compiler and with nvcc.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define VGGRPO_HD __host__ __device__ __forceinline__
#else
#define VGGRPO_HD inline
#endif

namespace vggrpo {

// Accumulator for long sums (per-view error over up to ~10^5 pixels): double keeps float32
// inputs from drifting with the summation order, so CPU and CUDA agree to rounding.
using acc_t = double;

template <typename T>
VGGRPO_HD bool finite(T x) {
  // x - x is 0 for finite x and NaN for inf/NaN; avoids std::isfinite, which is not
  // constexpr-friendly in device code on every toolkit.
  return (x - x) == (x - x);
}

// A depth (rendered or predicted) takes part in an error only when finite and positive.
template <typename T>
VGGRPO_HD bool depth_valid(T d) {
  return finite(d) & (d > T(0));
}

// x where keep, +0 otherwise, for sums over masked pixels: x may be NaN where keep is false
// (x * keep would then give NaN), and on the CPU a ?: here compiles to an unpredictable branch
// (measured 3x slower), so the host version masks the bits.
template <typename T>
VGGRPO_HD T keep_or_zero(T x, bool keep) {
#if defined(__CUDA_ARCH__)
  return keep ? x : T(0);
#else
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "float or double");
  using Bits = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  Bits u;
  std::memcpy(&u, &x, sizeof(u));
  u &= Bits(0) - static_cast<Bits>(keep);
  std::memcpy(&x, &u, sizeof(u));
  return x;
#endif
}

template <typename T>
VGGRPO_HD T dot3(const T* a, const T* b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

template <typename T>
VGGRPO_HD T norm3(const T* a) {
  return std::sqrt(dot3(a, a));
}

}  // namespace vggrpo
