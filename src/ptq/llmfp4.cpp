// LLM-FP4 (Liu et al., EMNLP 2023; nbasyl/LLM-FP4 quant_layers/fp_linear.py; docs/ptq.md §4.6): the
// joint search of a floating-point weight format's exponent/mantissa split and clipping (the
// real-valued exponent bias) on the layer's output error, and the pre-shifted exponent bias of
// per-channel activation quantization. The declarations (ptq.hpp) say what follows the repo and
// what is ours ([M]).
//
// Every candidate is quantized by lowbit's own codec: for a scaled format the group scale comes
// from choose_scale() (the format's scale rule, fed the candidate maximum m_c as the group amax),
// then y = x / s in float32 is cast onto the element by fake_quantize() and multiplied by s - the
// generic path of element_ops.hpp (encode(x / s), decode(code) * s) term by term, so the values,
// and the packed codes and scales returned, are the format's.
//
// The objective per output row is ||X (w_r - q_r)||^2, by the cheaper of two equal forms (as
// awq.cpp): direct, X D^T (n x in x out), or Gram, (D C) . D with C = X^T X (out x in x in) when
// n > in. Both run in float32 GEMMs with float64 sums; the final result is re-checked against
// RTN with output_error() so that the float32 ranking can never leave it worse than RTN.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/threads.hpp"
#include "lowbit/ptq/methods.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace lowbit::ptq {

