// Unit tests of include/vggrpo/zbuffer.h against docs/ops.md#splat_depth: the packed key
// (float32 bits of depth) << 32 | index orders by float32 depth, then by index; no real key is
// the empty key; zbuffer_winner decodes it.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "check.h"
#include "test_util.h"
#include "vggrpo/zbuffer.h"

using vggrpo::kEmptyKey;
using vggrpo::zbuffer_key;
using vggrpo::zbuffer_winner;

namespace {

// Lexicographic (float32(depth), index): the documented order.
template <typename T>
bool expected_less(T da, int64_t ia, T db, int64_t ib) {
  const float fa = static_cast<float>(da), fb = static_cast<float>(db);
  if (fa != fb) return fa < fb;
  return ia < ib;
}

template <typename T>
std::vector<T> interesting_depths(vt::Rng& rng) {
  std::vector<T> d = {T(1e-30),
                      T(1),
                      T(2),
                      std::nextafter(T(1), T(2)),
                      std::nextafter(T(1), T(0)),
                      T(0.5),
                      T(1e30),
                      static_cast<T>(FLT_MAX),
                      static_cast<T>(FLT_MIN),
                      static_cast<T>(FLT_MIN / 8),  // denormal in float32
                      std::numeric_limits<T>::denorm_min(),
                      std::numeric_limits<T>::max()};
  for (int i = 0; i < 200; ++i) d.push_back(static_cast<T>(std::pow(10.0, rng.uniform(-6, 6))));
  for (int i = 0; i < 50; ++i) d.push_back(static_cast<T>(rng.integer(1, 8)));  // equal depths
  return d;
}

template <typename T>
void check_key_order() {
  vt::Rng rng(31);
  const auto depths = interesting_depths<T>(rng);
  const int64_t indices[] = {0, 1, 2, 7, 1000, 65535, 65536, int64_t(1) << 31,
                             vggrpo::kMaxPoints - 1, vggrpo::kMaxPoints};
  int64_t mismatches = 0, pairs = 0;
  for (size_t a = 0; a < depths.size(); ++a) {
    for (size_t b = 0; b < depths.size(); b += 3) {
      for (int64_t ia : indices) {
        const int64_t ib = indices[(a + b) % 10];
        const uint64_t ka = zbuffer_key(depths[a], ia), kb = zbuffer_key(depths[b], ib);
        ++pairs;
        if ((ka < kb) != expected_less(depths[a], ia, depths[b], ib)) {
          ++mismatches;
          CHECK_MSG(false, "depth " << double(depths[a]) << " #" << ia << " vs "
                                     << double(depths[b]) << " #" << ib);
        }
      }
    }
  }
  CHECK_EQ(mismatches, int64_t(0));
  CHECK(pairs > 10000);
}

}  // namespace

TEST(key_orders_by_float32_depth_then_index_float) { check_key_order<float>(); }
TEST(key_orders_by_float32_depth_then_index_double) { check_key_order<double>(); }

TEST(key_layout) {
  // High 32 bits: float32 bits of the depth; low 32 bits: the index.
  const float d = 3.25f;
  uint32_t bits;
  std::memcpy(&bits, &d, 4);
  CHECK_EQ(zbuffer_key(d, 5), (uint64_t(bits) << 32) | 5u);
  CHECK_EQ(zbuffer_key(3.25, 5), (uint64_t(bits) << 32) | 5u);
  CHECK_EQ(vggrpo::float_bits(1.0f), uint32_t(0x3f800000u));
  CHECK_EQ(vggrpo::float_bits(0.0f), uint32_t(0));
}

TEST(double_depths_tie_at_float32_resolution) {
  // Closer than float32's resolution: a tie, broken by the smaller index, even if that point is
  // (in float64) the farther one.
  const double near = 2.0, far = 2.0 + 1e-12;
  CHECK(zbuffer_key(far, 3) < zbuffer_key(near, 4));
  CHECK(zbuffer_key(near, 3) < zbuffer_key(far, 4));
  // Resolvable in float32: depth decides whatever the index.
  const double farther = double(std::nextafter(2.0f, 3.0f));
  CHECK(zbuffer_key(near, 9) < zbuffer_key(farther, 0));
}

TEST(empty_key_never_produced_for_finite_positive_depths) {
  vt::Rng rng(32);
  const auto df = interesting_depths<float>(rng);
  const auto dd = interesting_depths<double>(rng);
  for (int64_t idx : {int64_t(0), int64_t(12345), vggrpo::kMaxPoints}) {
    for (float d : df) {
      CHECK(zbuffer_key(d, idx) != kEmptyKey);
      CHECK(zbuffer_key(d, idx) < kEmptyKey);
    }
    for (double d : dd) {  // includes depths above FLT_MAX, which round to +inf in float32
      CHECK(zbuffer_key(d, idx) != kEmptyKey);
      CHECK(zbuffer_key(d, idx) < kEmptyKey);
    }
  }
  // The largest possible real key (depth rounding to +inf, index kMaxPoints) is still not empty.
  CHECK(zbuffer_key(1e300, vggrpo::kMaxPoints) < kEmptyKey);
  CHECK_EQ(zbuffer_winner(zbuffer_key(1e300, vggrpo::kMaxPoints)), vggrpo::kMaxPoints);
}

TEST(winner_decodes_index) {
  CHECK_EQ(zbuffer_winner(kEmptyKey), int64_t(-1));
  for (int64_t idx : {int64_t(0), int64_t(1), int64_t(99), int64_t(1) << 31, vggrpo::kMaxPoints}) {
    CHECK_EQ(zbuffer_winner(zbuffer_key(0.75f, idx)), idx);
    CHECK_EQ(zbuffer_winner(zbuffer_key(123.0, idx)), idx);
    CHECK(zbuffer_winner(zbuffer_key(FLT_MAX, idx)) >= 0);
  }
  CHECK_EQ(vggrpo::kMaxPoints, int64_t(4294967295LL));
}

TEST(min_of_keys_is_nearest_then_smallest_index_in_any_order) {
  // The atomic-min z-buffer: whatever the arrival order, min over keys picks the same winner.
  vt::Rng rng(33);
  for (int rep = 0; rep < 200; ++rep) {
    const int n = int(rng.integer(1, 40));
    std::vector<float> d(n);
    for (float& x : d) x = float(rng.integer(1, 5)) * (rng.uniform() < 0.5 ? 1.0f : 0.5f);
    int best = 0;
    for (int i = 1; i < n; ++i)
      if (d[i] < d[best]) best = i;  // first minimum: ties to the smaller index
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    for (int shuffle = 0; shuffle < 4; ++shuffle) {
      std::shuffle(order.begin(), order.end(), rng.gen);
      uint64_t key = kEmptyKey;
      for (int i : order) key = std::min(key, zbuffer_key(d[i], i));
      CHECK_EQ(zbuffer_winner(key), int64_t(best));
    }
  }
}
