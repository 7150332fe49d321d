// Whole-model post-training quantization, layer by layer (pipeline.hpp).
#include "lowbit/ptq/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/safetensors.hpp"
#include "lowbit/error.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/ptq/rotate.hpp"
#include "lowbit/ptq/search.hpp"

namespace fs = std::filesystem;

namespace lowbit::ptq {

method parse_method(const std::string& name) {
  if (name == "rtn") return method::rtn;
  if (name == "gptq") return method::gptq;
  if (name == "awq") return method::awq;
  if (name == "smoothquant") return method::smoothquant;
  if (name == "imatrix") return method::imatrix;
  if (name == "powerquant") return method::powerquant;
  if (name == "llmfp4") return method::llmfp4;
  throw error(fmt::format("unknown PTQ method '{}': expected rtn, gptq, awq, smoothquant, imatrix, powerquant or llmfp4", name));
}

const char* method_name(method m) {
  switch (m) {
    case method::rtn: return "rtn";
    case method::gptq: return "gptq";
    case method::awq: return "awq";
    case method::smoothquant: return "smoothquant";
    case method::imatrix: return "imatrix";
    case method::powerquant: return "powerquant";
    case method::llmfp4: return "llmfp4";
  }
  return "?";
}

std::vector<int64_t> calibration_windows(int64_t n_tokens, int samples, int ctx, uint64_t seed) {
  if (samples <= 0 || ctx < 2)
    throw error(fmt::format("calibration: {} samples of {} tokens (need >= 1 sample of >= 2 tokens)",
                            samples, ctx));
  const int64_t half = n_tokens / 2, available = (n_tokens - half) / ctx;
  if (available < samples)
    throw error(fmt::format("calibration: the second half of the data ({} tokens) holds {} windows of {} "
                            "tokens; {} were asked for (lower --calib-samples or --calib-ctx)",
                            n_tokens - half, available, ctx, samples));
  // Fisher-Yates over the window indices with mt19937_64, whose output the standard fixes, so a
  // seed picks the same windows everywhere.
  std::vector<int64_t> idx(available);
  for (int64_t i = 0; i < available; ++i) idx[i] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = available - 1; i > 0; --i) std::swap(idx[i], idx[rng() % uint64_t(i + 1)]);
  idx.resize(samples);
  std::sort(idx.begin(), idx.end());
  for (int64_t& i : idx) i = half + i * ctx;
  return idx;
}

namespace {

// The linear layers of a block that read one input, and where a per-input-channel scale s of
// that input can be folded (divided out) so the float function is unchanged.
struct layer_group {
  std::string input;                 // dump name suffix: attn_norm, attn, ffn_norm, ffn_act
  std::vector<std::string> weights;  // tensor name suffixes
  enum class fold { none, norm, rows } how = fold::none;
  std::string fold_tensor;           // norm prefix (fold::norm) or weight whose rows produce the input
  int64_t fold_row0 = 0;             // first row of that weight (GPT-2's v inside attn_qkv)
};

std::vector<layer_group> block_groups(const model_config& c) {
  const bool llama = c.arch == architecture::llama;
  std::vector<layer_group> g;
  using F = layer_group::fold;
  if (llama) {
    g.push_back({"attn_norm", {"attn_q.weight", "attn_k.weight", "attn_v.weight"}, F::norm, "attn_norm", 0});
    // Attention output channel j is a mix of v's output row j over positions — linear in v, so a
    // scale folds into v's rows, but only when every query head has its own kv head.
    g.push_back({"attn", {"attn_output.weight"}, c.n_heads == c.n_kv_heads ? F::rows : F::none,
                 "attn_v.weight", 0});
    g.push_back({"ffn_norm", {"ffn_gate.weight", "ffn_up.weight"}, F::norm, "ffn_norm", 0});
    // ffn_act = silu(gate) * up is linear in up's output: fold into up's rows.
    g.push_back({"ffn_act", {"ffn_down.weight"}, F::rows, "ffn_up.weight", 0});
  } else {
    g.push_back({"attn_norm", {"attn_qkv.weight"}, F::norm, "attn_norm", 0});
    g.push_back({"attn", {"attn_output.weight"}, F::rows, "attn_qkv.weight", 2 * int64_t(c.dim)});
    g.push_back({"ffn_norm", {"ffn_up.weight"}, F::norm, "ffn_norm", 0});
    g.push_back({"ffn_act", {"ffn_down.weight"}, F::none, "", 0});  // GELU: no exact fold
  }
  return g;
}

// What one block's pass collects about one group's input.
struct group_inputs {
  int64_t in = 0;
  std::optional<hessian_accumulator> hessian;
  std::optional<channel_stats> stats;
  std::vector<float> rows;  // sampled rows [n, in]
  std::vector<double> sqsum;  // [in] sum of x_j^2 over every row (importance-weighted RTN)
  int64_t seen = 0, stride = 1, max_rows = 0;

