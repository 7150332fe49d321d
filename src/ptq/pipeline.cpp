// Whole-model post-training quantization, layer by layer (pipeline.hpp).
#include "lowbit/ptq/pipeline.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "lowbit/engine/forward.hpp"
#include "lowbit/io/gguf.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/ptq/rotate.hpp"
#include "lowbit/ptq/search.hpp"
#include "lowbit/io/model_io.hpp"

namespace fs = std::filesystem;

namespace lowbit::ptq {

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

std::vector<layer_group> block_groups(const model_config& c) {
  std::vector<layer_group> g;
  using F = fold;
  // A scale on a norm's output folds into the norm's gain (and bias) when that output feeds only
  // the group: not in OPT's post-LN blocks, where attention reads the residual stream itself and
  // the MLP reads norm1's output, which is also the residual.
  const bool pre_ln = c.norm_before;
  if (c.fused_qkv()) {
    g.push_back({"attn_norm", {"attn_qkv.weight"}, pre_ln ? F::norm : F::none, "attn_norm", 0});
    g.push_back({"attn", {"attn_output.weight"}, F::rows, "attn_qkv.weight", 2 * int64_t(c.dim)});
  } else {
    g.push_back({"attn_norm", {"attn_q.weight", "attn_k.weight", "attn_v.weight"}, pre_ln ? F::norm : F::none,
                 "attn_norm", 0});
    // Attention output channel j is a mix of v's output row j over positions — linear in v, so a
    // scale folds into v's rows, but only when every query head has its own kv head.
    g.push_back({"attn", {"attn_output.weight"}, c.n_heads == c.n_kv_heads ? F::rows : F::none,
                 "attn_v.weight", 0});
  }
  if (c.gated_mlp()) {
    g.push_back({"ffn_norm", {"ffn_gate.weight", "ffn_up.weight"}, F::norm, "ffn_norm", 0});
    // ffn_act = silu(gate) * up is linear in up's output: fold into up's rows.
    g.push_back({"ffn_act", {"ffn_down.weight"}, F::rows, "ffn_up.weight", 0});
  } else {
    g.push_back({"ffn_norm", {"ffn_up.weight"}, pre_ln ? F::norm : F::none, "ffn_norm", 0});
    // ReLU is positively homogeneous (relu(u / s) = relu(u) / s, s > 0): a scale folds into up's
    // rows and bias. GELU: no exact fold.
    const bool relu = c.mlp_activation() == activation::relu;
    g.push_back({"ffn_act", {"ffn_down.weight"}, relu ? F::rows : F::none, relu ? "ffn_up.weight" : "", 0});
  }
  return g;
}

namespace {

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
  if (g.how == fold::norm) {
    tensor& w = *m.find(block + g.fold_tensor + ".weight");
    divide_columns(w.data.data(), 1, in, s.data());
    if (tensor* b = m.find(block + g.fold_tensor + ".bias")) divide_columns(b->data.data(), 1, in, s.data());
  } else if (g.how == fold::rows) {
    tensor& w = *m.find(block + g.fold_tensor);
    divide_rows(w.data.data() + g.fold_row0 * w.cols(), in, w.cols(), s.data());
    const std::string bias = block + g.fold_tensor.substr(0, g.fold_tensor.size() - 6) + "bias";
    if (tensor* b = m.find(bias)) divide_columns(b->data.data() + g.fold_row0, 1, in, s.data());
  }
}

}  // namespace

format weight_format_for(const quantize_options& o, int64_t cols) {
  if (!o.gguf_fallbacks) return o.weights;
  const uint32_t type = ggml_type_for_format(o.weights);
  if (cols % ggml_block_size(static_cast<ggml_type>(type)) == 0) return o.weights;
  const auto fallback = static_cast<ggml_type>(ggml_fallback_type(type, cols));
  // F16 (no block fits): the method's own values, rounded onto F16 by the writer.
  return fallback == ggml_type::f16 ? o.weights : ggml_type_format(fallback);
}

