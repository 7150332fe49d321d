// Post-training quantization of a whole model, layer by layer (issue "PTQ"; docs/conventions.md §20-21):
//   1. calibration windows: `samples` non-overlapping windows of `ctx` tokens drawn (seeded) from
//      the second half of the token stream (evaluation reads from the start, so they never meet);
//   2. the residual stream of every window is cached at the input of block 0 (the embeddings);
//   3. for each block l in order: run block l on every cached window, collecting the inputs of
//      its linear layers (GPTQ's Hessian, per-channel |x| statistics, a sample of rows); quantize
//      the block's linear weights with the method; run block l again, now quantized, to produce
//      the cached input of block l+1 — so a layer is calibrated on what the already-quantized
//      layers before it produce (GPTQ's sequential scheme, not "true-sequential" inside a block).
// Memory: one residual stream per window ([samples, ctx, dim] floats) and one block's inputs;
// quantize_to_shards also holds one block's weights at a time instead of the model.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lowbit/engine/model.hpp"
#include "lowbit/ptq/methods.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace lowbit::ptq {

struct quantize_options {
  method how = method::rtn;         // an entry of the method table (methods.hpp)
  format weights;
  int calib_samples = 128;
  int calib_ctx = 256;
  uint64_t seed = 0;
  gptq_options gptq;
  awq_options awq;
  adaround_options adaround;        // --method adaround (its tensor_id is the pipeline's)
  // ZeroQuant-FP's second constraint (ptq.hpp shared_pow2_quantize): rtn and adaround take their
  // group scales from it.
  bool shared_pow2_scales = false;
  double smooth_alpha = 0.5;        // SmoothQuant migration strength
  int64_t max_sample_rows = 4096;   // rows of each layer input kept for AWQ and for the report
  int lorc_rank = 0;                // > 0: LoRC low-rank compensation of each weight's error
  std::optional<format> lorc_format;  // format of LoRC's factors (float when absent)
  bool bias_correct = false;        // correct the biases (GPT-2) for the mean output error
  // LLM-FP4's pre-shifted exponent bias (docs/ptq.md §4.6): per-channel powers of two moved from the
  // activations into the weights, for per-tensor activation quantization. Off by default: with
  // float activations it costs weight accuracy (stories260K e2m1/c: NLL 1.530 with, 1.505 without).
  bool llmfp4_preshift = false;
  // A directory where every finished block is saved (blk.N.safetensors: the block's tensors with
  // the exact codes of its weights, the run's fingerprint and the block's index, checksummed
  // header and all; state.json, checkpoint version 2, counts the finished blocks); a run given a
  // directory from an interrupted run with the same model, data and options resumes after its last
  // finished block. "" = no checkpoints (quantize_model only).
  std::string checkpoint_dir;
  // Cross-layer equalization (Nagel et al. 2019, data-free) before quantizing: for each pair of
  // layers with a linear (or positively homogeneous) path between them — v -> attn_output (every
  // query head with its own kv head), up -> ffn_down (Llama) — channel j of the first's output
  // rows and the second's input columns get the same range: s_j = sqrt(r1_j / r2_j).
  bool equalize = false;
  // Randomized Hadamard rotation of the residual stream before quantizing (rotate.hpp; Llama).
  bool rotate = false;
  uint64_t rotate_seed = 0;
  // For a GGUF output (docs/conventions.md §22): a weight whose rows do not divide the GGUF block of
  // `weights` is quantized by the method in the format of llama.cpp's fallback type instead (q4_k's
  // rows of 288 in q5_0, as llama.cpp quantizes them); rows that fit no fallback block stay in
  // `weights` and are rounded onto F16 when written. weight_format_for says which.
  bool gguf_fallbacks = false;
};

// The format o's method quantizes a linear weight of `cols` input columns in: o.weights, or with
// o.gguf_fallbacks and rows that do not fit its GGUF block, the fallback type's format.
format weight_format_for(const quantize_options& o, int64_t cols);

// The windows' start offsets in ids (docs/conventions.md §21). Throws, saying how many windows the
// second half holds, when it holds fewer than `samples`.
std::vector<int64_t> calibration_windows(int64_t n_tokens, int samples, int ctx, uint64_t seed);

struct layer_report {
  std::string name;
  double seconds = 0;
  // Squared output error over the sampled calibration rows, ||X W^T - X' Q^T||^2 / rows, of the
  // method and of RTN of the same weight (X' = the inputs the quantized layer sees).
  double error = 0, rtn_error = 0;
};

struct quantize_report {
  std::vector<layer_report> layers;
  int resumed_at_block = 0;  // > 0 when a checkpoint was resumed
  // Codes and scales of the weights whose values alone do not pin them down (GPTQ chooses a
  // group's scale before error feedback moves the group), for exact export.
  std::map<std::string, quantized_tensor> packed;
  int64_t windows_available = 0;
  double seconds = 0;
};

using ptq_progress = std::function<void(int64_t done, int64_t total)>;

// Quantizes m's linear weights in place (their values become values of o.weights, possibly with
// norms rescaled by AWQ / SmoothQuant, which leave the float function unchanged).
quantize_report quantize_model(model& m, const std::vector<int32_t>& ids, const quantize_options& o,
                               const ptq_progress& progress = {});

// The same, memory-bounded (lowbit quantize): source's header is first checked against its config
// (model::validate_shapes; nothing is read or written for a model it refuses), then block l's
// float tensors are read from `source` when
// the pipeline reaches it and dropped once its shard is in o.checkpoint_dir (required), so memory
// holds one block's weights, the windows' residual streams and one block's activations; the
// embeddings are read once, to embed the windows. Every block's result is in its shard, not in
// the report (report.packed stays empty). --rotate is refused: the rotation changes the
// embeddings and every block at once, so it needs quantize_model and the whole model.
quantize_report quantize_to_shards(const tensor_reader& source, const std::vector<int32_t>& ids,
                                   const quantize_options& o, const ptq_progress& progress = {});
// The quantized model of a finished quantize_to_shards, for the writers: the blocks from the
// shards in dir (values and exact codes; each shard checked as it is read: checksum, its run's
// fingerprint from state.json, its block, its tensors' shapes), the other tensors (those of no
// block 0..n_layers-1) from source, which must outlive the reader.
std::unique_ptr<tensor_reader> read_quantized_shards(const tensor_reader& source, const std::string& dir);

}  // namespace lowbit::ptq
