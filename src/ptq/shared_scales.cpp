// ZeroQuant-FP's second scale constraint (Wu, Yao, He 2023; docs/ptq.md §4.5 [M]): group scales
// that differ from their row's shared maximum by powers of two (ptq.hpp).
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/element_ops.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace lowbit::ptq {

shared_pow2_result shared_pow2_quantize(const float* W, int64_t out, int64_t in, const format& f) {
  const std::string name = format_name(f);
  if (f.gran != granularity::group)
    throw error(fmt::format("--shared-pow2-scales: {} has no group scales (the constraint ties a row's group scales "
                            "together; use e.g. e2m1/g32)", name));
  if (f.named != preset::none || f.power != 0 || f.scale.kind != scale_kind::element ||
      f.element.kind == element_kind::uint_asym || f.rounding == rounding_mode::sr)
    throw error(fmt::format("--shared-pow2-scales: {} is not a group format with float scales, signed elements and "
                            "deterministic rounding (presets, power maps, e8m0/pow2 scales, uint and ~sr are refused)",
                            name));
  shared_pow2_result res;
  res.packed = quantized_tensor::allocate(f, out, in);
  res.weights.assign(static_cast<size_t>(out * in), 0.0f);
  const scale_context ctx = make_scale_context(f, true);
  const int64_t groups = groups_per_row(f, in), K = f.group_size;
  std::vector<group_scale> own(static_cast<size_t>(groups));
  std::vector<bool> zero(static_cast<size_t>(groups));
  std::vector<uint32_t> codes(static_cast<size_t>(in));
  const element_format& se = f.scale.element;
  for (int64_t r = 0; r < out; ++r) {
    float S = 0;  // the row's shared maximum: its largest finite group scale
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * K, n = std::min(K, in - c0);
      const float* x = W + r * in + c0;
      const group_stats st = group_stats_ref(x, n);
      own[g] = choose_scale(ctx, st, x, n, 1.0f);
      zero[g] = !st.nonfinite && st.amax == 0;
      if (!own[g].nonfinite && std::isfinite(own[g].scale)) S = std::max(S, own[g].scale);
    }
    for (int64_t g = 0; g < groups; ++g) {
      group_scale gs = own[g];
      if (!gs.nonfinite && S > 0) {
        // k = floor(log2(S / s_g)): the smallest S 2^-k >= s_g, then k lowered while S 2^-k is not a
        // value of the scale format (its exponent range; k = 0, S itself, always is).
        int k = zero[g] ? 0 : static_cast<int>(std::floor(std::log2(double(S) / double(gs.scale))));
        k = std::clamp(k, 0, 1000);  // (a zero group: any scale codes it; S, k = 0)
        while (k > 0 && std::ldexp(double(S), -k) < double(gs.scale)) --k;  // log2's rounding
        auto representable = [&](int kk) {
          const float v = std::ldexp(S, -kk);
          return v > 0 && std::isnormal(v) && decode_ref(se, encode_ref(se, v, rounding_mode::rne)) == v;
        };
        while (k > 0 && !representable(k)) --k;
        gs.scale = gs.stored = std::ldexp(S, -k);
      }
      store_group_scale(res.packed, r * groups + g, gs);
      const int64_t c0 = g * K, n = std::min(K, in - c0);
      for (int64_t c = c0; c < c0 + n; ++c) {
        codes[c] = quantize_value_ref(f, W[r * in + c], gs, 0.0f);
        res.weights[r * in + c] = dequantize_value_ref(f, codes[c], gs);
      }
    }
    pack_codes(codes.data(), in, f.element.bits, res.packed.codes.data() + r * res.packed.row_bytes);
  }
  return res;
}

}  // namespace lowbit::ptq
