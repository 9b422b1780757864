// A tiny header-only test harness for the C++ unit tests (no googletest: CI has no network).
//
//   TEST(name) { CHECK(cond); CHECK_EQ(a, b); CHECK_NEAR(a, b, tol); }
//
// Every test file is one executable: this header defines main(), which runs the TEST bodies in
// file order, prints each failure (file:line, expression, values) and a summary, and returns
// non-zero when any check failed. Checks count failures and go on, so one run shows them all.
// Define VGGRPO_CHECK_NO_MAIN before including it to provide your own main().
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace vggrpo_check {

struct State {
  int64_t checks = 0;
  int64_t failures = 0;
  int64_t printed = 0;
  const char* current = "";
};

inline State& state() {
  static State s;
  return s;
}

// At most this many failure lines are printed (a failing loop over 10^4 cases stays readable);
// all failures are still counted.
constexpr int64_t kMaxPrinted = 60;

struct Registry {
  std::vector<std::pair<const char*, void (*)()>> tests;
};

inline Registry& registry() {
  static Registry r;
  return r;
}

struct Registrar {
  Registrar(const char* name, void (*fn)()) { registry().tests.emplace_back(name, fn); }
};

template <typename T>
std::string show(const T& x) {
  std::ostringstream os;
  os.precision(17);
  os << x;
  return os.str();
}
inline std::string show(float x) {
  std::ostringstream os;
  os.precision(9);
  os << x;
  return os.str();
}
inline std::string show(bool x) { return x ? "true" : "false"; }
inline std::string show(unsigned long long x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%016llx", x);
  return buf;
}
inline std::string show(unsigned long x) { return show(static_cast<unsigned long long>(x)); }

inline bool record(bool ok, const char* file, int line, const std::string& what) {
  State& s = state();
  ++s.checks;
  if (ok) return true;
  ++s.failures;
  if (s.printed < kMaxPrinted) {
    std::fprintf(stderr, "%s:%d: [%s] FAILED: %s\n", file, line, s.current, what.c_str());
    ++s.printed;
    if (s.printed == kMaxPrinted) std::fprintf(stderr, "(further failures not printed)\n");
  }
  return false;
}

// Fails on NaN/inf in either side, on |a - b| > tol, and on a NaN tolerance.
template <typename A, typename B, typename C>
bool check_near(const A& a, const B& b, const C& tol, const char* file, int line, const char* ea,
                const char* eb, const char* et, const std::string& context) {
  const double da = static_cast<double>(a);
  const double db = static_cast<double>(b);
  const double dt = static_cast<double>(tol);
  const bool ok = std::isfinite(da) && std::isfinite(db) && std::fabs(da - db) <= dt;
  if (ok) return record(true, file, line, "");
  std::ostringstream os;
  os.precision(17);
  os << "|" << ea << " - " << eb << "| <= " << et << ": " << da << " vs " << db
     << " (diff " << std::fabs(da - db) << ", tol " << dt << ")";
  if (!context.empty()) os << " [" << context << "]";
  return record(false, file, line, os.str());
}

}  // namespace vggrpo_check

#define VGGRPO_CHECK_CAT2(a, b) a##b
#define VGGRPO_CHECK_CAT(a, b) VGGRPO_CHECK_CAT2(a, b)

#define TEST(name)                                                                      \
  static void name();                                                                   \
  static ::vggrpo_check::Registrar VGGRPO_CHECK_CAT(vggrpo_check_reg_, name)(#name, name); \
  static void name()

// CHECK(cond) / CHECK_MSG(cond, context): context is anything streamable into a std::ostream.
#define CHECK(cond) ::vggrpo_check::record(static_cast<bool>(cond), __FILE__, __LINE__, #cond)
#define CHECK_MSG(cond, context)                                                           \
  ([&]() -> bool {                                                                         \
    if (static_cast<bool>(cond)) return ::vggrpo_check::record(true, __FILE__, __LINE__, ""); \
    std::ostringstream vggrpo_os_;                                                         \
    vggrpo_os_.precision(17);                                                              \
    vggrpo_os_ << #cond << " [" << context << "]";                                         \
    return ::vggrpo_check::record(false, __FILE__, __LINE__, vggrpo_os_.str());            \
  }())

#define CHECK_EQ(a, b)                                                                       \
  ([&]() -> bool {                                                                           \
    const auto& vggrpo_a_ = (a);                                                             \
    const auto& vggrpo_b_ = (b);                                                             \
    if (vggrpo_a_ == vggrpo_b_) return ::vggrpo_check::record(true, __FILE__, __LINE__, ""); \
    return ::vggrpo_check::record(false, __FILE__, __LINE__,                                 \
                                  std::string(#a " == " #b ": ") +                           \
                                      ::vggrpo_check::show(vggrpo_a_) + " vs " +            \
                                      ::vggrpo_check::show(vggrpo_b_));                     \
  }())

#define CHECK_NEAR(a, b, tol) \
  ::vggrpo_check::check_near((a), (b), (tol), __FILE__, __LINE__, #a, #b, #tol, std::string())

#define CHECK_NEAR_MSG(a, b, tol, context)                                               \
  ([&]() -> bool {                                                                       \
    std::ostringstream vggrpo_os_;                                                       \
    vggrpo_os_.precision(17);                                                            \
    vggrpo_os_ << context;                                                               \
    return ::vggrpo_check::check_near((a), (b), (tol), __FILE__, __LINE__, #a, #b, #tol, \
                                      vggrpo_os_.str());                                 \
  }())

#ifndef VGGRPO_CHECK_NO_MAIN
int main() {
  auto& s = ::vggrpo_check::state();
  int failed_tests = 0;
  for (const auto& t : ::vggrpo_check::registry().tests) {
    s.current = t.first;
    const int64_t before = s.failures;
    t.second();
    const int64_t f = s.failures - before;
    std::printf("%-48s %s", t.first, f == 0 ? "ok\n" : "FAILED");
    if (f != 0) {
      std::printf(" (%lld failed checks)\n", static_cast<long long>(f));
      ++failed_tests;
    }
  }
  std::printf("%zu tests, %lld checks, %lld failed checks in %d tests\n",
              ::vggrpo_check::registry().tests.size(), static_cast<long long>(s.checks),
              static_cast<long long>(s.failures), failed_tests);
  if (s.checks == 0) {
    std::printf("no checks ran\n");
    return 1;
  }
  return s.failures == 0 ? 0 : 1;
}
#endif
