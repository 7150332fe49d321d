// The training loop of `lowbit train`: data from a text file, AdamW with warmup + cosine, gradient
// clipping, periodic validation, atomic checkpoints that resume bit-exactly, a JSONL log, and data
// parallelism over Open MPI ranks (gradients all-reduced; the same trajectory as one process with
// the same global batch, to float tolerance). Defaults: docs/conventions.md §23. A run starts from
// random weights or from a pretrained model (fine-tuning, docs/training.md §3.5).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/base/mpi_world.hpp"
#include "lowbit/text/tokenizer.hpp"
#include "lowbit/engine/train.hpp"

namespace lowbit {

struct train_run_config {
  // model (vocab comes from the tokenizer, max_seq_len from ctx)
  std::string arch = "llama";  // llama | gpt2
  int dim = 64, n_layers = 2, n_heads = 4, n_kv_heads = 0, hidden_dim = 0;  // 0: n_heads; llama2.c's 2/3*4*dim (GPT-2: 4*dim)
  bool tied_classifier = true;
  int sliding_window = 0;  // Mistral: attend to the last N positions (0: all); in JSON only when set
  // data
  std::string data_path;
  std::string tokenizer = "bytes";
  int batch = 16, ctx = 64;
  double val_fraction = 0.1;  // the last 10% of the file
  int val_batches = 8;        // fixed validation windows: val_batches x batch sequences
  // optimisation
  int64_t steps = 300;
  double lr = 3e-3, min_lr_frac = 0.0, warmup_frac = 0.1, clip = 1.0;
  adamw_config adam;
  uint64_t seed = 1;
  std::string plan = "fp32";
  bool l1_norm = false;
  // bookkeeping
  int64_t eval_every = 0;        // 0: steps / 10
  int64_t checkpoint_every = 0;  // 0: steps / 5
  std::string out_dir;           // "" = no files
  // fine-tuning (docs/training.md §3.5; train/job.hpp resolves them)
  std::string init;          // the model file to start from ("" = random init): its architecture, config and weights
  std::string init_weights;  // "" = init's weights; a PTQ method (rtn, gptq, ...): them quantized in the plan's weight format
  int calib_samples = 128, calib_ctx = 256;  // init_weights' calibration windows (the quantize job's)

  model_config model_shape(int vocab) const;
  nlohmann::json to_json() const;
  static train_run_config from_json(const nlohmann::json& j);  // throws naming an unknown key
};

struct train_point {
  int64_t step = 0;       // 1-based: after this many updates
  double train_loss = 0;  // mean over the step's global batch
  double val_loss = -1;   // < 0: not evaluated at this step
  double lr = 0, grad_norm = 0;
  double tokens_per_s = 0;  // of the whole job (all ranks)
};

struct train_result {
  double val_loss = 0, train_loss = 0;
  int64_t steps = 0, params = 0, tokens = 0;  // tokens: trained tokens (D)
  double seconds = 0, tokens_per_s = 0;
  int64_t resumed_from = 0;
  std::vector<train_point> curve;
  model trained;
};

// The tokens of cfg.data_path: the first (1 - val_fraction) of its bytes (cut at a UTF-8 character
// boundary) is the training part, the rest the validation part, each tokenized on its own: as one
// plain stream, or (documents) as evaluation reads text, documents with BOS (text/documents.hpp),
// which is how a pretrained start reads it. Throws when either part is shorter than a window.
struct token_split {
  std::vector<int32_t> train, val;
};
token_split training_tokens(const train_run_config& cfg, const tokenizer& tok, bool documents);

// Trains a model as configured. quantizer may be null (fp32). With cfg.out_dir set, writes
// out_dir/log.jsonl, out_dir/checkpoint.safetensors (+ model.safetensors that eval loads) every
// checkpoint_every steps and at the end; resume continues from the checkpoint there, bit-exactly
// (refusing one made with another configuration). progress(point, steps) after every step.
// init (fine-tuning): the start, whose config (architecture, vocabulary, context, norms, RoPE) is
// the trained model's and whose weights are the first step's; the text is then read as documents
// (training_tokens). Null: a fresh model of cfg's shape, N(0, 0.02) in cfg.seed.
train_result run_training(const train_run_config& cfg, const tokenizer& tok, const tokenizer_source& tok_src,
                          operand_quantizer* quantizer, bool resume,
                          const std::function<void(const train_point&, int64_t)>& progress = {},
                          const model* init = nullptr);

}  // namespace lowbit
