// Static activation scales from calibration data, and LLM-FP4's activation search (calibrate.hpp).
#include "lowbit/ptq/calibrate.hpp"


#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/gemm.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/ptq/pipeline.hpp"

namespace lowbit::ptq {

namespace {

format bare(const element_format& e) {
  format f;
  f.element = e;
  return f;
}

// A statistic of 0 (nothing fired) still needs a usable clip (calibrate.hpp).
float usable(float clip) { return clip > 0 ? clip : 1.0f; }

// Sum of squared errors of the static cast of v with clipping value clip.
double static_sse(const float* v, int64_t n, const format& f, float clip, std::vector<float>& q) {
  q.resize(n);
  fake_quantize_static(v, q.data(), 1, n, f, {clip});
  double e = 0;
  for (int64_t i = 0; i < n; ++i) e += (double(v[i]) - q[i]) * (double(v[i]) - q[i]);
  return e;
}

// tr(G D^T D) for D = Q(X) - X [n, in] (G symmetric [in, in]); dtd: scratch [in, in].
double output_error(const float* X, const float* Xq, int64_t n, int64_t in, const float* gram,
                    std::vector<float>& d, std::vector<float>& dtd) {
  d.resize(n * in);
  for (int64_t i = 0; i < n * in; ++i) d[i] = Xq[i] - X[i];
  dtd.assign(in * in, 0.0f);
  tiled_ssyrk_upper(in, n, 1.0f, d.data(), in, 0.0f, dtd.data(), in);
  double e = 0;
  for (int64_t i = 0; i < in; ++i) {
    e += double(gram[i * in + i]) * dtd[i * in + i];
    for (int64_t j = i + 1; j < in; ++j) e += 2.0 * double(gram[i * in + j]) * dtd[i * in + j];
  }
  return e;
}

}  // namespace

void parse_act_statistic(const std::string& spec, act_calibration_options& o) {
  if (spec == "max") o.statistic = act_statistic::max;
  else if (spec == "mse") o.statistic = act_statistic::mse;
  else if (spec == "llmfp4") o.statistic = act_statistic::llmfp4;
  else if (spec.starts_with("percentile:")) {
    const std::string p = spec.substr(11);
    double v = 0;
    const auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
    if (ec != std::errc() || end != p.data() + p.size() || !(v > 0 && v <= 100))
      throw error(fmt::format("calibration statistic '{}': the percentile must be a number in (0, 100]", spec));
    o.statistic = act_statistic::percentile, o.percentile = v;
  } else {
    throw error(fmt::format("unknown calibration statistic '{}' (known: max, percentile:P, mse, llmfp4)", spec));
  }
}

std::string act_statistic_name(const act_calibration_options& o) {
  switch (o.statistic) {
    case act_statistic::max: return "max";
    case act_statistic::mse: return "mse";
    case act_statistic::llmfp4: return "llmfp4";
    case act_statistic::percentile: return fmt::format("percentile:{}", o.percentile);
  }
  return "?";
}

float clip_absmax(const float* v, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(v[i]));
  return m;
}

float clip_percentile(const float* v, int64_t n, double p) {
  if (n <= 0) return 0;
  std::vector<float> a(n);
  for (int64_t i = 0; i < n; ++i) a[i] = std::fabs(v[i]);
  const int64_t k = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(p / 100.0 * double(n))), 1, n);
  std::nth_element(a.begin(), a.begin() + (k - 1), a.end());
  return a[k - 1];
}

float clip_mse(const float* v, int64_t n, const format& element) {
  const float amax = clip_absmax(v, n);
  if (!(amax > 0)) return 0;
  std::vector<float> q;
  float best = amax;
  double best_err = std::numeric_limits<double>::infinity();
  for (int i = 0; i < 80; ++i) {
    const float c = static_cast<float>(double(amax) * (1.0 - i / 100.0));
    const double e = static_sse(v, n, element, c, q);
    if (e < best_err) best_err = e, best = c;
  }
  return best;
}

llmfp4_act_choice llmfp4_activation_search(const float* X, int64_t n, int64_t in, const float* gram,
                                           const format& element) {
  check_static_format(element, "llmfp4 activation search");
  if (element.element.kind != element_kind::minifloat)
    throw error(fmt::format("llmfp4: the activation format '{}' is not a floating-point element (eEmM)",
                            format_name(element)));
  const float amax = clip_absmax(X, n * in);
  llmfp4_act_choice best;
  best.element = element;
  best.clip = usable(amax);
  best.error = std::numeric_limits<double>::infinity();
  if (!(amax > 0)) return best.error = 0, best;
  std::vector<float> xq(n * in), d, dtd;
  bool first = true;
  for (const element_format& e : split_elements(element, /*paper=*/true)) {
    const format f = bare(e);
    const double emax = element_max(f);
    // The exponent bias b whose maxval is amax (fp_init_bias, generalised to the element's own
    // bias and maximum): clip(b) = emax 2^(bias - b).
    const double b0 = e.bias + std::log2(emax / amax);
    std::vector<double> factors{1.0};
    for (int i = 0; i <= 100; ++i) factors.push_back(0.01 + (1.2 - 0.01) * i / 100.0);
    for (double c : factors) {
      const double b = b0 * c;
      const double clip = emax * std::exp2(e.bias - b);
      if (!(clip > 0) || !std::isfinite(clip) || clip > std::numeric_limits<float>::max() ||
          clip < std::numeric_limits<float>::min() * emax)
        continue;
      const float cf = static_cast<float>(clip);
      fake_quantize_static(X, xq.data(), n, in, f, {cf});
      const double err = output_error(X, xq.data(), n, in, gram, d, dtd);
      if (first) best.max_error = err, first = false;  // the element itself at clip = amax
      if (err < best.error) best.element = f, best.bias = b, best.clip = cf, best.error = err;
    }
  }
  return best;
}