namespace {

// What a checkpoint must match to be resumed: the model (its config, tensor names and shapes, and
// the bytes its values are made from: tensor_reader::hash_contents, the file's raw tensors without
// converting them), the token stream and every option that changes a bit of the result.
std::string run_fingerprint(const tensor_reader& source, const std::vector<int32_t>& ids, const quantize_options& o) {
  fnv1a64 h;
  h.add(ids.data(), ids.size() * sizeof(int32_t));
  const model_config& c = source.header.config;
  h.add(fmt::format("{} {} {} {} {} {} {} {} {} {} {} {}", architecture_name(c.arch), c.dim, c.hidden_dim, c.n_layers,
                    c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len, c.norm_eps, c.rope_theta,
                    c.tied_classifier, c.l1_norm));
  // The variants of a family (empty for Llama and GPT-2 at their defaults: their fingerprints
  // are those of before).
  if (const std::string v = c.variant_string(); !v.empty()) h.add(v);
  for (const auto& [name, t] : source.header.tensors) h.add(fmt::format("{} [{}]", name, fmt::join(t.shape, ",")));
  source.hash_contents(h);
  const std::string opts = fmt::format(
      "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}", method_name(o.how),
      format_name(o.weights), o.calib_samples, o.calib_ctx, o.seed, o.gptq.percdamp, o.gptq.block_size,
      o.gptq.act_order, o.gptq.static_groups, o.gptq.float64, o.smooth_alpha, o.max_sample_rows, o.lorc_rank,
      o.lorc_format ? format_name(*o.lorc_format) : "-", o.bias_correct, o.llmfp4_preshift, o.awq.n_grid,
      o.awq.clip, o.awq.clip_grid, o.awq.max_shrink, o.awq.clip_sample_tokens, o.equalize, o.rotate, o.rotate_seed,
      o.gguf_fallbacks);
  h.add(opts);
  if (o.how == method::adaround)  // (only then: the other methods' fingerprints are those of before)
    h.add(fmt::format("adaround {} {} {} {} {} {} {} {}", o.adaround.iters, o.adaround.lambda, o.adaround.lr,
                      o.adaround.warmup, o.adaround.beta_start, o.adaround.beta_end, o.adaround.zeta,
                      o.adaround.gamma));
  if (o.shared_pow2_scales) h.add("shared_pow2_scales");
  return h.hex();
}

// Data-free methods (method_needs::calibration) look at each weight alone, unless bias correction
// needs the outputs.
// LoRC runs in the calibrated pass (compensate), so it turns the pass on for a method that needs no
// data itself (RTN, PowerQuant): LoRC's factors come from W - Q alone.
bool calibrated(const quantize_options& o) {
  return method_of(o.how).needs.calibration || o.bias_correct || o.lorc_rank > 0;
}

std::string block_prefix(int l) { return fmt::format("blk.{}.", l); }

// The entries of a name-keyed map (tensors, codes) that belong to block l: [first, last).
template <class Map>
auto block_range(Map& tensors, int l) {
  const std::string prefix = block_prefix(l);
  auto first = tensors.lower_bound(prefix), last = first;
  while (last != tensors.end() && last->first.starts_with(prefix)) ++last;
  return std::pair{first, last};
}

// The block a tensor name belongs to: N of "blk.N." for 0 <= N < n_layers, else -1 (the
// embeddings, the output, and tensors a file carries beyond the architecture's, such as a GGUF's
// blk.<n_layers>.something, which are passed through from the source).
int block_of(const std::string& name, int n_layers) {
  if (!name.starts_with("blk.")) return -1;
  int l = -1;
  const auto ec = std::from_chars(name.data() + 4, name.data() + name.size(), l).ec;
  if (ec != std::errc() || l < 0 || l >= n_layers) return -1;
  return name.starts_with(block_prefix(l)) ? l : -1;  // "blk.N." exactly (not blk.01., blk.1x.)
}

// The checkpoint layout this code writes (state.json "version"); version 2 ties every shard to its
// run (lowbit.run, lowbit.block) and checksums the shards' headers too.
// Version 3 stores a coded weight as its codes alone (no float copy).
constexpr int kCheckpointVersion = 3;

std::string shard_path(const std::string& dir, int l) {
  return (fs::path(dir) / fmt::format("blk.{}.safetensors", l)).string();
}

// After block l: its tensors go to its shard, then the state (atomic) counts the block. A linear
// weight with exact codes (the method's own where it has them, else its values re-encoded where
// that is exact) is stored as those codes, and as codes alone when they dequantize to its values
// bit for bit (a resumed run and the writers rebuild the values from them); every other tensor as
// its float values. A crash at any point leaves a state naming complete shards only.
void save_block(model& work, int l, const quantize_report& report, const quantize_options& o, uint64_t tensor_id,
                const std::string& fingerprint) {
  const std::string& dir = o.checkpoint_dir;
  fs::create_directories(dir);
  const std::string block = block_prefix(l);
  tensor_shard shard;
  nlohmann::json known = nlohmann::json::array();
  std::set<std::string> codes_only;  // values rebuilt from the codes: no float copy in the shard
  for (const std::string& name : work.linear_weight_names()) {
    if (!name.starts_with(block)) continue;
    const auto it = report.packed.find(name);
    const quantized_tensor* method_codes = it == report.packed.end() ? nullptr : &it->second;
    if (method_codes) known.push_back(name);
    const tensor& t = work.get(name);
    // Codes alone only when bit for bit (NaN payloads and the sign of zero too, which the
    // value check lets pass).
    bool bit_exact = false;
    auto q = linear_weight_codes(t, weight_format_for(o, t.cols()), method_codes, &bit_exact);
    if (!q) continue;
    if (bit_exact) codes_only.insert(name);
    shard.codes[name] = std::move(*q);
  }
  // The block's other tensors move into the shard and back: no copy of a block's weights.
  const auto [first, last] = block_range(work.tensors, l);
  for (auto it = first; it != last; ++it)
    if (!codes_only.count(it->first)) shard.tensors[it->first] = std::move(it->second);
  shard.metadata["lowbit.known_codes"] = known.dump();
  shard.metadata["lowbit.run"] = fingerprint;  // the shard belongs to this run and this block
  shard.metadata["lowbit.block"] = std::to_string(l);
  try {
    save_tensor_shard(shard_path(dir, l), shard);
  } catch (...) {
    for (auto& [name, t] : shard.tensors) work.tensors[name] = std::move(t);
    throw;
  }
  for (auto& [name, t] : shard.tensors) work.tensors[name] = std::move(t);
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& lr : report.layers)
    layers.push_back({{"name", lr.name}, {"seconds", lr.seconds}, {"error", lr.error}, {"rtn_error", lr.rtn_error}});
  // tensor_id: the stochastic-rounding stream position, so a resumed run draws what an
  // uninterrupted one would.
  const nlohmann::json state = {{"version", kCheckpointVersion}, {"fingerprint", fingerprint},
                                {"blocks_done", l + 1}, {"tensor_id", tensor_id}, {"layers", layers}};
  write_text_file_atomic((fs::path(dir) / "state.json").string(), state.dump(1) + "\n");
}