  void add(const float* x, int64_t n) {
    if (hessian) hessian->add(x, n);
    if (stats) stats->add(x, n);
    if (!sqsum.empty())
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < in; ++j) sqsum[j] += double(x[r * in + j]) * x[r * in + j];
    for (int64_t r = 0; r < n; ++r, ++seen)
      if (seen % stride == 0 && int64_t(rows.size()) / in < max_rows)
        rows.insert(rows.end(), x + r * in, x + (r + 1) * in);
  }
  int64_t n_rows() const { return int64_t(rows.size()) / in; }
};

// ||X W^T - Xq Q^T||^2 / rows: the layer's output error on sampled calibration rows, where Xq
// are the inputs the quantized layer sees (X / s after a folded scale).
double layer_error(const std::vector<float>& X, const std::vector<float>& Xq, int64_t in,
                   const std::vector<float>& W, const std::vector<float>& Q, int64_t out) {
  const int64_t n = int64_t(X.size()) / in;
  if (n == 0) return 0;
  std::vector<float> a(n * out), b(n * out);
  matmul_nt(X.data(), W.data(), a.data(), n, in, out);
  matmul_nt(Xq.data(), Q.data(), b.data(), n, in, out);
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) e += double(a[i] - b[i]) * double(a[i] - b[i]);
  return e / n;
}

void fold_scale(model& m, const std::string& block, const layer_group& g, const std::vector<float>& s) {
  const int64_t in = int64_t(s.size());
  if (g.how == layer_group::fold::norm) {
    tensor& w = *m.find(block + g.fold_tensor + ".weight");
    divide_columns(w.data.data(), 1, in, s.data());
    if (tensor* b = m.find(block + g.fold_tensor + ".bias")) divide_columns(b->data.data(), 1, in, s.data());
  } else if (g.how == layer_group::fold::rows) {
    tensor& w = *m.find(block + g.fold_tensor);
    divide_rows(w.data.data() + g.fold_row0 * w.cols(), in, w.cols(), s.data());
    const std::string bias = block + g.fold_tensor.substr(0, g.fold_tensor.size() - 6) + "bias";
    if (tensor* b = m.find(bias)) divide_columns(b->data.data() + g.fold_row0, 1, in, s.data());
  }
}

// What a checkpoint must match to be resumed: the model, the token stream and every option that
// changes a bit of the result.
std::string run_fingerprint(const model& m, const std::vector<int32_t>& ids, const quantize_options& o) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const void* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const uint8_t*>(p)[i]) * 1099511628211ull;
  };
  mix(ids.data(), ids.size() * sizeof(int32_t));
  for (const auto& [name, t] : m.tensors) {
    mix(name.data(), name.size());
    mix(t.data.data(), t.data.size() * sizeof(float));
  }
  const std::string opts = fmt::format(
      "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}", method_name(o.how),
      format_name(o.weights), o.calib_samples, o.calib_ctx, o.seed, o.gptq.percdamp, o.gptq.block_size,
      o.gptq.act_order, o.gptq.static_groups, o.gptq.float64, o.smooth_alpha, o.max_sample_rows, o.lorc_rank,
      o.lorc_format ? format_name(*o.lorc_format) : "-", o.bias_correct, o.llmfp4_preshift, o.awq.n_grid,
      o.awq.clip, o.awq.clip_grid, o.awq.max_shrink, o.awq.clip_sample_tokens, o.equalize, o.rotate, o.rotate_seed);
  mix(opts.data(), opts.size());
  return fmt::format("{:016x}", h);
}

