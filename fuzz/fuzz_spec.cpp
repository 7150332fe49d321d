// The format-spec parser (docs/formats.md grammar) on arbitrary bytes. Oracles beyond "no crash,
// no sanitizer report, no hang":
//   - round trip: a spec that parses prints a canonical name that parses to the same format and
//     prints the same name (parse_format and format_name are inverses, format.hpp);
//   - the fast kernels equal the _ref kernels bit for bit on a fixed small tensor with specials.
// Refusals are lowbit::error (format_error); anything else escaping is a finding.
#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_input.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowbit;
  if (size > 256) return 0;  // specs are short; long inputs only slow the search down
  const std::string spec(reinterpret_cast<const char*>(data), size);
  format f;
  try {
    f = parse_format(spec);
  } catch (const error&) {
    return 0;
  }
  const std::string name = format_name(f);
  format again;
  try {
    again = parse_format(name);
  } catch (const error&) {
    fuzz::finding("the canonical name of a parsed spec does not parse");
  }
  if (!(again == f)) fuzz::finding("parse(format_name(f)) != f");
  if (format_name(again) != name) fuzz::finding("format_name is not idempotent");
  (void)bits_per_element(f);
  (void)bits_description(f);

  // fast == reference on 2 rows of 256 (every group size up to 256 fits; K-quants need 256).
  constexpr int64_t rows = 2, cols = 256;
  std::vector<float> x(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) x[i] = std::ldexp(float((i * 2654435761u) % 2001) - 1000.0f, int(i % 23) - 16);
  x[3] = 0.0f, x[4] = -0.0f, x[300] = INFINITY, x[301] = NAN, x[7] = 3e38f, x[8] = 1e-45f;
  std::vector<float> a(x.size()), b(x.size());
  try {
    fake_quantize_ref(x.data(), a.data(), rows, cols, f, 1);
  } catch (const error&) {
    return 0;  // a format the kernels refuse for this shape (the fast one must refuse too)
  }
  fake_quantize(x.data(), b.data(), rows, cols, f, 1);
  for (size_t i = 0; i < x.size(); ++i)
    if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i]) && !(std::isnan(a[i]) && std::isnan(b[i])))
      fuzz::finding("fake_quantize != fake_quantize_ref");
  return 0;
}