namespace {

// [M] Layers of at most kSerialElements weights run on one thread (serial_scope, threads.hpp).
constexpr int64_t kSerialElements = int64_t{1} << 17;
constexpr double kInf = std::numeric_limits<double>::infinity();

// LLM-FP4's maxval(b) = (2 - 2^-M) 2^(2^E - 1 - b) and its inverse, the initial bias of a maximum
// m: b0 = 2^E - log2(m) + log2(2 - 2^-M) - 1 (fp_linear.py _initialize_intervals).
double fp_maxval(int E, int M, double b) {
  return (2.0 - std::ldexp(1.0, -M)) * std::exp2(std::ldexp(1.0, E) - 1.0 - b);
}
double fp_init_bias(int E, int M, double m) {
  return std::ldexp(1.0, E) - std::log2(m) + std::log2(2.0 - std::ldexp(1.0, -M)) - 1.0;
}

void check_format(const format& f) {
  if (f.named != preset::none || f.power != 0 || f.element.kind != element_kind::minifloat)
    throw error(fmt::format("llmfp4: '{}' is not a floating-point element format; LLM-FP4 searches eEmM splits "
                            "(e.g. e2m1/c, e4m3/c, e2m1/g32:e8m0)",
                            format_name(f)));
  if (f.element.bits < 3)
    throw error(fmt::format("llmfp4: '{}' has {} bits; a split needs sign + E >= 1 + M >= 0, so at least 3",
                            format_name(f), f.element.bits));
}

// The element alone (no scale), with the user's rounding: the cast of y = x / s.
format element_cast(const format& f, const element_format& e) {
  format c;
  c.element = e;
  c.gran = granularity::none;
  c.rounding = f.rounding;
  c.seed = f.seed;
  c.sr_bits = f.sr_bits;
  return c;
}

// Scales of a scaled format: one per (row, group) (row: G = 1), or a single one (tensor).
struct scale_layout {
  int64_t out = 0, in = 0, K = 0, G = 1;
  bool tensor = false;
  int64_t count() const { return tensor ? 1 : out * G; }
  int64_t index(int64_t r, int64_t c) const { return tensor ? 0 : r * G + c / K; }
};

// Q = s * cast(W / s) and, when asked, the codes of cast(W / s).
void apply_scales(const float* W, const scale_layout& L, const std::vector<float>& S, const format& cast,
                  uint64_t tensor_id, std::vector<float>& Y, std::vector<float>& Q, quantized_tensor* codes) {
  const size_t sz = static_cast<size_t>(L.out * L.in);
  Y.resize(sz);
  Q.resize(sz);
  for (int64_t r = 0; r < L.out; ++r)
    for (int64_t c = 0; c < L.in; ++c) Y[static_cast<size_t>(r * L.in + c)] = W[r * L.in + c] / S[static_cast<size_t>(L.index(r, c))];
  if (codes) *codes = quantize(Y.data(), L.out, L.in, cast, tensor_id);
  fake_quantize(Y.data(), Q.data(), L.out, L.in, cast, tensor_id);
  for (int64_t r = 0; r < L.out; ++r)
    for (int64_t c = 0; c < L.in; ++c) {
      const size_t k = static_cast<size_t>(r * L.in + c);
      Q[k] = Q[k] * S[static_cast<size_t>(L.index(r, c))];
    }
}

std::vector<float> bias_multipliers(const llmfp4_options& o) {
  if (o.n < 1) throw error(fmt::format("llmfp4: n (grid intervals) must be >= 1, got {}", o.n));
  if (!(std::isfinite(o.alpha) && std::isfinite(o.beta)))
    throw error("llmfp4: alpha and beta must be finite numbers");
  std::vector<float> c;
  for (int i = 0; i <= o.n; ++i) c.push_back(static_cast<float>(o.alpha + i * (o.beta - o.alpha) / o.n));
  return c;
}

struct search_state {
  element_format element;
  std::vector<float> multiplier;  // per selection unit
  std::vector<float> scales;      // scaled formats: [count]
  std::vector<float> clip;        // scaled formats: [count] the maximum each scale came from (NaN: RTN)
  double error = kInf;
};

// ---- scaled formats (row, group, tensor) ---------------------------------------------------------
search_state search_scaled(const float* W, const scale_layout& L, const format& f, const llmfp4_options& o,
                           const std::vector<element_format>& splits, const quantized_tensor& rtn_packed,
                           row_output_error& errors, std::vector<llmfp4_split>& report) {
  const int64_t units = L.tensor ? 1 : L.out, ns = L.count();
  // amax per scale
  std::vector<float> amax(static_cast<size_t>(ns), 0.0f);
  for (int64_t r = 0; r < L.out; ++r)
    for (int64_t c = 0; c < L.in; ++c) {
      float& a = amax[static_cast<size_t>(L.index(r, c))];
      a = std::max(a, std::fabs(W[r * L.in + c]));
    }
  const std::vector<float> grid = bias_multipliers(o);
  std::vector<float> S(static_cast<size_t>(ns)), clip(static_cast<size_t>(ns)), Y, Q, D(static_cast<size_t>(L.out * L.in));
  std::vector<double> err, unit_err(static_cast<size_t>(units));
  std::vector<char> bad(static_cast<size_t>(units));
  search_state best;

  for (const element_format& e : splits) {
    const bool user = e == f.element;
    format fc = f;
    fc.element = e;
    format fclip = fc;  // [M] clip candidates take the max rule where the user's rule reads the data
    if (fclip.rule == scale_rule::mse || fclip.rule == scale_rule::percentile) fclip.rule = scale_rule::max;
    const scale_context ctx = make_scale_context(fclip);
    const format cast = element_cast(f, e);
    std::vector<double> b0(static_cast<size_t>(ns));
    for (int64_t i = 0; i < ns; ++i)
      b0[static_cast<size_t>(i)] = amax[static_cast<size_t>(i)] > 0 ? fp_init_bias(e.ebits, e.mbits, amax[static_cast<size_t>(i)]) : 0.0;

    search_state cur;
    cur.element = e;
    cur.multiplier.assign(static_cast<size_t>(units), 1.0f);
    cur.scales.assign(static_cast<size_t>(ns), 1.0f);
    cur.clip.assign(static_cast<size_t>(ns), 0.0f);
    std::vector<double> cur_err(static_cast<size_t>(units), kInf);

    // Candidates: RTN of the user's format (user split), c = 1, then the grid.
    std::vector<float> cands;
    if (user) cands.push_back(std::numeric_limits<float>::quiet_NaN());
    cands.push_back(1.0f);
    cands.insert(cands.end(), grid.begin(), grid.end());
    for (const float c : cands) {
      std::fill(bad.begin(), bad.end(), 0);
      if (std::isnan(c)) {
        for (int64_t i = 0; i < ns; ++i) {
          S[static_cast<size_t>(i)] = rtn_packed.scales[static_cast<size_t>(i)];
          clip[static_cast<size_t>(i)] = std::numeric_limits<float>::quiet_NaN();
        }
      } else {
        for (int64_t i = 0; i < ns; ++i) {
          const float a = amax[static_cast<size_t>(i)];
          float m = a;  // c = 1 (and all-zero groups): the group's own maximum, i.e. RTN with the max rule
          if (c != 1.0f && a > 0) {
            const double mc = fp_maxval(e.ebits, e.mbits, static_cast<double>(c) * b0[static_cast<size_t>(i)]);
            m = static_cast<float>(mc);
          }
          group_stats st;
          st.amax = m;
          group_scale gs;
          const bool ok = std::isfinite(m) && m >= 0;
          if (ok) gs = choose_scale(ctx, st, nullptr, 0, 1.0f);
          if (!ok || gs.nonfinite || !(gs.scale > 0) || !std::isfinite(gs.scale)) {
            bad[static_cast<size_t>(L.tensor ? 0 : i / L.G)] = 1;
            S[static_cast<size_t>(i)] = 1.0f;
          } else {
            S[static_cast<size_t>(i)] = gs.scale;
          }
          clip[static_cast<size_t>(i)] = m;
        }
      }
      apply_scales(W, L, S, cast, o.tensor_id, Y, Q, nullptr);
      for (size_t k = 0; k < D.size(); ++k) D[k] = W[k] - Q[k];
      errors.per_row(D.data(), L.out, err);
      if (L.tensor) {
        double t = 0;
        for (const double v : err) t += v;
        unit_err[0] = t;
      } else {
        unit_err = err;
      }
      for (int64_t u = 0; u < units; ++u) {
        const double v = unit_err[static_cast<size_t>(u)];
        if (bad[static_cast<size_t>(u)] || !(v < cur_err[static_cast<size_t>(u)])) continue;  // ties: earlier wins
        cur_err[static_cast<size_t>(u)] = v;
        cur.multiplier[static_cast<size_t>(u)] = c;
        const int64_t i0 = L.tensor ? 0 : u * L.G, i1 = L.tensor ? 1 : (u + 1) * L.G;
        for (int64_t i = i0; i < i1; ++i) {
          cur.scales[static_cast<size_t>(i)] = S[static_cast<size_t>(i)];
          cur.clip[static_cast<size_t>(i)] = clip[static_cast<size_t>(i)];
        }
      }
    }
    cur.error = 0;
    for (const double v : cur_err) cur.error += v;
    report.push_back({format_name(fc), cur.error});
    if (cur.error < best.error) best = std::move(cur);  // ties: the earlier split (the user's first)
  }
  return best;
}

// ---- plain casts: integer exponent biases -------------------------------------------------------
search_state search_cast(const float* W, int64_t out, int64_t in, const format& f, const llmfp4_options& o,
                         const std::vector<element_format>& splits, row_output_error& errors,
                         std::vector<llmfp4_split>& report) {
  float amax = 0;
  for (int64_t i = 0; i < out * in; ++i) amax = std::max(amax, std::fabs(W[i]));
  const std::vector<float> grid = bias_multipliers(o);
  std::vector<float> Q(static_cast<size_t>(out * in)), D(Q.size());
  std::vector<double> err;
  search_state best;
  for (const element_format& e : splits) {
    const bool user = e == f.element;
    const double b0 = amax > 0 ? fp_init_bias(e.ebits, e.mbits, amax) : static_cast<double>(e.bias);
    // (multiplier, bias): the element as given (user split), round(b0), then round(c b0).
    std::vector<std::pair<float, int>> cands;
    if (user) cands.push_back({std::numeric_limits<float>::quiet_NaN(), e.bias});
    cands.push_back({1.0f, static_cast<int>(std::nearbyint(b0))});
    for (const float c : grid) {
      const double b = std::nearbyint(static_cast<double>(c) * b0);
      if (std::fabs(b) < 1e6) cands.push_back({c, static_cast<int>(b)});
    }
    std::vector<int> tried;
    search_state cur;
    cur.element = e;
    cur.multiplier = {1.0f};
    for (const auto& [c, bias] : cands) {
      if (std::find(tried.begin(), tried.end(), bias) != tried.end()) continue;  // the first c of a bias
      tried.push_back(bias);
      element_format eb;
      try {
        eb = make_minifloat(e.ebits, e.mbits, e.variant, bias, e.subnormals, e.overflow);
      } catch (const format_error&) {
        continue;  // values outside float32
      }
      const format fc = element_cast(f, eb);
      fake_quantize(W, Q.data(), out, in, fc, o.tensor_id);
      for (size_t k = 0; k < D.size(); ++k) D[k] = W[k] - Q[k];
      errors.per_row(D.data(), out, err);
      double t = 0;
      for (const double v : err) t += v;
      if (t < cur.error) {
        cur.error = t;
        cur.element = eb;
        cur.multiplier = {c};
      }
    }
    format fs = f;
    fs.element = e;
    report.push_back({format_name(fs), cur.error});
    if (cur.error < best.error) best = std::move(cur);
  }
  return best;
}

}  // namespace

