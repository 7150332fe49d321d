// The PTQ method table (methods.hpp; docs/ptq.md "Methods"). A new method is one entry here plus
// its file (the algorithm and its group function, declared in methods.hpp).
#include "lowbit/ptq/methods.hpp"

#include <fmt/format.h>

#include "lowbit/base/error.hpp"

namespace lowbit::ptq {

namespace {

// In the order `lowbit quantize --help` lists them; `id` is the entry's index (method_of).
constexpr method_needs data_free{.calibration = false};
const method_info kMethods[] = {
    {.id = method::rtn, .name = "rtn", .summary = "round to nearest, the baseline (docs/ptq.md §4.0)",
     .needs = data_free, .quantize = rtn_group},
    {.id = method::gptq, .name = "gptq", .summary = "GPTQ, Frantar et al. 2023 (docs/ptq.md §4.1)",
     .needs = {.hessian = true},
     // act_order with groups and dynamic group scales: no codes (gptq_result::packed)
     .quantize = gptq_group},
    // AWQ's s_x = mean |x_j| comes from the sampled rows, as its loss does.
    {.id = method::awq, .name = "awq", .summary = "AWQ, Lin et al. 2024 (docs/ptq.md §4.3)", .needs = {},
     .quantize = awq_group},
    {.id = method::smoothquant, .name = "smoothquant", .summary = "SmoothQuant, Xiao et al. 2023 (docs/ptq.md §4.2)",
     .needs = {.channel_stats = true}, .quantize = smoothquant_group},
    {.id = method::imatrix, .name = "imatrix",
     .summary = "importance-weighted RTN, llama.cpp's imatrix (docs/ptq.md §4.9)", .needs = {.square_sums = true},
     .quantize = imatrix_group},
    {.id = method::powerquant, .name = "powerquant", .summary = "PowerQuant, Yvinec et al. 2023 (docs/ptq.md §4.7)",
     .needs = data_free, .quantize = powerquant_group},
    {.id = method::llmfp4, .name = "llmfp4", .summary = "LLM-FP4, Liu et al. 2023 (docs/ptq.md §4.6)",
     .needs = {}, .quantize = llmfp4_group},
    // Its reconstruction loss reads C = X^T X / n: GPTQ's Hessian, halved.
    {.id = method::adaround, .name = "adaround", .summary = "AdaRound, Nagel et al. 2020 (docs/ptq.md §4.4)",
     .needs = {.hessian = true}, .quantize = adaround_group},
    {.id = method::nupes, .name = "nupes",
     .summary = "NUPES's learned power exponent, Yvinec et al. 2023, our reading (docs/ptq.md §4.7)",
     .needs = {.hessian = true}, .quantize = nupes_group},
};

}  // namespace

std::span<const method_info> methods() { return kMethods; }

const method_info& method_of(method m) {
  for (const method_info& i : kMethods)
    if (i.id == m) return i;
  throw error(fmt::format("method {}: not in the method table", static_cast<int>(m)));
}

const method_info* find_method(std::string_view name) {
  for (const method_info& i : kMethods)
    if (name == i.name) return &i;
  return nullptr;
}

method parse_method(const std::string& name) {
  if (const method_info* i = find_method(name)) return i->id;
  throw error(fmt::format("unknown PTQ method '{}': expected {}", name, method_names(", ", " or ")));
}

const char* method_name(method m) {
  for (const method_info& i : kMethods)
    if (i.id == m) return i.name;
  return "?";
}

std::string method_names(std::string_view sep, std::string_view last_sep) {
  std::string s;
  const size_t n = std::size(kMethods);
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) s += i + 1 == n ? last_sep : sep;
    s += kMethods[i].name;
  }
  return s;
}

void group_inputs::add(const float* x, int64_t n) {
  if (hessian) hessian->add(x, n);
  if (stats) stats->add(x, n);
  if (!sqsum.empty())
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < in; ++j) sqsum[j] += double(x[r * in + j]) * x[r * in + j];
  for (int64_t r = 0; r < n; ++r, ++seen)
    if (seen % stride == 0 && int64_t(rows.size()) / in < max_rows) rows.insert(rows.end(), x + r * in, x + (r + 1) * in);
}

}  // namespace lowbit::ptq