act_calibration_result calibrate_activations(const model& m, const quant_plan& base, const std::vector<int32_t>& ids,
                                             const act_calibration_options& o,
                                             const std::function<void(int64_t, int64_t)>& progress) {
  check_static_format(o.element, "calibrate");
  if (o.statistic == act_statistic::llmfp4 && o.per_channel)
    throw error("calibrate: llmfp4 searches one per-tensor bias per activation (the per-channel part is the "
                "pre-shifted bias of `quantize --method llmfp4 --preshift`); drop --per-channel");
  if (o.statistic == act_statistic::llmfp4 && o.element.element.kind != element_kind::minifloat)
    throw error(fmt::format("calibrate: llmfp4 needs a floating-point activation element (eEmM), not '{}'",
                            format_name(o.element)));
  const model_config& c = m.config;
  std::vector<std::string> names;
  for (const std::string& name : activation_names(c))
    if (glob_match(o.pattern, name)) names.push_back(name);
  if (names.empty())
    throw error(fmt::format("calibrate: pattern '{}' matches no activation (names: blk.N.attn_norm, blk.N.attn, "
                            "blk.N.ffn_norm, blk.N.ffn_act, output_norm)", o.pattern));
  const int ctx = o.calib_ctx;
  if (c.learned_positions() && ctx > c.max_seq_len)
    throw error(fmt::format("calibrate: --calib-ctx {} exceeds {}'s {} learned positions", ctx,
                            architecture_name(c.arch), c.max_seq_len));
  const std::vector<int64_t> starts = calibration_windows(int64_t(ids.size()), o.calib_samples, ctx, o.seed);

  // The model as evaluated, activations float: the rows each activation takes.
  quant_plan run_plan = base;
  run_plan.acts.reset(), run_plan.acts_spec.clear(), run_plan.classifier_acts.reset(), run_plan.act_rules.clear();
  std::map<std::string, std::vector<float>> rows;
  for (const std::string& name : names) rows[name];
  forward_session session(m, run_plan, ctx);
  session.set_dump([&](const std::string& name, const float* data, int64_t n, int64_t cols) {
    const auto it = rows.find(name);
    if (it != rows.end()) it->second.insert(it->second.end(), data, data + n * cols);
  });
  int64_t done = 0;
  for (const int64_t s : starts) {
    session.reset();
    session.forward(ids.data() + s, ctx);
    if (progress) progress(++done, int64_t(starts.size()) + int64_t(names.size()));
  }

  act_calibration_result result;
  result.rows = int64_t(starts.size()) * ctx;
  std::vector<act_rule> rules;
  const std::string note = act_statistic_name(o);
  const std::vector<layer_group> groups = block_groups(c);
  for (const std::string& name : names) {
    const std::vector<float>& x = rows[name];
    const int64_t cols = activation_width(c, name), n = int64_t(x.size()) / cols;
    act_calibration_site site{name, format_name(o.element), {}, -1};
    auto stat = [&](const float* v, int64_t count) {
      switch (o.statistic) {
        case act_statistic::max: return clip_absmax(v, count);
        case act_statistic::percentile: return clip_percentile(v, count, o.percentile);
        case act_statistic::mse: return clip_mse(v, count, o.element);
        case act_statistic::llmfp4: break;
      }
      return 0.0f;
    };
    if (o.statistic == act_statistic::llmfp4) {
      // G = sum over the layers reading the activation of W^T W: the classifier, or the
      // activation's layer group (the quantize pipeline's, ptq/methods.hpp).
      std::vector<std::string> readers;
      if (name == "output_norm") {
        readers = {c.tied_classifier ? "token_embd.weight" : "output.weight"};
      } else {
        const std::string blk = name.substr(0, name.rfind('.') + 1), input = name.substr(blk.size());
        for (const layer_group& g : groups)
          if (g.input == input)
            for (const std::string& w : g.weights) readers.push_back(blk + w);
        if (readers.empty()) throw error(fmt::format("calibrate: no layer group reads activation '{}'", name));
      }
      std::vector<float> gram(cols * cols, 0.0f);
      for (const std::string& r : readers) {
        const tensor& w = m.get(r);
        tiled_ssyrk_upper(cols, w.rows(), 1.0f, w.data.data(), cols, 1.0f, gram.data(), cols);
      }
      for (int64_t i = 0; i < cols; ++i)
        for (int64_t j = 0; j < i; ++j) gram[i * cols + j] = gram[j * cols + i];
      const llmfp4_act_choice ch = llmfp4_activation_search(x.data(), n, cols, gram.data(), o.element);
      site.format = format_name(ch.element);
      site.clip = {ch.clip};
      site.error = ch.error;
    } else if (o.per_channel) {
      std::vector<float> col(n);
      for (int64_t j = 0; j < cols; ++j) {
        for (int64_t i = 0; i < n; ++i) col[i] = x[i * cols + j];
        site.clip.push_back(usable(stat(col.data(), n)));
      }
    } else {
      site.clip = {usable(stat(x.data(), int64_t(x.size())))};
    }
    rules.push_back(act_rule{name, site.format, parse_format(site.format), site.clip, note});
    result.sites.push_back(std::move(site));
    if (progress) progress(++done, int64_t(starts.size()) + int64_t(names.size()));
  }
  result.plan = base;
  result.plan.act_rules.insert(result.plan.act_rules.begin(), rules.begin(), rules.end());
  return result;
}

}  // namespace lowbit::ptq