// The split elements in search order: the user's own element first (ties go to it), then every
// E = 1 .. bits - 2 (M >= 0 ... E = bits - 1 is M = 0) that the engine accepts.
std::vector<element_format> split_elements(const format& f, bool paper) {
  const element_format& u = f.element;
  std::vector<element_format> out{u};
  for (int E = 1; E <= u.bits - 1; ++E) {
    const int M = u.bits - 1 - E;
    if (paper && u.bits == 4 && M > 2) continue;
    if (paper && u.bits == 8 && (M < 2 || M > 6)) continue;
    try {
      const element_format e =
          make_minifloat(E, M, float_variant::finite, default_bias(E, float_variant::finite), u.subnormals);
      if (!(e == u)) out.push_back(e);
    } catch (const format_error&) {
      // E > 8, M > 23, or values outside float32: not a format the engine supports
    }
  }
  return out;
}


std::vector<std::string> llmfp4_splits(const format& f, bool paper_splits) {
  check_format(f);
  std::vector<std::string> out;
  for (const element_format& e : split_elements(f, paper_splits)) {
    format fc = f;
    fc.element = e;
    out.push_back(format_name(fc));
  }
  return out;
}

llmfp4_result llmfp4_quantize(const float* X, int64_t n, int64_t in, const float* W, int64_t out, const format& f,
                              const llmfp4_options& o) {
  check_format(f);
  if (n <= 0 || in <= 0 || out <= 0)
    throw shape_error(fmt::format("llmfp4: empty problem (n {}, in {}, out {})", n, in, out));
  for (int64_t i = 0; i < out * in; ++i)
    if (!std::isfinite(W[i])) throw error(fmt::format("llmfp4: weight element {} is not finite", i));
  for (int64_t i = 0; i < n * in; ++i)
    if (!std::isfinite(X[i])) throw error(fmt::format("llmfp4: calibration input element {} is not finite", i));
  const serial_scope serial(out * in <= kSerialElements);

  const std::vector<element_format> splits = split_elements(f, o.paper_splits);
  row_output_error errors(X, n, in);
  llmfp4_result res;
  quantized_tensor rtn_packed = quantize(W, out, in, f, o.tensor_id);
  std::vector<float> rtn(static_cast<size_t>(out * in));
  dequantize(rtn_packed, rtn.data());

  format chosen = f;
  if (f.gran == granularity::none) {
    search_state s = search_cast(W, out, in, f, o, splits, errors, res.splits);
    chosen.element = s.element;
    res.multiplier = s.multiplier;
    res.weights.resize(rtn.size());
    fake_quantize(W, res.weights.data(), out, in, chosen, o.tensor_id);
    res.packed = quantize(W, out, in, chosen, o.tensor_id);
  } else {
    scale_layout L;
    L.out = out;
    L.in = in;
    L.tensor = f.gran == granularity::tensor;
    L.K = f.gran == granularity::group ? f.group_size : in;
    L.G = f.gran == granularity::group ? groups_per_row(f, in) : 1;
    search_state s = search_scaled(W, L, f, o, splits, rtn_packed, errors, res.splits);
    chosen.element = s.element;
    res.multiplier = s.multiplier;
    res.clip_max = s.clip;
    std::vector<float> Y;
    quantized_tensor codes;
    apply_scales(W, L, s.scales, element_cast(f, s.element), o.tensor_id, Y, res.weights, &codes);
    res.packed = quantized_tensor::allocate(chosen, out, in);
    LOWBIT_ASSERT(res.packed.codes.size() == codes.codes.size() && res.packed.scales.size() == s.scales.size());
    res.packed.codes = std::move(codes.codes);
    res.packed.scales = s.scales;  // non-nvfp4: the stored scale is the scale
  }
  res.error = output_error(X, n, in, W, res.weights.data(), out);
  res.rtn_error = output_error(X, n, in, W, rtn.data(), out);
  if (!(res.error < res.rtn_error)) {  // the float32 ranking may tie or misorder: RTN then
    chosen = f;
    res.rtn = true;
    res.error = res.rtn_error;
    res.weights = std::move(rtn);
    res.packed = std::move(rtn_packed);
    std::fill(res.multiplier.begin(), res.multiplier.end(), std::numeric_limits<float>::quiet_NaN());
    std::fill(res.clip_max.begin(), res.clip_max.end(), std::numeric_limits<float>::quiet_NaN());
  }
  res.fmt = chosen;
  res.format = format_name(chosen);
  return res;
}