void save_checkpoint(const model& m, const quantize_report& report, int blocks_done, uint64_t tensor_id,
                     const std::string& dir, const std::string& fingerprint) {
  fs::create_directories(dir);
  // The model goes to a file named for the block, then the state (atomic) names it and the
  // previous file goes: a crash at any point leaves a state naming a complete model file.
  const std::string model_file = fmt::format("model-{}.safetensors", blocks_done);
  save_safetensors_model(m, (fs::path(dir) / model_file).string(), "F32", report.packed);
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : report.layers)
    layers.push_back({{"name", l.name}, {"seconds", l.seconds}, {"error", l.error}, {"rtn_error", l.rtn_error}});
  // tensor_id: the stochastic-rounding stream position, so a resumed run draws what an
  // uninterrupted one would.
  const nlohmann::json state = {{"fingerprint", fingerprint}, {"blocks_done", blocks_done},
                                {"tensor_id", tensor_id}, {"model", model_file}, {"layers", layers}};
  write_text_file_atomic((fs::path(dir) / "state.json").string(), state.dump(1) + "\n");
  const std::string previous = fmt::format("model-{}.safetensors", blocks_done - 1);
  std::error_code ec;
  fs::remove(fs::path(dir) / previous, ec);
}

// Returns the number of finished blocks restored into m and report (0 when there is nothing to
// resume); throws when the directory holds another run's checkpoint.
int load_checkpoint(model& m, quantize_report& report, uint64_t& tensor_id, const std::string& dir,
                    const std::string& fingerprint) {
  const fs::path state_path = fs::path(dir) / "state.json";
  if (!fs::exists(state_path)) return 0;
  std::ifstream in(state_path);
  const nlohmann::json state = nlohmann::json::parse(in, nullptr, false);
  if (!state.is_object() || !state.contains("fingerprint") || !state.contains("blocks_done") ||
      !state.contains("model") || !state["model"].is_string() || !state["blocks_done"].is_number_integer())
    throw error(fmt::format("{}: not a lowbit checkpoint state; remove the directory to start over", state_path.string()));
  if (state["fingerprint"] != fingerprint)
    throw error(fmt::format("{}: a checkpoint of another run (model, data or options differ); remove it to start "
                            "over", dir));
  const int64_t done = state["blocks_done"].get<int64_t>();
  if (done < 0 || done > m.config.n_layers) throw error(fmt::format("{}: blocks_done {} is out of range", dir, done));
  if (!state.contains("tensor_id") || !state["tensor_id"].is_number_unsigned())
    throw error(fmt::format("{}: state.json has no tensor_id", dir));
  tensor_id = state["tensor_id"].get<uint64_t>();
  const std::string model_path = (fs::path(dir) / state["model"].get<std::string>()).string();
  model saved = load_safetensors_model(model_path);
  for (auto& [name, t] : saved.tensors) m.get_mut(name).data = std::move(t.data);
  report.packed = load_packed_tensors(model_path);
  const nlohmann::json layers = state.value("layers", nlohmann::json::array());
  if (!layers.is_array()) throw error(fmt::format("{}: state.json 'layers' is not an array", dir));
  for (const auto& l : layers) {
    if (!l.is_object() || !l.contains("name") || !l["name"].is_string())
      throw error(fmt::format("{}: state.json has a malformed layer entry", dir));
    auto number = [&](const char* k) { return l.contains(k) && l[k].is_number() ? l[k].get<double>() : 0.0; };
    report.layers.push_back({l["name"].get<std::string>(), number("seconds"), number("error"), number("rtn_error")});
  }
  return static_cast<int>(done);
}

// Cross-layer equalization of every (producer rows, consumer columns) pair whose scale folds
// exactly (the groups with fold::rows). Returns the number of pairs equalized.
int equalize_model(model& m, const std::vector<layer_group>& groups) {
  int pairs = 0;
  for (int l = 0; l < m.config.n_layers; ++l) {
    const std::string block = fmt::format("blk.{}.", l);
    for (const layer_group& g : groups) {
      if (g.how != layer_group::fold::rows) continue;
      tensor& w2 = m.get_mut(block + g.weights[0]);  // consumer [out, in]
      const tensor& w1 = m.get(block + g.fold_tensor);  // producer rows [row0, row0 + in)
      const int64_t in = w2.cols(), cols1 = w1.cols();
      std::vector<float> s(in, 1.0f);
      for (int64_t j = 0; j < in; ++j) {
        float r1 = 0, r2 = 0;
        for (int64_t c = 0; c < cols1; ++c) r1 = std::max(r1, std::fabs(w1.data[(g.fold_row0 + j) * cols1 + c]));
        for (int64_t r = 0; r < w2.rows(); ++r) r2 = std::max(r2, std::fabs(w2.data[r * in + j]));
        if (r1 > 0 && r2 > 0) s[j] = static_cast<float>(std::sqrt(double(r1) / double(r2)));
      }
      scale_columns(w2.data.data(), w2.rows(), in, s.data());
      fold_scale(m, block, g, s);
      ++pairs;
    }
  }
  return pairs;
}

}  // namespace