// dir's state.json, checked (version, fingerprint, blocks_done in 0..n_layers); null when there is
// none.
nlohmann::json read_state(const std::string& dir, int n_layers) {
  const fs::path state_path = fs::path(dir) / "state.json";
  if (!fs::exists(state_path)) return nullptr;
  std::ifstream in(state_path);
  const nlohmann::json state = nlohmann::json::parse(in, nullptr, false);
  if (!state.is_object() || !state.contains("fingerprint") || !state["fingerprint"].is_string() ||
      !state.contains("blocks_done") || !state["blocks_done"].is_number_integer())
    throw error(fmt::format("{}: not a lowbit checkpoint state; remove {} to start over", state_path.string(), dir));
  const nlohmann::json version = state.value("version", nlohmann::json(1));
  if (version != kCheckpointVersion)
    throw error(fmt::format("{}: a checkpoint of another lowbit version ({}; this one reads version {}); remove {} "
                            "to start over", state_path.string(), version.dump(), kCheckpointVersion, dir));
  const int64_t done = state["blocks_done"].get<int64_t>();
  if (done < 0 || done > n_layers)
    throw error(fmt::format("{}: blocks_done {} is out of range (the model has {} blocks)", state_path.string(), done,
                            n_layers));
  return state;
}

// Returns the number of finished blocks recorded in dir (0 when there is nothing to resume),
// restoring report.layers and tensor_id; throws when the directory holds another run's checkpoint.
int load_state(quantize_report& report, uint64_t& tensor_id, const std::string& dir, const std::string& fingerprint,
               int n_layers) {
  const nlohmann::json state = read_state(dir, n_layers);
  if (state.is_null()) return 0;
  if (state["fingerprint"] != fingerprint)
    throw error(fmt::format("{}: a checkpoint of another run (model, data or options differ); remove it to start "
                            "over", dir));
  const int64_t done = state["blocks_done"].get<int64_t>();
  if (!state.contains("tensor_id") || !state["tensor_id"].is_number_unsigned())
    throw error(fmt::format("{}: state.json has no tensor_id", dir));
  tensor_id = state["tensor_id"].get<uint64_t>();
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

// A finished block's shard, checked against its run (fingerprint), its block and the tensors the
// block must have (`shapes`: a model or a reader's header), with the method's own codes.
tensor_shard load_block_shard(const std::string& dir, int l, const model& shapes, const std::string& fingerprint) {
  const std::string path = shard_path(dir, l);
  if (!fs::exists(path))
    throw error(fmt::format("{}: missing, though state.json counts block {} as finished; remove {} to start over",
                            path, l, dir));
  tensor_shard shard = load_tensor_shard(path);
  if (shard.metadata["lowbit.run"] != fingerprint || shard.metadata["lowbit.block"] != std::to_string(l))
    throw error(fmt::format("{}: lowbit.run {} / lowbit.block {} is not this run's block {} (run {}); remove {} to "
                            "start over", path, shard.metadata["lowbit.run"], shard.metadata["lowbit.block"], l,
                            fingerprint, dir));
  size_t expected = 0;
  const auto [first, last] = block_range(shapes.tensors, l);
  for (auto it = first; it != last; ++it) {
    ++expected;
    const auto t = shard.tensors.find(it->first);
    const auto q = shard.codes.find(it->first);
    const bool ok = t != shard.tensors.end() ? t->second.shape == it->second.shape
                    : q != shard.codes.end() ? it->second.shape == std::vector<int64_t>{q->second.rows, q->second.cols}
                                             : false;
    if (!ok)
      throw error(fmt::format("{}: tensor '{}' is missing or of another shape; remove {} to start over", path,
                              it->first, dir));
  }
  size_t held = shard.tensors.size();  // the block's tensors: floats, and coded ones without floats
  for (const auto& [name, q] : shard.codes) held += shard.tensors.count(name) == 0;
  if (held != expected) throw error(fmt::format("{}: holds {} tensors, block {} has {}", path, held, l, expected));
  return shard;
}

// A finished block back into the working model (resume; the values stored as codes rebuilt from
// them), its method codes into the report.
void restore_block(model& work, const model& shapes, int l, const std::string& dir, const std::string& fingerprint,
                   quantize_report& report) {
  tensor_shard shard = load_block_shard(dir, l, shapes, fingerprint);
  for (const auto& [name, q] : shard.codes)
    if (!shard.tensors.count(name)) shard.tensors[name] = shard.values(name);
  const nlohmann::json known = nlohmann::json::parse(shard.metadata["lowbit.known_codes"], nullptr, false);
  if (!known.is_array()) throw error(fmt::format("{}: lowbit.known_codes is not a JSON array", shard_path(dir, l)));
  for (const auto& name : known) {
    if (!name.is_string() || !shard.codes.count(name.get<std::string>()))
      throw error(fmt::format("{}: lowbit.known_codes names a tensor without codes", shard_path(dir, l)));
    report.packed[name.get<std::string>()] = std::move(shard.codes[name.get<std::string>()]);
  }
  for (auto& [name, t] : shard.tensors) work.tensors[name] = std::move(t);
}

// Cross-layer equalization of every (producer rows, consumer columns) pair of block l whose scale
// folds exactly (the groups with fold::rows).
void equalize_block(model& m, int l, const std::vector<layer_group>& groups) {
  const std::string block = block_prefix(l);
  for (const layer_group& g : groups) {
    if (g.how != fold::rows) continue;
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
  }
}

// After the method, what every method shares: LoRC (docs/ptq.md §4.5) adds the error's best
// rank-k part to Q, and bias correction (§4.8) zeroes the mean output error over the calibration
// rows. `w_eff` [out, in] is the float weight the quantized one stands for (W diag(s)), Xq the
// sampled inputs it sees (X diag(s)^-1), [n, in].
void compensate(model& m, const std::string& name, const std::vector<float>& w_eff, std::vector<float>& quantized,
                int64_t out, int64_t in, const std::vector<float>& Xq, int64_t n, const quantize_options& o,
                quantize_report& report) {
  if (o.lorc_rank > 0) {  // Q + U V (ZeroQuant-V2)
    lorc_options lo;
    lo.factor_format = o.lorc_format;
    quantized = lorc_compensate(w_eff.data(), quantized.data(), out, in, o.lorc_rank, lo).weights;
    report.packed.erase(name);  // no longer values of the format alone
  }
  if (o.bias_correct) {
    const std::string bias_name = name.substr(0, name.size() - 6) + "bias";
    if (tensor* b = m.find(bias_name))
      b->data = bias_correction(Xq.data(), n, in, w_eff.data(), quantized.data(), out, b->data.data());
  }
}

// Step 2 of a block: quantize its linear weights from the collected inputs, group by group, with
// the method's group function (methods.hpp), last first: a scale folded into the rows of an
// earlier layer of the block (v for attn_output, up for ffn_down) must reach that layer while it
// is still float, as llm-awq applies every scale of a block before quantizing it.
void quantize_block_groups(model& m, const std::string& block, const std::vector<layer_group>& groups,
                           const std::vector<group_inputs>& inputs, const quantize_options& o,
                           quantize_report& report, uint64_t& tensor_id) {
  using clock = std::chrono::steady_clock;
  const method_info& how = method_of(o.how);
  for (size_t g = groups.size(); g-- > 0;) {
    const layer_group& grp = groups[g];
    const group_inputs& gi = inputs[g];
    const int64_t in = gi.in, k = int64_t(grp.weights.size());
    std::vector<std::vector<float>> originals;  // [layer] W [out, in], float
    quantize_options og = o;  // the group's weights share their input width, so their format
    og.weights = weight_format_for(o, in);
    group_job job{og, {}, {}, in, grp.how, &gi, tensor_id, report.packed};
    for (const std::string& wn : grp.weights) originals.push_back(m.get(block + wn).data);
    for (int64_t i = 0; i < k; ++i) {
      job.names.push_back(block + grp.weights[i]);
      job.layers.push_back({originals[i].data(), m.get(job.names[i]).rows()});
    }
    const auto t0 = clock::now();
    group_result r = how.quantize(job);
    const std::vector<float>& scales = r.scales;
    // What the quantized layer computes with: inputs X / s and the float weight W diag(s).
    std::vector<float> Xq = gi.rows;
    if (!scales.empty()) divide_columns(Xq.data(), gi.n_rows(), in, scales.data());
    if (o.lorc_rank > 0 || o.bias_correct) {  // compensate's work; W diag(s) only for it
      for (int64_t i = 0; i < k; ++i) {
        std::vector<float> w_eff = originals[i];
        if (!scales.empty()) scale_columns(w_eff.data(), job.layers[i].out, in, scales.data());
        compensate(m, job.names[i], w_eff, r.weights[i], job.layers[i].out, in, Xq, gi.n_rows(), o, report);
      }
    }
    const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
    // The report: output error on the sampled rows, against RTN of the original weight.
    for (int64_t i = 0; i < k; ++i) {
      const int64_t out = job.layers[i].out;
      const auto rtn = rtn_quantize(originals[i].data(), out, in, og.weights, 0);
      layer_report lr;
      lr.name = job.names[i];
      lr.seconds = seconds / double(k);
      lr.error = layer_error(gi.rows, Xq, in, originals[i], r.weights[i], out);
      lr.rtn_error = layer_error(gi.rows, gi.rows, in, originals[i], rtn, out);
      report.layers.push_back(lr);
      m.get_mut(job.names[i]).data = std::move(r.weights[i]);
    }
    if (!scales.empty()) fold_scale(m, block, grp, scales);
  }
}

// A data-free method's block (method_needs::calibration false): each linear weight of the block
// alone, as a group of one without inputs, in the model's order of weights.
void quantize_weights_alone(model& work, const std::string& block, const quantize_options& o,
                            quantize_report& report, uint64_t& tensor_id, int64_t total, const ptq_progress& progress) {
  using clock = std::chrono::steady_clock;
  const method_info& how = method_of(o.how);
  for (const std::string& name : work.linear_weight_names()) {
    if (!name.starts_with(block)) continue;
    tensor& t = work.get_mut(name);
    const auto t0 = clock::now();
    quantize_options ow = o;
    ow.weights = weight_format_for(o, t.cols());
    const group_job job{ow, {name}, {{t.data.data(), t.rows()}}, t.cols(), fold::none, nullptr, tensor_id,
                        report.packed};
    t.data = std::move(how.quantize(job).weights[0]);
    report.layers.push_back({name, std::chrono::duration<double>(clock::now() - t0).count(), 0, 0});
    if (progress) progress(report.layers.size(), total);
  }
}

// Step 1 of a block: what its pass collects about each group's input, as the method's needs say
// (methods.hpp), and a sample of at most max_sample_rows of the `rows` rows the windows give.
std::vector<group_inputs> empty_inputs(const model& work, const std::string& block,
                                       const std::vector<layer_group>& groups, const quantize_options& o,
                                       int64_t rows) {
  const method_needs& needs = method_of(o.how).needs;
  std::vector<group_inputs> inputs(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t in = work.get(block + groups[g].weights[0]).cols();
    group_inputs& gi = inputs[g];
    gi.in = in;
    if (needs.hessian) gi.hessian.emplace(in);
    if (needs.channel_stats) gi.stats.emplace(in);
    if (needs.square_sums) gi.sqsum.assign(in, 0.0);
    gi.max_rows = o.max_sample_rows;
    gi.stride = std::max<int64_t>(1, rows / std::max<int64_t>(1, o.max_sample_rows));
  }
  return inputs;
}

// How the block loop reaches the blocks: all in memory (quantize_model: nothing to do), or read
// from a file as it gets to them and dropped when their shard is written (quantize_to_shards).
struct block_access {
  std::function<void(int)> load;     // block l's float tensors into the working model
  std::function<void(int)> release;  // block l leaves the working model
  std::function<void()> embedded;    // the windows are embedded: the embeddings may leave
  // Streamed: the tensors' shapes (the working model holds the block in use only). In memory
  // (null), report.packed keeps every block's codes and a resumed run's finished blocks come back
  // into the model; streamed, their shards hold both.
  const model* shapes = nullptr;
  bool in_memory() const { return shapes == nullptr; }
};

// The layer-by-layer loop of both entry points (pipeline.hpp), on the working model `work`.
quantize_report run_blocks(model& work, const std::string& fingerprint, const std::vector<int32_t>& ids,
                           const quantize_options& o, const block_access& access, const ptq_progress& progress) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  const model_config& c = work.config;
  quantize_report report;
  const auto groups = block_groups(c);
  uint64_t tensor_id = 0;
  const bool checkpoints = !o.checkpoint_dir.empty();
  const int first_block = checkpoints ? load_state(report, tensor_id, o.checkpoint_dir, fingerprint, c.n_layers) : 0;
  report.resumed_at_block = first_block;
  // The calibration windows (checked, and counted for the report, before a resumed run that only
  // has the output left to assemble returns).
  const int ctx = o.calib_ctx;
  std::vector<int64_t> starts;
  if (calibrated(o)) {
    if (c.learned_positions() && ctx > c.max_seq_len)
      throw error(fmt::format("calibration: --calib-ctx {} exceeds {}'s {} learned positions", ctx,
                              architecture_name(c.arch), c.max_seq_len));
    starts = calibration_windows(int64_t(ids.size()), o.calib_samples, ctx, o.seed);
    report.windows_available = (int64_t(ids.size()) - int64_t(ids.size()) / 2) / ctx;
  }
  if (!access.in_memory() && first_block == c.n_layers) {  // every shard is there already
    report.seconds = std::chrono::duration<double>(clock::now() - t_start).count();
    return report;
  }
  // Block l leaves the pipeline: out of the working model (streamed) with its codes.
  auto release_block = [&](int l) {
    if (!access.in_memory()) {
      const auto [first, last] = block_range(report.packed, l);
      report.packed.erase(first, last);
    }
    access.release(l);
  };
  const model& shapes = access.in_memory() ? work : *access.shapes;
  auto finish_block = [&](int l) {
    if (checkpoints) save_block(work, l, report, o, tensor_id, fingerprint);
    release_block(l);
  };

  if (!calibrated(o)) {  // every weight on its own
    const int64_t total = int64_t(work.linear_weight_names().size());
    if (access.embedded) access.embedded();
    for (int l = 0; l < first_block; ++l)  // finished: their values come back for the caller
      if (access.in_memory()) restore_block(work, shapes, l, o.checkpoint_dir, fingerprint, report);
    for (int l = first_block; l < c.n_layers; ++l) {
      access.load(l);
      quantize_weights_alone(work, block_prefix(l), o, report, tensor_id, total, progress);
      finish_block(l);
    }
    report.seconds = std::chrono::duration<double>(clock::now() - t_start).count();
    return report;
  }

  for (int64_t s : starts)
    for (int i = 0; i < ctx; ++i)
      if (ids[s + i] < 0 || ids[s + i] >= c.vocab_size)
        throw error(fmt::format("calibration: token id {} outside the model's vocabulary", ids[s + i]));

  const int64_t dim = c.dim, W = int64_t(starts.size());
  forward_session session(work, quant_plan{}, ctx);
  std::vector<float> residual(W * ctx * dim);  // [window, token, dim]: the input of block l
  for (int64_t w = 0; w < W; ++w) session.embed(ids.data() + starts[w], ctx, residual.data() + w * ctx * dim);
  if (access.embedded) access.embedded();
  // Resumed: the finished (quantized) blocks make the first unfinished block's input.
  for (int l = 0; l < first_block; ++l) {
    restore_block(work, shapes, l, o.checkpoint_dir, fingerprint, report);
    for (int64_t w = 0; w < W; ++w) session.forward_blocks(residual.data() + w * ctx * dim, ctx, l, l + 1);
    release_block(l);
  }

  const int64_t total_steps = int64_t(c.n_layers - first_block) * W * 2;
  int64_t steps = 0;
  std::vector<float> scratch(ctx * dim);
  for (int l = first_block; l < c.n_layers; ++l) {
    const std::string block = block_prefix(l);
    access.load(l);
    // ---- 1. collect the inputs of block l's linear layers ----
    std::vector<group_inputs> inputs = empty_inputs(work, block, groups, o, W * ctx);
    session.set_dump([&](const std::string& name, const float* data, int64_t rows, int64_t cols) {
      if (!name.starts_with(block)) return;
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

    // ---- 2. quantize them ----
    quantize_block_groups(work, block, groups, inputs, o, report, tensor_id);

    // ---- 3. the quantized block makes the next block's inputs ----
    for (int64_t w = 0; w < W; ++w) {
      session.forward_blocks(residual.data() + w * ctx * dim, ctx, l, l + 1);
      if (progress) progress(++steps, total_steps);
    }
    finish_block(l);
  }
  report.seconds = std::chrono::duration<double>(clock::now() - t_start).count();
  return report;
}

// The quantized model of a finished quantize_to_shards: block tensors from the shards (one shard
// in memory at a time; the writers ask for a block's tensors together), the rest from the source.
class shard_reader final : public tensor_reader {
 public:
  shard_reader(const tensor_reader& source, const std::string& dir) : source_(source), dir_(dir) {
    header = source.header;
    const int n_layers = header.config.n_layers;
    const nlohmann::json state = read_state(dir, n_layers);
    if (state.is_null() || state["blocks_done"].get<int64_t>() != n_layers)
      throw error(fmt::format("{}: the quantization is not finished ({} of {} blocks); run it again to resume", dir,
                              state.is_null() ? 0 : state["blocks_done"].get<int64_t>(), n_layers));
    fingerprint_ = state["fingerprint"].get<std::string>();
    for (int l = 0; l < n_layers; ++l) {
      const std::string path = shard_path(dir, l);
      if (!fs::exists(path)) throw error(fmt::format("{}: missing; the quantization in {} is not finished", path, dir));
      // The coded tensors' names and layouts from the header (for the writers' description); the
      // shard is checked when its values are read.
      const safetensors_file f(path);
      const nlohmann::json packed = packed_description(f);
      for (auto p = packed.begin(); p != packed.end(); ++p) {
        layouts_[p.key()] = read_packed_layout(f, p.key(), p.value());
        coded_.push_back(p.key());
      }
    }
    std::sort(coded_.begin(), coded_.end());
  }

  std::vector<std::string> coded_names() const override { return coded_; }
  quantized_tensor read_codes(const std::string& name) const override {
    const int l = block_of(name, header.config.n_layers);
    if (l >= 0)
      if (auto it = shard(l).codes.find(name); it != shard(l).codes.end()) return it->second;
    return tensor_reader::read_codes(name);
  }
  codes_layout read_codes_layout(const std::string& name) const override {
    const auto it = layouts_.find(name);
    return it == layouts_.end() ? tensor_reader::read_codes_layout(name) : it->second;
  }

 protected:
  tensor load(const std::string& name) const override {
    const int l = block_of(name, header.config.n_layers);
    if (l < 0) return source_.read(name);
    if (!shard(l).has(name)) throw error(fmt::format("{}: no tensor '{}'", shard_path(dir_, l), name));
    return shard(l).values(name);  // a coded weight's values rebuilt from its codes
  }

 private:
  const tensor_shard& shard(int l) const {
    if (cached_block_ != l) {
      cached_ = {};  // one shard in memory at a time
      cached_block_ = -1;
      cached_ = load_block_shard(dir_, l, header, fingerprint_);
      cached_block_ = l;
    }
    return cached_;
  }
  const tensor_reader& source_;
  std::string dir_, fingerprint_;
  std::vector<std::string> coded_;
  std::map<std::string, codes_layout> layouts_;
  mutable int cached_block_ = -1;
  mutable tensor_shard cached_;
};

}  // namespace

quantize_report quantize_model(model& m, const std::vector<int32_t>& ids, const quantize_options& o,
                               const ptq_progress& progress) {
  m.validate();
  const std::string fingerprint = o.checkpoint_dir.empty() ? "" : run_fingerprint(*reader_of(m), ids, o);
  if (o.rotate) rotate_residual(m, o.rotate_seed);
  if (o.equalize)
    for (int l = 0; l < m.config.n_layers; ++l) equalize_block(m, l, block_groups(m.config));
  block_access in_memory;
  in_memory.load = [](int) {};
  in_memory.release = [](int) {};
  return run_blocks(m, fingerprint, ids, o, in_memory, progress);
}

quantize_report quantize_to_shards(const tensor_reader& source, const std::vector<int32_t>& ids,
                                   const quantize_options& o, const ptq_progress& progress) {
  if (o.checkpoint_dir.empty()) throw error("quantize_to_shards: no directory for the shards (checkpoint_dir)");
  if (o.rotate)
    throw error("quantize_to_shards: --rotate changes every weight and the embeddings at once; quantize the "
                "whole model in memory (quantize_model) for it");
  const model& shapes = source.header;
  shapes.validate_shapes();  // before anything is read or written: every read is checked against it
  model work;  // the tensors in use: the embeddings while the windows are embedded, then one block
  work.config = shapes.config;
  work.source_path = shapes.source_path;
  if (calibrated(o))
    for (const char* name : {"token_embd.weight", "position_embd.weight"})
      if (shapes.tensors.count(name)) work.tensors[name] = source.read(name);
  const auto groups = block_groups(shapes.config);
  block_access streamed;
  streamed.shapes = &shapes;
  streamed.load = [&](int l) {
    const auto [first, last] = block_range(shapes.tensors, l);
    for (auto it = first; it != last; ++it) work.tensors[it->first] = source.read(it->first);
    if (o.equalize) equalize_block(work, l, groups);
  };
  streamed.release = [&](int l) {
    const auto [first, last] = block_range(work.tensors, l);
    work.tensors.erase(first, last);
  };
  streamed.embedded = [&] {
    work.tensors.erase("token_embd.weight");
    work.tensors.erase("position_embd.weight");
  };
  return run_blocks(work, run_fingerprint(source, ids, o), ids, o, streamed, progress);
}

std::unique_ptr<tensor_reader> read_quantized_shards(const tensor_reader& source, const std::string& dir) {
  return std::make_unique<shard_reader>(source, dir);
}

}  // namespace lowbit::ptq