llmfp4_preshift_result llmfp4_preshift(const float* act_absmax, int64_t in, const element_format& act) {
  if (act.kind != element_kind::minifloat)
    throw error(fmt::format("llmfp4_preshift: the activation element '{}' is not eEmM", element_name(act)));
  if (in < 0) throw shape_error(fmt::format("llmfp4_preshift: negative channel count {}", in));
  const int E = act.ebits, M = act.mbits;
  llmfp4_preshift_result r;
  r.channel_bias.assign(static_cast<size_t>(in), std::numeric_limits<double>::quiet_NaN());
  r.rho.assign(static_cast<size_t>(in), 0);
  r.scales.assign(static_cast<size_t>(in), 1.0f);
  double bt = kInf;
  for (int64_t j = 0; j < in; ++j) {
    const float m = act_absmax[j];
    if (m > 0 && std::isfinite(m)) {
      const double b = fp_init_bias(E, M, m);
      r.channel_bias[static_cast<size_t>(j)] = b;
      bt = std::min(bt, b);
    }
  }
  if (bt == kInf) {  // no channel carries a maximum: nothing to shift
    r.tensor_bias = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  r.tensor_bias = bt;
  const double zero_point = std::nearbyint(bt);  // torch.round: ties to even (the default FP mode)
  const double hi = std::min(std::ldexp(1.0, E) - 1.0, 126.0);
  for (int64_t j = 0; j < in; ++j) {
    const double b = r.channel_bias[static_cast<size_t>(j)];
    if (std::isnan(b)) continue;
    const int rho = static_cast<int>(std::clamp(std::nearbyint(b) - zero_point, 0.0, hi));
    r.rho[static_cast<size_t>(j)] = rho;
    r.scales[static_cast<size_t>(j)] = std::ldexp(1.0f, -rho);
  }
  return r;
}

// LLM-FP4 as a method (methods.hpp; docs/ptq.md §4.6): the split + clip search per layer, with the
// pre-shifted exponent bias (--preshift) where a norm takes the per-channel factor 2^-rho_j. [M]
// The activation element is the weights' (W4A4 in one format); the channel maxima are those of
// the sampled rows.
group_result llmfp4_group(const group_job& job) {
  const quantize_options& o = job.options;
  const group_inputs& gi = *job.inputs;
  const int64_t in = job.in;
  llmfp4_options lo;
  lo.preshift = o.llmfp4_preshift;
  group_result r;
  if (lo.preshift && job.where == fold::norm && o.weights.element.kind == element_kind::minifloat && gi.n_rows() > 0) {
    channel_stats st(in);
    st.add(gi.rows.data(), gi.n_rows());
    r.scales = llmfp4_preshift(st.absmax.data(), in, o.weights.element).scales;
    if (std::all_of(r.scales.begin(), r.scales.end(), [](float v) { return v == 1.0f; })) r.scales.clear();
  }
  std::vector<float> Xs = gi.rows;  // the inputs the layer sees: X diag(s)^-1
  if (!r.scales.empty()) divide_columns(Xs.data(), gi.n_rows(), in, r.scales.data());
  for (size_t i = 0; i < job.layers.size(); ++i) {
    const int64_t out = job.layers[i].out;
    std::vector<float> w(job.layers[i].w, job.layers[i].w + out * in);
    if (!r.scales.empty()) scale_columns(w.data(), out, in, r.scales.data());
    llmfp4_options li = lo;
    li.tensor_id = ++job.tensor_id;
    llmfp4_result q = llmfp4_quantize(Xs.data(), gi.n_rows(), in, w.data(), out, o.weights, li);
    r.weights.push_back(std::move(q.weights));
    job.packed[job.names[i]] = std::move(q.packed);
  }
  return r;
}

}  // namespace lowbit::ptq
