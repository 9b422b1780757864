// Unit tests of include/vggrpo/points.h, depth_error.h and common.h against docs/ops.md:
// static points (finite, flow norm <= threshold kept: a pixel is dynamic when its flow norm
// exceeds the threshold; non-finite flow dropped), depth validity (finite and > 0), the per-pixel
// error |rendered - predicted| and its gradient (0 at the kink).
#include <cfloat>
#include <cmath>
#include <limits>

#include "check.h"
#include "vggrpo/common.h"
#include "vggrpo/depth_error.h"
#include "vggrpo/points.h"

namespace {

template <typename T>
constexpr T inf() {
  return std::numeric_limits<T>::infinity();
}
template <typename T>
constexpr T nan() {
  return std::numeric_limits<T>::quiet_NaN();
}

template <typename T>
void check_finite_and_valid() {
  using vggrpo::depth_valid;
  using vggrpo::finite;
  CHECK(finite(T(0)));
  CHECK(finite(T(-0.0)));
  CHECK(finite(std::numeric_limits<T>::max()));
  CHECK(finite(std::numeric_limits<T>::lowest()));
  CHECK(finite(std::numeric_limits<T>::denorm_min()));
  CHECK(!finite(inf<T>()));
  CHECK(!finite(-inf<T>()));
  CHECK(!finite(nan<T>()));
  CHECK(depth_valid(T(1)));
  CHECK(depth_valid(std::numeric_limits<T>::denorm_min()));
  CHECK(depth_valid(std::numeric_limits<T>::max()));
  CHECK(!depth_valid(T(0)));
  CHECK(!depth_valid(T(-0.0)));
  CHECK(!depth_valid(T(-1)));
  CHECK(!depth_valid(inf<T>()));
  CHECK(!depth_valid(-inf<T>()));
  CHECK(!depth_valid(nan<T>()));
}

template <typename T>
void check_point_is_static() {
  using vggrpo::point_is_static;
  const T p[3] = {T(1), T(-2), T(3)};
  // No flow: kept when finite.
  CHECK(point_is_static(p, static_cast<const T*>(nullptr), T(0.1)));
  for (int i = 0; i < 3; ++i) {
    for (T bad : {nan<T>(), inf<T>(), -inf<T>()}) {
      T q[3] = {p[0], p[1], p[2]};
      q[i] = bad;
      CHECK(!point_is_static(q, static_cast<const T*>(nullptr), T(0.1)));
      const T zero[3] = {0, 0, 0};
      CHECK(!point_is_static(q, zero, T(1)));
    }
  }
  // |(3, 4, 12)| == 13 exactly: norm == threshold is kept (dynamic means strictly above).
  const T f13[3] = {T(3), T(4), T(12)};
  CHECK(point_is_static(p, f13, T(13)));
  CHECK(!point_is_static(p, f13, std::nextafter(T(13), T(0))));
  CHECK(point_is_static(p, f13, std::nextafter(T(13), T(20))));
  const T f13n[3] = {T(-3), T(4), T(-12)};
  CHECK(point_is_static(p, f13n, T(13)));
  // Zero flow with threshold 0 is static; any nonzero flow is not.
  const T zero[3] = {T(0), T(-0.0), T(0)};
  CHECK(point_is_static(p, zero, T(0)));
  const T tiny[3] = {T(0), T(1e-10), T(0)};  // (|x|^2 must not underflow: the norm is naive)
  CHECK(!point_is_static(p, tiny, T(0)));
  // Non-finite flow is dropped whatever the threshold.
  for (int i = 0; i < 3; ++i) {
    for (T bad : {nan<T>(), inf<T>(), -inf<T>()}) {
      T f[3] = {T(0), T(0), T(0)};
      f[i] = bad;
      CHECK(!point_is_static(p, f, inf<T>()));
      CHECK(!point_is_static(p, f, T(1e30)));
    }
  }
  // An infinite threshold keeps every finite flow.
  const T big[3] = {std::numeric_limits<T>::max(), T(0), T(0)};
  CHECK(point_is_static(p, big, inf<T>()));
}

template <typename T>
void check_pixel_terms() {
  using vggrpo::pixel_counts;
  using vggrpo::pixel_error;
  using vggrpo::pixel_error_grad;
  CHECK(pixel_counts(T(1), T(2)));
  CHECK(pixel_counts(std::numeric_limits<T>::denorm_min(), T(2)));
  CHECK(!pixel_counts(T(0), T(2)));   // empty rendered pixel
  CHECK(!pixel_counts(T(1), T(0)));
  CHECK(!pixel_counts(T(1), T(-1)));
  CHECK(!pixel_counts(T(-1), T(1)));
  CHECK(!pixel_counts(nan<T>(), T(1)));
  CHECK(!pixel_counts(T(1), nan<T>()));
  CHECK(!pixel_counts(inf<T>(), T(1)));
  CHECK(!pixel_counts(T(1), inf<T>()));
  CHECK(!pixel_counts(T(-0.0), T(1)));

  CHECK_EQ(pixel_error(T(3), T(1)), T(2));
  CHECK_EQ(pixel_error(T(1), T(3)), T(2));
  CHECK_EQ(pixel_error(T(2.5), T(2.5)), T(0));
  CHECK_EQ(pixel_error_grad(T(3), T(1)), T(1));
  CHECK_EQ(pixel_error_grad(T(1), T(3)), T(-1));
  CHECK_EQ(pixel_error_grad(T(2.5), T(2.5)), T(0));  // kink: 0, as in PyTorch
  // The gradient is the derivative of the error away from the kink (central difference).
  for (T r : {T(0.5), T(1.5), T(4)}) {
    for (T d : {T(0.25), T(1), T(7)}) {
      const T h = T(1e-3);
      const T fd = (pixel_error(r + h, d) - pixel_error(r - h, d)) / (2 * h);
      CHECK_NEAR(pixel_error_grad(r, d), fd, 1e-3);
      const T fdp = (pixel_error(r, d + h) - pixel_error(r, d - h)) / (2 * h);
      CHECK_NEAR(-pixel_error_grad(r, d), fdp, 1e-3);
    }
  }
}

}  // namespace

TEST(finite_and_depth_valid_float) { check_finite_and_valid<float>(); }
TEST(finite_and_depth_valid_double) { check_finite_and_valid<double>(); }
TEST(point_is_static_float) { check_point_is_static<float>(); }
TEST(point_is_static_double) { check_point_is_static<double>(); }
TEST(pixel_terms_float) { check_pixel_terms<float>(); }
TEST(pixel_terms_double) { check_pixel_terms<double>(); }

TEST(dot_and_norm) {
  const double a[3] = {1, 2, 2}, b[3] = {-1, 0.5, 4};
  CHECK_EQ(vggrpo::dot3(a, b), 8.0);
  CHECK_EQ(vggrpo::norm3(a), 3.0);
  const float af[3] = {2, 3, 6};
  CHECK_EQ(vggrpo::norm3(af), 7.0f);
}
