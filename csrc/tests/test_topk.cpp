// Unit tests of include/vggrpo/topk.h against docs/ops.md#worst_k_mean: among views with
// count > 0, order by error descending, NaN above everything, ties by smaller view index; visit
// the first min(k, number of such views).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "check.h"
#include "test_util.h"
#include "vggrpo/topk.h"

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Independent selection: a stable sort of the eligible views by (is NaN desc, error desc), which
// keeps equal errors in increasing index order.
template <typename T>
std::vector<int64_t> brute_force(const std::vector<T>& err, const std::vector<int64_t>& count,
                                 int64_t k) {
  std::vector<int64_t> views;
  for (size_t v = 0; v < err.size(); ++v)
    if (count[v] > 0) views.push_back(int64_t(v));
  std::stable_sort(views.begin(), views.end(), [&](int64_t a, int64_t b) {
    const bool na = std::isnan(err[a]), nb = std::isnan(err[b]);
    if (na || nb) return na && !nb;
    return err[a] > err[b];
  });
  if (int64_t(views.size()) > k) views.resize(size_t(std::max<int64_t>(k, 0)));
  return views;
}

template <typename T>
std::vector<int64_t> visit(const std::vector<T>& err, const std::vector<int64_t>& count, int64_t k,
                           int64_t* ret) {
  std::vector<int64_t> seen;
  *ret = vggrpo::worst_k_visit(err.data(), count.data(), int64_t(err.size()), k,
                               [&](int64_t v) { seen.push_back(v); });
  return seen;
}

}  // namespace

TEST(ranks_before_rules) {
  using vggrpo::ranks_before;
  CHECK(ranks_before(kNaN, 5, 1e30, 0));   // NaN first
  CHECK(!ranks_before(1e30, 0, kNaN, 5));
  CHECK(ranks_before(kNaN, 5, kInf, 0));
  CHECK(ranks_before(kNaN, 1, kNaN, 2));   // two NaNs: smaller index
  CHECK(!ranks_before(kNaN, 2, kNaN, 1));
  CHECK(ranks_before(2.0, 9, 1.0, 0));     // larger error
  CHECK(!ranks_before(1.0, 0, 2.0, 9));
  CHECK(ranks_before(kInf, 3, 1e300, 0));
  CHECK(ranks_before(1.0, 0, 1.0, 1));     // tie: smaller index
  CHECK(!ranks_before(1.0, 1, 1.0, 0));
  CHECK(ranks_before(0.0, 0, -0.0, 1));    // -0 == 0: a tie
  CHECK(ranks_before(-0.0, 0, 0.0, 1));
  CHECK(!ranks_before(1.0, 0, 1.0, 0));    // irreflexive
  CHECK(ranks_before(0.5f, 0, 0.25f, 1));
  CHECK(ranks_before(std::numeric_limits<float>::quiet_NaN(), 3, 1.0f, 0));
}

TEST(hand_cases) {
  int64_t ret;
  // NaN first, then larger error, then smaller index on ties; count 0 skipped.
  const std::vector<double> err = {1.0, kNaN, 3.0, 3.0, 9.0, 2.0};
  const std::vector<int64_t> count = {5, 1, 2, 2, 0, 7};
  CHECK(visit(err, count, 3, &ret) == (std::vector<int64_t>{1, 2, 3}));
  CHECK_EQ(ret, int64_t(3));
  CHECK(visit(err, count, 5, &ret) == (std::vector<int64_t>{1, 2, 3, 5, 0}));
  CHECK_EQ(ret, int64_t(5));
  // k > V, and k > number of eligible views.
  CHECK(visit(err, count, 100, &ret) == (std::vector<int64_t>{1, 2, 3, 5, 0}));
  CHECK_EQ(ret, int64_t(5));
  CHECK(visit(err, count, 1, &ret) == (std::vector<int64_t>{1}));
  CHECK_EQ(ret, int64_t(1));
  // No eligible view.
  CHECK(visit(err, std::vector<int64_t>(6, 0), 3, &ret).empty());
  CHECK_EQ(ret, int64_t(0));
  // k == 0 selects nothing.
  CHECK(visit(err, count, 0, &ret).empty());
  CHECK_EQ(ret, int64_t(0));
  // Equal errors: index order.
  CHECK(visit(std::vector<double>{2, 2, 2, 2}, std::vector<int64_t>{1, 1, 1, 1}, 3, &ret) ==
        (std::vector<int64_t>{0, 1, 2}));
  // Several NaNs: index order among them, before everything.
  CHECK(visit(std::vector<double>{kInf, kNaN, 1, kNaN}, std::vector<int64_t>{1, 1, 1, 1}, 3,
              &ret) == (std::vector<int64_t>{1, 3, 0}));
  // Empty view list.
  CHECK(visit(std::vector<double>{}, std::vector<int64_t>{}, 3, &ret).empty());
}

template <typename T>
void random_against_brute_force() {
  vt::Rng rng(41);
  for (int rep = 0; rep < 3000; ++rep) {
    const int64_t V = rng.integer(0, 12);
    std::vector<T> err(size_t(V), T(0));
    std::vector<int64_t> count(size_t(V), 0);
    for (int64_t v = 0; v < V; ++v) {
      const double r = rng.uniform();
      // Many duplicates, some NaN / inf / zero.
      err[v] = r < 0.1    ? T(kNaN)
               : r < 0.15 ? T(kInf)
               : r < 0.2  ? T(0)
                          : T(rng.integer(1, 4)) / T(4);
      count[v] = rng.uniform() < 0.25 ? 0 : rng.integer(1, 100);
    }
    const int64_t k = rng.integer(1, V + 3);
    int64_t ret;
    const auto got = visit(err, count, k, &ret);
    const auto expect = brute_force(err, count, k);
    CHECK_MSG(got == expect, "rep " << rep << " V=" << V << " k=" << k);
    CHECK_EQ(ret, int64_t(expect.size()));
  }
}

TEST(random_against_brute_force_double) { random_against_brute_force<double>(); }
TEST(random_against_brute_force_float) { random_against_brute_force<float>(); }