quantize_report quantize_model(model& m, const std::vector<int32_t>& ids, const quantize_options& o,
                               const ptq_progress& progress) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  m.validate();
  const model_config& c = m.config;
  quantize_report report;
  const auto groups = block_groups(c);
  uint64_t tensor_id = 0;
  // RTN of one weight. K-quants: ggml's scale search run again on its own output may choose
  // other scales, so the codes travel with the values for an exact export.
  auto rtn_with_codes = [&](const float* w, int64_t out, int64_t in, const std::string& name) {
    if (!is_kquant(o.weights)) return rtn_quantize(w, out, in, o.weights, ++tensor_id);
    quantized_tensor q = quantize(w, out, in, o.weights, ++tensor_id);
    std::vector<float> values(static_cast<size_t>(out * in));
    dequantize(q, values.data());
    report.packed[name] = std::move(q);
    return values;
  };
  if (o.rotate) rotate_residual(m, o.rotate_seed);
  if (o.equalize) equalize_model(m, groups);

  const bool data_free = o.how == method::rtn || o.how == method::powerquant;
  if (data_free && !o.bias_correct) {  // no calibration: every weight on its own
    for (const std::string& name : m.linear_weight_names()) {
      tensor& t = m.get_mut(name);
      const auto t0 = clock::now();
      auto q = o.how == method::powerquant
                   ? powerquant_search(t.data.data(), t.rows(), t.cols(), o.weights).weights
                   : rtn_with_codes(t.data.data(), t.rows(), t.cols(), name);
      t.data = std::move(q);
      report.layers.push_back({name, std::chrono::duration<double>(clock::now() - t0).count(), 0, 0});
      if (progress) progress(report.layers.size(), m.linear_weight_names().size());
    }
    report.seconds = std::chrono::duration<double>(clock::now() - t_start).count();
    return report;
  }

  const int ctx = o.calib_ctx;
  if (c.arch == architecture::gpt2 && ctx > c.max_seq_len)
    throw error(fmt::format("calibration: --calib-ctx {} exceeds GPT-2's {} positions", ctx, c.max_seq_len));
  const auto starts = calibration_windows(int64_t(ids.size()), o.calib_samples, ctx, o.seed);
  report.windows_available = (int64_t(ids.size()) - int64_t(ids.size()) / 2) / ctx;
  for (int64_t s : starts)
    for (int i = 0; i < ctx; ++i)
      if (ids[s + i] < 0 || ids[s + i] >= c.vocab_size)
        throw error(fmt::format("calibration: token id {} outside the model's vocabulary", ids[s + i]));

  const int64_t dim = c.dim, W = int64_t(starts.size());
  forward_session session(m, quant_plan{}, ctx);
  std::vector<float> residual(W * ctx * dim);  // [window, token, dim]: the input of block l
  const std::string fingerprint = o.checkpoint_dir.empty() ? "" : run_fingerprint(m, ids, o);
  const int first_block =
      o.checkpoint_dir.empty() ? 0 : load_checkpoint(m, report, tensor_id, o.checkpoint_dir, fingerprint);
  report.resumed_at_block = first_block;
  for (int64_t w = 0; w < W; ++w) {
    session.embed(ids.data() + starts[w], ctx, residual.data() + w * ctx * dim);
    // Resumed: the finished (quantized) blocks make the first unfinished block's input.
    if (first_block > 0) session.forward_blocks(residual.data() + w * ctx * dim, ctx, 0, first_block);
  }

  const int64_t total_steps = int64_t(c.n_layers - first_block) * W * 2;
  int64_t steps = 0;
  std::vector<float> scratch(ctx * dim);
  for (int l = first_block; l < c.n_layers; ++l) {
    const std::string block = fmt::format("blk.{}.", l);
    // ---- 1. collect the inputs of block l's linear layers ----
    std::vector<group_inputs> inputs(groups.size());
    for (size_t g = 0; g < groups.size(); ++g) {
      const int64_t in = m.get(block + groups[g].weights[0]).cols();
      group_inputs& gi = inputs[g];
      gi.in = in;
      if (o.how == method::gptq) gi.hessian.emplace(in);
      if (o.how == method::awq || o.how == method::smoothquant) gi.stats.emplace(in);
      if (o.how == method::imatrix) gi.sqsum.assign(in, 0.0);
      gi.max_rows = o.max_sample_rows;
      gi.stride = std::max<int64_t>(1, W * ctx / std::max<int64_t>(1, o.max_sample_rows));
    }
    session.set_dump([&](const std::string& name, const float* data, int64_t rows, int64_t cols) {
      if (name.compare(0, block.size(), block) != 0) return;
      const std::string what = name.substr(block.size());
      for (size_t g = 0; g < groups.size(); ++g)
        if (groups[g].input == what) inputs[g].add(data, rows);
    });
    for (int64_t w = 0; w < W; ++w) {
      std::copy_n(residual.data() + w * ctx * dim, ctx * dim, scratch.data());
      session.forward_blocks(scratch.data(), ctx, l, l + 1);
      if (progress) progress(++steps, total_steps);
    }
    session.set_dump(nullptr);

    // ---- 2. quantize them, group by group, last first: a scale folded into the rows of an
    // earlier layer of the block (v for attn_output, up for ffn_down) must reach that layer while
    // it is still float, as llm-awq applies every scale of a block before quantizing it ----
    for (size_t g = groups.size(); g-- > 0;) {
      const layer_group& grp = groups[g];
      group_inputs& gi = inputs[g];
      const int64_t in = gi.in;
      std::vector<std::vector<float>> originals;
      std::vector<linear_weight> layers;
      for (const std::string& wn : grp.weights) {
        const tensor& t = m.get(block + wn);
        originals.push_back(t.data);
      }
      for (size_t i = 0; i < grp.weights.size(); ++i)
        layers.push_back({originals[i].data(), m.get(block + grp.weights[i]).rows()});
      std::vector<float> scales;  // folded per-input-channel scale (AWQ, SmoothQuant)
      std::vector<std::vector<float>> quantized(grp.weights.size());
      const auto t0 = clock::now();
      if (o.how == method::gptq) {
        const std::vector<double> H = gi.hessian->matrix();
        for (size_t i = 0; i < grp.weights.size(); ++i) {
          gptq_options go = o.gptq;
          go.tensor_id = ++tensor_id;
          gptq_result r = gptq_quantize(originals[i].data(), layers[i].out, in, H.data(), o.weights, go);
          quantized[i] = std::move(r.weights);
          if (r.packed) report.packed[block + grp.weights[i]] = std::move(*r.packed);
        }
      } else if (o.how == method::awq) {
        awq_options ao = o.awq;
        ao.tensor_id = ++tensor_id;
        if (grp.how == layer_group::fold::none) ao.n_grid = 1;  // s = 1: clipping search only
        std::vector<bool> clip(grp.weights.size(), true);
        for (size_t i = 0; i < grp.weights.size(); ++i)  // llm-awq skips q/k: "qk bmm"
          if (grp.weights[i] == "attn_q.weight" || grp.weights[i] == "attn_k.weight" ||
              grp.weights[i] == "attn_qkv.weight")
            clip[i] = false;
        awq_result r = awq_quantize(gi.rows.data(), gi.n_rows(), in, layers, o.weights, ao, clip);
        for (size_t i = 0; i < grp.weights.size(); ++i) {
          quantized[i] = std::move(r.layers[i].weights);
          if (r.layers[i].packed) report.packed[block + grp.weights[i]] = std::move(*r.layers[i].packed);
        }
        if (grp.how != layer_group::fold::none) scales = std::move(r.scales);
      } else if (o.how == method::llmfp4) {  // LLM-FP4 (METHODS 4.6): split + clip search per layer
        llmfp4_options lo;
        lo.preshift = o.llmfp4_preshift;
        // Pre-shifted exponent bias where a norm takes the per-channel factor 2^-rho_j; [M] the
        // activation element is the weights' (W4A4 in one format), the channel maxima are those
        // of the sampled rows.
        if (lo.preshift && grp.how == layer_group::fold::norm && o.weights.element.kind == element_kind::minifloat &&
            gi.n_rows() > 0) {
          channel_stats st(in);
          st.add(gi.rows.data(), gi.n_rows());
          scales = llmfp4_preshift(st.absmax.data(), in, o.weights.element).scales;
          if (std::all_of(scales.begin(), scales.end(), [](float v) { return v == 1.0f; })) scales.clear();
        }
        std::vector<float> Xs = gi.rows;  // the inputs the layer sees: X diag(s)^-1
        if (!scales.empty()) divide_columns(Xs.data(), gi.n_rows(), in, scales.data());
        for (size_t i = 0; i < grp.weights.size(); ++i) {
          std::vector<float> w = originals[i];
          if (!scales.empty()) scale_columns(w.data(), layers[i].out, in, scales.data());
          llmfp4_options li = lo;
          li.tensor_id = ++tensor_id;
          llmfp4_result r = llmfp4_quantize(Xs.data(), gi.n_rows(), in, w.data(), layers[i].out, o.weights, li);
          quantized[i] = std::move(r.weights);
          report.packed[block + grp.weights[i]] = std::move(r.packed);
        }
      } else if (o.how == method::rtn || o.how == method::powerquant) {
        for (size_t i = 0; i < grp.weights.size(); ++i)
          quantized[i] = o.how == method::powerquant
                             ? powerquant_search(originals[i].data(), layers[i].out, in, o.weights).weights
                             : rtn_with_codes(originals[i].data(), layers[i].out, in, block + grp.weights[i]);
      } else if (o.how == method::imatrix) {
        std::vector<float> importance(in);
        for (int64_t j = 0; j < in; ++j) importance[j] = static_cast<float>(gi.sqsum[j] / std::max<int64_t>(1, gi.seen));
        for (size_t i = 0; i < grp.weights.size(); ++i) {
          quantized_tensor codes;
          quantized[i] = importance_rtn(originals[i].data(), layers[i].out, in, o.weights, importance.data(), 20, 0.5,
                                        &codes);
          if (is_kquant(o.weights)) report.packed[block + grp.weights[i]] = std::move(codes);
        }
      } else {  // smoothquant: migrate activation outliers where a norm takes the scale
        if (grp.how == layer_group::fold::norm) {
          scales = smoothquant_scales(gi.stats->absmax.data(), in, layers, o.smooth_alpha);
        }
        for (size_t i = 0; i < grp.weights.size(); ++i) {
          std::vector<float> w = originals[i];
          if (!scales.empty()) scale_columns(w.data(), layers[i].out, in, scales.data());
          quantized[i] = rtn_with_codes(w.data(), layers[i].out, in, block + grp.weights[i]);
        }
      }
      // What the quantized layer computes with: inputs X / s and the float weight W diag(s).
      std::vector<float> Xq = gi.rows;
      if (!scales.empty()) divide_columns(Xq.data(), gi.n_rows(), in, scales.data());
      for (size_t i = 0; i < grp.weights.size(); ++i) {
        const std::string name = block + grp.weights[i];
        std::vector<float> w_eff = originals[i];
        if (!scales.empty()) scale_columns(w_eff.data(), layers[i].out, in, scales.data());
        if (o.lorc_rank > 0) {  // LoRC: Q + U V, the error's best rank-k part (ZeroQuant-V2)
          lorc_options lo;
          lo.factor_format = o.lorc_format;
          quantized[i] = lorc_compensate(w_eff.data(), quantized[i].data(), layers[i].out, in, o.lorc_rank, lo).weights;
          report.packed.erase(name);  // no longer values of the format alone
        }
        if (o.bias_correct) {  // the mean output error over the calibration rows becomes 0
          const std::string bias_name = name.substr(0, name.size() - 6) + "bias";
          if (tensor* b = m.find(bias_name))
            b->data = bias_correction(Xq.data(), gi.n_rows(), in, w_eff.data(), quantized[i].data(),
                                      layers[i].out, b->data.data());
        }
      }
      const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
      // The report: output error on the sampled rows, against RTN of the original weight.
      for (size_t i = 0; i < grp.weights.size(); ++i) {
        const auto rtn = rtn_quantize(originals[i].data(), layers[i].out, in, o.weights, 0);
        layer_report lr;
        lr.name = block + grp.weights[i];
        lr.seconds = seconds / grp.weights.size();
        lr.error = layer_error(gi.rows, Xq, in, originals[i], quantized[i], layers[i].out);
        lr.rtn_error = layer_error(gi.rows, gi.rows, in, originals[i], rtn, layers[i].out);
        report.layers.push_back(lr);
        m.get_mut(block + grp.weights[i]).data = std::move(quantized[i]);
      }
      if (!scales.empty()) fold_scale(m, block, grp, scales);
    }

    // ---- 3. the quantized block makes the next block's inputs ----
    for (int64_t w = 0; w < W; ++w) {
      session.forward_blocks(residual.data() + w * ctx * dim, ctx, l, l + 1);
      if (progress) progress(++steps, total_steps);
    }
    if (!o.checkpoint_dir.empty()) save_checkpoint(m, report, l + 1, tensor_id, o.checkpoint_dir, fingerprint);
  }
  report.seconds = std::chrono::duration<double>(clock::now() - t_start).count();
  return report;
}

}  // namespace lowbit::ptq
