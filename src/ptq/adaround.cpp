// AdaRound (Nagel et al., ICML 2020, arXiv 2004.10568; docs/ptq.md §4.4): learned up-or-down
// rounding of each weight on the format's grid, layer by layer, on the calibration inputs' second
// moment C = X^T X / n (ptq.hpp). Per Adam step, one GEMM D C [out, in] x [in, in] (OpenBLAS
// sgemm): the reconstruction loss tr(D C D^T) and its gradient -2 D C come from the same product.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/gemm.hpp"
#include "lowbit/kernels/element_ops.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/threads.hpp"
#include "lowbit/ptq/methods.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace lowbit::ptq {

namespace {

// [M] Layers of at most kSerialElements weights run on one thread (serial_scope, threads.hpp).
constexpr int64_t kSerialElements = int64_t{1} << 17;

// ggml's presets code an integer level; the value is monotone in the level (decreasing where q4_0's
// d is negative), so the grid values next to RTN's are those of the levels next to RTN's.
struct level_range {
  int lo = 0, hi = 0;
  bool twos_complement = false;  // codes are the level's low `bits` bits (q8_0, q3_k, q6_k)
  int bits = 0;
};

std::optional<level_range> preset_levels(const format& f) {
  const int b = f.element.bits;
  switch (f.named) {
    case preset::q4_0: case preset::q5_0: case preset::q4_1: case preset::q5_1:
    case preset::q2_k: case preset::q4_k: case preset::q5_k:
      return level_range{0, (1 << b) - 1, false, b};
    case preset::q8_0: return level_range{-127, 127, true, 8};
    case preset::q3_k: case preset::q6_k: return level_range{-(1 << (b - 1)), (1 << (b - 1)) - 1, true, b};
    default: return std::nullopt;
  }
}

grid_pair same(float v, uint32_t code) { return {v, v, code, code}; }

}  // namespace

grid_pair grid_neighbours(const format& f, float x, const group_scale& gs, uint32_t code) {
  const float rtn = dequantize_value_ref(f, code, gs);
  if (!std::isfinite(x) || !std::isfinite(rtn) || rtn == x) return same(rtn, code);
  grid_pair p;
  if (const auto lr = preset_levels(f)) {
    const uint32_t mask = (1u << lr->bits) - 1u;
    auto level_of = [&](uint32_t c) {
      return lr->twos_complement && (c & (1u << (lr->bits - 1))) ? int(c) - (1 << lr->bits) : int(c);
    };
    auto code_of = [&](int l) { return static_cast<uint32_t>(l) & mask; };
    const int l0 = level_of(code);
    bool have_down = false, have_up = false;
    for (int l = std::max(lr->lo, l0 - 1); l <= std::min(lr->hi, l0 + 1); ++l) {
      const uint32_t c = code_of(l);
      const float v = dequantize_value_ref(f, c, gs);
      if (v <= x && (!have_down || v > p.down)) p.down = v, p.code_down = c, have_down = true;
      if (v >= x && (!have_up || v < p.up)) p.up = v, p.code_up = c, have_up = true;
    }
    if (!have_down || !have_up) return same(rtn, code);  // beyond the block's range
    return p;
  }
  // Generic grids: the element's directed roundings of x / s (power maps: of |x / s|^A, monotone),
  // then the code of that value under the format's own rounding (exact: it is on the grid).
  format g = f;
  g.rounding = rounding_mode::rne;
  p.down = fake_quantize_value_ref(f, x, gs, 0.0f, rounding_mode::down);
  p.up = fake_quantize_value_ref(f, x, gs, 0.0f, rounding_mode::up);
  if (!std::isfinite(p.down) || !std::isfinite(p.up) || !(p.down <= x) || !(x <= p.up)) return same(rtn, code);
  p.code_down = quantize_value_ref(g, p.down, gs, 0.0f);
  p.code_up = quantize_value_ref(g, p.up, gs, 0.0f);
  if (dequantize_value_ref(f, p.code_down, gs) != p.down || dequantize_value_ref(f, p.code_up, gs) != p.up)
    return same(rtn, code);  // [M] a value the format's codes do not reach again: keep RTN's
  return p;
}

