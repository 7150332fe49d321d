// lowbit error tiers (docs/architecture.md §11): LOWBIT_ASSERT for broken invariants (a bug: abort with the
// expression and place), typed exceptions derived from lowbit::error for recoverable errors
// (bad input, unknown names, shape mismatches). Format policies (NaN, Inf, overflow) are not
// errors: they follow the format's declared policy.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace lowbit {

// Base of every recoverable error lowbit throws; the message says what was expected, what was
// found and, where possible, how to fix it.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A format specification string that does not parse or names impossible parameters.
class format_error : public error {
 public:
  using error::error;
};

// Shapes or sizes that do not fit together.
class shape_error : public error {
 public:
  using error::error;
};

[[noreturn]] inline void assert_fail(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "lowbit: internal error: %s failed at %s:%d\n", expr, file, line);
  std::abort();
}

}  // namespace lowbit

#define LOWBIT_ASSERT(x) ((x) ? (void)0 : ::lowbit::assert_fail(#x, __FILE__, __LINE__))
#ifdef NDEBUG
#define LOWBIT_DASSERT(x) ((void)0)
#else
#define LOWBIT_DASSERT(x) LOWBIT_ASSERT(x)
#endif