adaround_result adaround_quantize(const float* W, int64_t out, int64_t in, const double* C, const format& f,
                                  const adaround_options& o) {
  if (out < 0 || in < 0) throw shape_error(fmt::format("adaround: weight shape [{}, {}] has a negative dimension", out, in));
  if (o.iters < 0) throw error(fmt::format("adaround: --adaround-iters must be >= 0, got {}", o.iters));
  if (!(o.lambda >= 0) || !std::isfinite(o.lambda))
    throw error(fmt::format("adaround: --adaround-lambda must be a finite value >= 0, got {}", o.lambda));
  if (!(o.lr > 0) || !(o.warmup >= 0 && o.warmup <= 1) || !(o.zeta > 1) || !(o.gamma < 0) || !(o.beta_end > 0) ||
      !(o.beta_start >= o.beta_end))
    throw error(fmt::format("adaround: bad options (lr {}, warmup {}, zeta {}, gamma {}, beta {} -> {})", o.lr,
                            o.warmup, o.zeta, o.gamma, o.beta_start, o.beta_end));
  for (int64_t i = 0; i < in * in; ++i)
    if (!std::isfinite(C[i])) throw error("adaround: the calibration second moment X^T X / n holds NaN or Inf");
  const serial_scope serial(out * in <= kSerialElements);
  const int64_t n = out * in;
  adaround_result res;
  // RTN: the scales every candidate value is taken under.
  const quantized_tensor rtn =
      o.shared_pow2_scales ? shared_pow2_quantize(W, out, in, f).packed : quantize(W, out, in, f, o.tensor_id);
  std::vector<float> base(n), top(n), delta(n), rtn_values(n);  // down, up, up - down; fixed weights: delta 0
  std::vector<uint32_t> code_down(n), code_up(n);
  dequantize(rtn, rtn_values.data());
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) {
      const int64_t i = r * in + c;
      const group_scale gs = f.gran == granularity::none ? group_scale{} : stored_group_scale(rtn, r, c);
      const grid_pair p = grid_neighbours(f, W[i], gs, rtn.code(r, c));
      base[i] = p.down, top[i] = p.up;  // (up, not down + delta: -0.0 stays -0.0)
      delta[i] = p.up - p.down;
      code_down[i] = p.code_down, code_up[i] = p.code_up;
      if (!std::isfinite(delta[i])) delta[i] = 0;
    }

  const float range = static_cast<float>(o.zeta - o.gamma), gamma = static_cast<float>(o.gamma);
  auto rectified = [&](float v) {  // h(V) and whether it is inside (0, 1), where the clip passes gradients
    const float s = 1.0f / (1.0f + std::exp(-v));
    const float raw = s * range + gamma;
    return std::pair{std::clamp(raw, 0.0f, 1.0f), raw > 0.0f && raw < 1.0f};
  };
  // V where h(V) = (w - down) / (up - down), the rest of the rounding.
  std::vector<float> V(n, 0.0f), m1(n, 0.0f), m2(n, 0.0f), Wt(n), D(n), G(n);
  for (int64_t i = 0; i < n; ++i) {
    if (delta[i] == 0) continue;
    const double h0 = std::clamp((double(W[i]) - base[i]) / delta[i], 0.0, 1.0);
    const double p = (h0 - o.gamma) / (o.zeta - o.gamma);
    V[i] = static_cast<float>(std::log(p / (1 - p)));
  }
  const std::vector<float> Cf(C, C + in * in);
  // D = W - wt and G = D C (the gradient's GEMM); then tr(D C D^T) = sum D o G when asked.
  auto products = [&](const std::vector<float>& wt) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) D[i] = W[i] - wt[i];
    if (n == 0) return;
    tiled_sgemm(gemm_op::none, gemm_op::none, out, in, in, 1.0f, D.data(), in, Cf.data(), in, 0.0f, G.data(), in);
  };
  auto reconstruction = [&](const std::vector<float>& wt) {
    products(wt);
    double l = 0;
    for (int64_t i = 0; i < n; ++i) l += double(G[i]) * D[i];
    return l;
  };
  res.rtn_loss = reconstruction(rtn_values);

  // Adam (Kingma and Ba 2015; beta1 0.9, beta2 0.999, eps 1e-8), in float: one sigmoid per weight
  // and step, shared by h(V) and its derivative (sigmoid' = s (1 - s)).
  const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  // [M] Moments and gradients below 1e-30 become 0 (they move V by < 1e-22 against eps = 1e-8):
  // decaying moments of clipped weights would otherwise turn subnormal, which is slow.
  auto flush = [](float x) { return std::fabs(x) < 1e-30f ? 0.0f : x; };
  const int warm = static_cast<int>(std::lround(o.warmup * o.iters));
  double pow1 = 1, pow2 = 1;
  std::vector<float> sig(n, 0.5f);
  for (int t = 0; t < o.iters; ++t) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      if (delta[i] == 0) {
        Wt[i] = base[i];
        continue;
      }
      sig[i] = 1.0f / (1.0f + std::exp(-V[i]));
      Wt[i] = base[i] + std::clamp(sig[i] * range + gamma, 0.0f, 1.0f) * delta[i];
    }
    products(Wt);
    const bool regularised = o.lambda > 0 && t >= warm;
    const double rel = o.iters - warm > 0 ? double(t - warm) / double(o.iters - warm) : 1.0;
    const float beta = static_cast<float>(o.beta_end + (o.beta_start - o.beta_end) * (1.0 - rel));
    const float lambda = static_cast<float>(o.lambda);
    pow1 *= b1, pow2 *= b2;
    const float step = static_cast<float>(o.lr * std::sqrt(1 - pow2) / (1 - pow1));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      if (delta[i] == 0) continue;
      const float raw = sig[i] * range + gamma;
      if (!(raw > 0.0f && raw < 1.0f)) {  // the clip has no gradient: Adam's moments decay, V drifts on its momentum
        m1[i] = flush(b1 * m1[i]), m2[i] = flush(b2 * m2[i]);
      } else {
        // d tr(D C D^T) / dh = -2 (D C)_i (up - down)_i; d/dh (1 - |2h - 1|^beta) = -2 beta |2h-1|^(beta-1) sign(2h-1)
        float g = -2.0f * G[i] * delta[i];
        if (regularised) {
          const float u = 2.0f * raw - 1.0f, a = std::fabs(u);
          // |u|^(beta-1) as exp((beta-1) ln|u|), 0 below e^-60: no subnormal operands (each costs
          // ~100 cycles on x86; with beta near 20 most |u|^19 underflowed, 8x the step's time)
          const float lp = a > 0 ? (beta - 1.0f) * std::log(a) : -INFINITY;
          const float power = lp > -60.0f ? std::exp(lp) : 0.0f;
          g -= lambda * 2.0f * beta * power * (u > 0 ? 1.0f : u < 0 ? -1.0f : 0.0f);
        }
        g = flush(g * range * sig[i] * (1.0f - sig[i]));
        m1[i] = flush(b1 * m1[i] + (1 - b1) * g);
        m2[i] = flush(b2 * m2[i] + (1 - b2) * g * g);
      }
      V[i] -= step * m1[i] / (std::sqrt(m2[i]) + eps);
    }
  }

  // The relaxed weight at the end, then the hard one.
  res.soft.assign(n, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    res.soft[i] = delta[i] == 0 ? 0.0f : rectified(V[i]).first;
    Wt[i] = base[i] + res.soft[i] * delta[i];
  }
  res.soft_loss = reconstruction(Wt);
  res.weights.assign(n, 0.0f);
  std::vector<uint32_t> codes(n);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) {
      const int64_t i = r * in + c;
      if (delta[i] == 0) {  // on the grid, outside the range, or not finite: RTN's value and code
        res.weights[i] = rtn_values[i];
        codes[i] = rtn.code(r, c);
        continue;
      }
      const bool up = res.soft[i] >= 0.5f;
      res.weights[i] = up ? top[i] : base[i];
      codes[i] = up ? code_up[i] : code_down[i];
      res.flipped += res.weights[i] != rtn_values[i];
    }
  res.loss = reconstruction(res.weights);
  // Codes under RTN's scales, kept when they give back the weights bit for bit.
  quantized_tensor q = rtn;
  for (int64_t r = 0; r < out; ++r) pack_codes(codes.data() + r * in, in, f.element.bits, q.codes.data() + r * q.row_bytes);
  std::vector<float> back(n);
  dequantize(q, back.data());
  if (n == 0 || std::memcmp(back.data(), res.weights.data(), n * sizeof(float)) == 0) res.packed = std::move(q);
  return res;
}

// AdaRound as a method (methods.hpp): every layer of the group on their shared input's
// C = X^T X / n, GPTQ's Hessian (2/n) X^T X halved.
group_result adaround_group(const group_job& job) {
  std::vector<double> C = job.inputs->hessian->matrix();
  for (double& c : C) c /= 2;
  group_result r;
  for (size_t i = 0; i < job.layers.size(); ++i) {
    adaround_options ao = job.options.adaround;
    ao.tensor_id = ++job.tensor_id;
    ao.shared_pow2_scales = job.options.shared_pow2_scales;
    adaround_result a = adaround_quantize(job.layers[i].w, job.layers[i].out, job.in, C.data(), job.options.weights, ao);
    r.weights.push_back(std::move(a.weights));
    if (a.packed) job.packed[job.names[i]] = std::move(*a.packed);
  }
  return r;
}

}  // namespace lowbit::ptq
