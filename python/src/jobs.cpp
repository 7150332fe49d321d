// Models and jobs as library calls (docs/python.md "Models and jobs"): lowbit.Model and
// lowbit.Tokenizer over the readers of io/, and the CLI's jobs through the same library calls —
// evaluate (runs/eval_job.hpp, `lowbit eval`), quantize_model (ptq/job.hpp, `lowbit quantize`),
// train (train/job.hpp, `lowbit train`) and runs (runs/runs_db.hpp, the results store). Each
// returns the document its command prints with --json, as a dict. Jobs run with the GIL released;
// their progress hooks take it back to check for Ctrl-C and to call the user's callback.
#include <Python.h>

#include <climits>
#include <filesystem>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "bindings.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/explore/finetune.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/ptq/job.hpp"
#include "lowbit/runs/eval_job.hpp"
#include "lowbit/runs/runs_db.hpp"
#include "lowbit/text/documents.hpp"
#include "lowbit/text/tokenizer.hpp"
#include "lowbit/train/checkpoint.hpp"
#include "lowbit/train/job.hpp"

namespace fs = std::filesystem;

namespace lowbit::python {
namespace {

std::string type_name(const py::handle& x) { return py::str(py::type::of(x).attr("__name__")); }

// JSON as Python values: objects as dicts, arrays as lists, null as None.
py::object to_py(const nlohmann::json& j) {
  using t = nlohmann::json::value_t;
  switch (j.type()) {
    case t::boolean: return py::bool_(j.get<bool>());
    case t::number_integer: return py::int_(j.get<int64_t>());
    case t::number_unsigned: return py::int_(j.get<uint64_t>());
    case t::number_float: return py::float_(j.get<double>());
    case t::string: return py::str(j.get_ref<const std::string&>());
    case t::array: {
      py::list l;
      for (const auto& x : j) l.append(to_py(x));
      return l;
    }
    case t::object: {
      py::dict d;
      for (const auto& [k, v] : j.items()) d[py::str(k)] = to_py(v);
      return d;
    }
    default: return py::none();
  }
}

// A str or os.PathLike as a path; TypeError for anything else.
std::string path_of(const py::handle& p, const std::string& what) {
  if (py::isinstance<py::str>(p)) return p.cast<std::string>();
  if (py::hasattr(p, "__fspath__")) {
    py::object s = py::module_::import("os").attr("fspath")(p);
    if (py::isinstance<py::str>(s)) return s.cast<std::string>();
  }
  throw py::type_error(what + " must be a path (str or os.PathLike), got " + type_name(p));
}

// None as "" (the library's "not given"), else a path.
std::string optional_path(const py::handle& p, const std::string& what) {
  return p.is_none() ? std::string() : path_of(p, what);
}

// None as "", a spec string as typed, a lowbit.Format as its canonical spec.
std::string spec_of(const py::handle& s, const std::string& what) {
  if (s.is_none()) return "";
  if (py::isinstance<py::str>(s)) return s.cast<std::string>();
  if (py::isinstance<format>(s)) return format_name(s.cast<format>());
  throw py::type_error(what + " must be a format spec (str), a lowbit.Format or None, got " + type_name(s));
}

// An int (or numpy integer: anything with __index__) as int64; ValueError when it does not fit.
int64_t integer_of(const py::handle& v, const std::string& what) {
  auto i = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
  if (!i) throw py::error_already_set();
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
  if (overflow) throw py::value_error(what + " = " + std::string(py::str(v)) + " does not fit 64 bits");
  return static_cast<int64_t>(x);
}

// A Python value of a training setting as JSON (what train_run_config::from_json reads).
nlohmann::json setting_of(const py::handle& v, const std::string& key) {
  if (v.is_none()) return nullptr;
  if (PyBool_Check(v.ptr())) return v.cast<bool>();
  if (py::isinstance<py::str>(v)) return v.cast<std::string>();
  if (PyIndex_Check(v.ptr())) return integer_of(v, "train: '" + key + "'");  // int and numpy integers
  if (PyFloat_Check(v.ptr()) || py::hasattr(v, "__float__")) return py::float_(py::reinterpret_borrow<py::object>(v)).cast<double>();
  if (py::hasattr(v, "__fspath__")) return path_of(v, "train: '" + key + "'");
  throw py::type_error("train: '" + key + "' must be a number, a string, a bool or None, got " + type_name(v));
}

// A job's progress hook: with the GIL, a pending signal (Ctrl-C) stops the job as
// KeyboardInterrupt, then the callback (when not None) gets the numbers. It holds the callback by
// pointer, so the library may copy the hook without the GIL.
struct progress_hook {
  const py::object* callback;
  template <class... Args>
  void operator()(Args&&... args) const {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (!callback->is_none()) (*callback)(std::forward<Args>(args)...);
  }
};

void check_callback(const py::object& f) {
  if (!f.is_none() && !PyCallable_Check(f.ptr()))
    throw py::type_error("progress must be callable or None, got " + type_name(f));
}

std::shared_ptr<model> load(const py::handle& path) {
  const std::string p = path_of(path, "model");
  py::gil_scoped_release release;
  return std::make_shared<model>(load_model(p));
}

py::dict config_dict(const model_config& c) {
  py::dict d;
  d["arch"] = architecture_name(c.arch);
  d["dim"] = c.dim, d["hidden"] = c.hidden_dim, d["layers"] = c.n_layers, d["heads"] = c.n_heads;
  d["kv_heads"] = c.n_kv_heads, d["vocab"] = c.vocab_size, d["ctx"] = c.max_seq_len;
  d["norm_eps"] = c.norm_eps, d["rope_theta"] = c.rope_theta, d["tied"] = c.tied_classifier;
  d["l1_norm"] = c.l1_norm, d["parameters"] = c.parameter_count();
  d["variants"] = c.variant_string();  // the family's variants that are not its defaults ("" for none)
  return d;
}

py::array tensor_copy(const model& m, const std::string& name) {
  const tensor& t = m.get(name);
  py::array_t<float> out(t.shape);
  std::copy(t.data.begin(), t.data.end(), out.mutable_data());
  return out;
}

py::list list_of(const std::vector<int32_t>& ids) {
  py::list l(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) l[i] = py::int_(ids[i]);
  return l;
}

// A sequence of token ids (ints that fit 32 bits).
std::vector<int32_t> ids_of(const py::handle& seq) {
  if (py::isinstance<py::str>(seq) || !py::isinstance<py::sequence>(seq))
    throw py::type_error("ids must be a sequence of int, got " + type_name(seq));
  std::vector<int32_t> ids;
  for (const py::handle& x : seq.cast<py::sequence>()) {
    if (PyBool_Check(x.ptr()) || !PyIndex_Check(x.ptr())) throw py::type_error("ids must be ints, got " + type_name(x));
    const int64_t v = integer_of(x, "token id");
    if (v < INT32_MIN || v > INT32_MAX) throw py::value_error("token id " + std::to_string(v) + " does not fit 32 bits");
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

// Text as str, with any bytes that are not UTF-8 (a piece cut inside a character) as U+FFFD.
py::str text_of(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

std::shared_ptr<tokenizer> tokenizer_for(const py::handle& m, const py::handle& tok) {
  const std::string path = optional_path(tok, "tokenizer");
  if (py::isinstance<model>(m)) {
    auto mm = m.cast<std::shared_ptr<model>>();
    py::gil_scoped_release release;
    return tokenizer_for_model(*mm, path);
  }
  const std::string p = path_of(m, "model");
  py::gil_scoped_release release;
  return tokenizer_for_model(open_model_reader(p)->header, path);  // the header names the tokenizer
}

py::object evaluate_job(const py::handle& m, const py::handle& data, const py::handle& tokenizer,
                        const py::handle& weights, const py::handle& acts, const py::handle& kv,
                        const py::handle& rules, int ctx, int64_t max_tokens, bool kl_base, const py::handle& db,
                        const py::handle& attn, const py::object& progress) {
  check_callback(progress);
  eval_job_config c;
  std::shared_ptr<model> in_memory;
  if (py::isinstance<model>(m)) {
    in_memory = m.cast<std::shared_ptr<model>>();
    c.model = in_memory->source_path;
  } else {
    c.model = path_of(m, "model");
  }
  c.data = path_of(data, "data");
  c.tokenizer = optional_path(tokenizer, "tokenizer");
  c.weights = spec_of(weights, "weights"), c.acts = spec_of(acts, "acts"), c.kv = spec_of(kv, "kv");
  c.rules = optional_path(rules, "rules");
  c.attn = spec_of(attn, "attn");
  c.ctx = ctx, c.max_tokens = max_tokens, c.kl_base = kl_base;
  const std::string db_path = optional_path(db, "db");
  nlohmann::json doc;
  {
    py::gil_scoped_release release;
    const progress_hook hook{&progress};
    const eval_job job = in_memory ? run_eval_job(c, *in_memory, hook) : run_eval_job(c, hook);
    doc = eval_job_json(c, job);
    if (!db_path.empty()) doc["db_id"] = runs_db(db_path).record(eval_run_record(c, job));
  }
  return to_py(doc);
}

std::string model_file(const py::handle& m) {
  if (!py::isinstance<model>(m)) return path_of(m, "model");
  const std::string p = m.cast<std::shared_ptr<model>>()->source_path;
  if (p.empty())
    throw py::value_error("quantize_model reads the model from its file, and this Model has none "
                          "(a trained model: train with out= and quantize out/model.safetensors)");
  return p;
}

py::object quantize_job(const py::handle& m, const py::handle& data, const py::handle& weights, const py::handle& out,
                        const std::string& method, const py::handle& tokenizer, int calib_samples, int calib_ctx,
                        uint64_t seed, double damp, bool act_order, double alpha, int lorc_rank,
                        const py::handle& lorc_format, bool bias_correction, bool preshift, bool equalize,
                        bool rotate, bool force, bool float_values, int64_t eval_tokens, const py::handle& adaround_iters,
                        const py::handle& adaround_lambda, bool shared_pow2_scales, const py::object& progress) {
  check_callback(progress);
  ptq::quantize_job_config c;
  c.model = model_file(m);
  c.tokenizer = optional_path(tokenizer, "tokenizer");
  c.data = path_of(data, "data");
  if (weights.is_none()) throw py::type_error("weights: a format spec (e.g. 'int4/g32') or a lowbit.Format is needed");
  c.weights = spec_of(weights, "weights");
  c.method = method;
  c.out = path_of(out, "out");
  c.calib_samples = calib_samples, c.calib_ctx = calib_ctx, c.seed = seed, c.damp = damp, c.act_order = act_order;
  c.alpha = alpha, c.lorc_rank = lorc_rank, c.lorc_format = spec_of(lorc_format, "lorc_format");
  c.bias_correct = bias_correction, c.preshift = preshift, c.equalize = equalize, c.rotate = rotate;
  c.force = force, c.float_values = float_values, c.eval_tokens = eval_tokens;
  if (!adaround_iters.is_none()) c.adaround_iters = adaround_iters.cast<int>();
  if (!adaround_lambda.is_none()) c.adaround_lambda = adaround_lambda.cast<double>();
  c.shared_pow2_scales = shared_pow2_scales;
  nlohmann::json doc;
  {
    py::gil_scoped_release release;
    ptq::quantize_job_hooks hooks;
    hooks.progress = progress_hook{&progress};
    hooks.note = [](const std::string& line) {  // as the CLI: a line on stderr
      py::gil_scoped_acquire gil;
      py::module_::import("sys").attr("stderr").attr("write")(line + "\n");
    };
    doc = ptq::quantize_job_json(c, ptq::run_quantize_job(c, hooks));
  }
  return to_py(doc);
}

py::object train_job_call(const py::handle& config, bool resume, const py::object& progress,
                          const py::kwargs& settings) {
  check_callback(progress);
  // The settings under train_run_config's keys (`lowbit train --config`'s): config first, then
  // the keyword arguments over it; from_json refuses an unknown key.
  nlohmann::json j = nlohmann::json::object();
  if (!config.is_none()) {
    if (!py::isinstance<py::dict>(config))
      throw py::type_error("config must be a dict of training settings or None, got " + type_name(config));
    for (const auto& [k, v] : config.cast<py::dict>()) {
      const std::string key = py::str(k);
      j[key] = setting_of(v, key);
    }
  }
  for (const auto& [k, v] : settings) {
    const std::string key = py::str(k);
    j[key] = setting_of(v, key);
  }
  for (auto it = j.begin(); it != j.end();)  // None: the default
    it = it->is_null() ? j.erase(it) : std::next(it);
  const train_run_config cfg = train_run_config::from_json(j);
  std::set<std::string> given;  // with init, the model's architecture gives way only to these
  for (const auto& [key, value] : j.items()) given.insert(key);
  const std::string data_dir = shipped_data_dir(LOWBIT_DEFAULT_DATA_DIR);
  nlohmann::json doc, curve = nlohmann::json::array();
  std::shared_ptr<model> trained;
  {
    py::gil_scoped_release release;
    train_job job = prepare_train_job(cfg, resume, data_dir, given);
    train_result r = run_training(job, [&](const train_point& p, int64_t steps) {
      py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (!progress.is_none()) progress(to_py(train_point_json(p)), steps);
    });
    doc = train_job_json(job, r);
    for (const train_point& p : r.curve) curve.push_back(train_point_json(p));
    trained = std::make_shared<model>(std::move(r.trained));
  }
  auto d = py::reinterpret_borrow<py::dict>(to_py(doc));
  d["curve"] = to_py(curve);
  d["model"] = py::cast(trained);
  return d;
}

py::list runs_rows(const py::handle& db, const py::handle& kind, const py::handle& model_name,
                   const py::handle& method) {
  const std::string path = path_of(db, "db");
  auto text = [](const py::handle& h, const char* what) {
    if (h.is_none()) return std::string();
    if (!py::isinstance<py::str>(h)) throw py::type_error(std::string(what) + " must be a str or None, got " + type_name(h));
    return h.cast<std::string>();
  };
  const runs_db::filter f{text(kind, "kind"), text(model_name, "model"), text(method, "method")};
  if (!fs::exists(path)) throw error("runs: " + path + ": no such results database");
  std::vector<run_record> rows;
  {
    py::gil_scoped_release release;
    rows = runs_db(path, runs_db::access::existing).query(f);
  }
  py::list out;
  for (const run_record& r : rows) out.append(to_py(to_json(r)));
  return out;
}

}  // namespace

void register_jobs(py::module_& m) {
  m.def("data_dir", [] { return shipped_data_dir(LOWBIT_DEFAULT_DATA_DIR); },
        "The shipped data directory: $LOWBIT_DATA_DIR, else $LOWBIT_DATA, else the build's (as the CLI's).");

  py::class_<model, std::shared_ptr<model>>(m, "Model",
      "A model in memory, its float32 tensors under the canonical GGUF names (docs/conventions.md "
      "§18). Made by lowbit.load_model or lowbit.train; read-only from Python.")
      .def_property_readonly("path", [](const model& x) { return x.source_path; },
                             "The file it was read from ('' for a trained model in memory).")
      .def_property_readonly("config", [](const model& x) { return config_dict(x.config); },
                             "arch, dim, hidden, layers, heads, kv_heads, vocab, ctx, norm_eps, rope_theta, tied, "
                             "l1_norm, parameters (named as lowbit.train's settings where they share one), variants "
                             "(the family's non-default variants, docs/evaluation.md's model families; '' for none).")
      .def_property_readonly("provenance", [](const model& x) -> py::object {
        if (x.provenance.empty()) return py::none();
        return to_py(nlohmann::json::parse(x.provenance, nullptr, false));
      }, "How the weights were made (lowbit quantize's or train's description), None for an original.")
      .def_property_readonly("tokenizer_source", [](const model& x) {
        py::dict d;
        d["kind"] = x.tokenizer.kind, d["path"] = x.tokenizer.path;
        return d;
      }, "The tokenizer the file names: kind ('' when none) and path.")
      .def("tensor_names", [](const model& x) {
        py::list l;
        for (const auto& [name, t] : x.tensors) l.append(name);
        return l;
      }, "Names of every tensor, sorted.")
      .def("linear_weight_names", [](const model& x) {
        py::list l;
        for (const std::string& name : x.linear_weight_names()) l.append(name);
        return l;
      },
           "The linear weights of attention and MLP: what a weight format quantizes by default.")
      .def("tensor", &tensor_copy, py::arg("name"), "A float32 numpy copy of tensor `name` ([out, in] matrices).")
      .def("__contains__", [](const model& x, const std::string& name) { return x.find(name) != nullptr; })
      .def("__repr__", [](const model& x) {
        return "<lowbit.Model " + std::string(architecture_name(x.config.arch)) + " " +
               std::to_string(x.config.parameter_count()) + " parameters" +
               (x.source_path.empty() ? std::string() : " from '" + x.source_path + "'") + ">";
      });

  m.def("load_model", &load, py::arg("path"),
        "Reads a model file: llama2.c .bin, .safetensors (config.json beside it, or lowbit's metadata; packed "
        "codes dequantized) or .gguf. Raises lowbit.Error naming the file and field on bad input.");

  py::class_<tokenizer, std::shared_ptr<tokenizer>>(m, "Tokenizer",
      "Text <-> token ids (llama2.c, SentencePiece, GPT-2 BPE or bytes), as evaluation and training use them.")
      .def_property_readonly("kind", &tokenizer::kind)
      .def_property_readonly("vocab_size", &tokenizer::vocab_size)
      .def_property_readonly("bos_id", &tokenizer::bos_id)
      .def_property_readonly("eos_id", &tokenizer::eos_id)
      .def("encode", [](const tokenizer& t, const std::string& text, bool bos, bool eos) {
        std::vector<int32_t> ids;
        {
          py::gil_scoped_release release;
          ids = t.encode(text, bos, eos);
        }
        return list_of(ids);
      }, py::arg("text"), py::arg("bos") = false, py::arg("eos") = false, "Token ids of text (list of int).")
      .def("encode_documents", [](const tokenizer& t, const std::string& text) {
        std::vector<int32_t> ids;
        {
          py::gil_scoped_release release;
          ids = encode_documents(t, text);
        }
        return list_of(ids);
      }, py::arg("text"),
         "The token stream evaluation scores: documents split at blank lines, each stripped and encoded with BOS.")
      .def("decode", [](const tokenizer& t, const py::handle& ids) { return text_of(t.decode(ids_of(ids))); },
           py::arg("ids"), "Text of ids (BOS/EOS give ''; bytes that are not UTF-8 become U+FFFD).")
      .def("__repr__", [](const tokenizer& t) {
        return "<lowbit.Tokenizer " + t.kind() + " " + std::to_string(t.vocab_size()) + " tokens>";
      });

  m.def("load_tokenizer", [](const py::handle& path) {
    const std::string p = path_of(path, "tokenizer");
    py::gil_scoped_release release;
    return std::shared_ptr<tokenizer>(load_tokenizer(p));
  }, py::arg("path"),
     "A tokenizer file: tokenizer.bin (llama2.c), *.model (SentencePiece), encoder.json or its directory (GPT-2), "
     "or 'bytes'.");
  m.def("tokenizer_for", &tokenizer_for, py::arg("model"), py::arg("tokenizer") = py::none(),
        "The tokenizer `lowbit eval` uses for a model (a path or a lowbit.Model): `tokenizer` when given, else what "
        "the file names, else a tokenizer file beside it.");

  m.def("evaluate", &evaluate_job, py::arg("model"), py::arg("data"), py::kw_only(),
        py::arg("tokenizer") = py::none(), py::arg("weights") = py::none(), py::arg("acts") = py::none(),
        py::arg("kv") = py::none(), py::arg("rules") = py::none(), py::arg("ctx") = 0, py::arg("max_tokens") = 0,
        py::arg("kl_base") = false, py::arg("db") = py::none(), py::arg("attn") = py::none(),
        py::arg("progress") = py::none(),
        "`lowbit eval` as a call: perplexity (and with kl_base the KL divergence from the float model) of a model "
        "(a path, or a lowbit.Model already loaded) on a text file, under a plan: weights (round to nearest), "
        "acts (each linear layer's input), kv (the KV cache), rules (a rules.json). Returns `eval --json`'s "
        "document as a dict (mean_nll, ppl, nll_stderr, tokens_scored, windows, kl: {mean, p99, top1_agreement, "
        "...}, bits_per_weight, ...), the same numbers bit for bit. db: also record the run in that results "
        "database as `eval --db` does (its id as db_id). progress(done_tokens, total_tokens) after each window.");

  m.def("quantize_model", &quantize_job, py::arg("model"), py::arg("data"), py::arg("weights"), py::kw_only(),
        py::arg("out"), py::arg("method") = "gptq", py::arg("tokenizer") = py::none(), py::arg("calib_samples") = 128,
        py::arg("calib_ctx") = 256, py::arg("seed") = 0, py::arg("damp") = 0.01, py::arg("act_order") = false,
        py::arg("alpha") = 0.5, py::arg("lorc_rank") = 0, py::arg("lorc_format") = py::none(),
        py::arg("bias_correction") = false, py::arg("preshift") = false, py::arg("equalize") = false,
        py::arg("rotate") = false, py::arg("force") = false, py::arg("float_values") = false,
        py::arg("eval_tokens") = 0, py::arg("adaround_iters") = py::none(), py::arg("adaround_lambda") = py::none(),
        py::arg("shared_pow2_scales") = false, py::arg("progress") = py::none(),
        "`lowbit quantize` as a call: post-training quantization of a model file (a path, or a lowbit.Model read "
        "from one) with a method (rtn, gptq, awq, smoothquant, ...: docs/ptq.md) calibrated on `data`, written to "
        "`out` (.safetensors: codes + scales, or float values with float_values; .gguf: llama.cpp's types). The "
        "keyword arguments are the command's flags. Returns `quantize --json`'s document as a dict. "
        "progress(done, total) after each pipeline step.");

  m.def("train", &train_job_call, py::arg("config") = py::none(), py::kw_only(), py::arg("resume") = false,
        py::arg("progress") = py::none(),
        "`lowbit train` as a call: trains a Llama-style or GPT-2 model under a training plan. The settings are "
        "keyword arguments (or a `config` dict under them) with `lowbit train --config`'s keys: arch, dim, "
        "layers, heads, kv_heads, hidden, tied, data, tokenizer, batch, ctx, val_batches, steps, lr, min_lr_frac, "
        "warmup_frac, clip, weight_decay, seed, plan, eval_every, checkpoint_every, out, init (fine-tune a model "
        "file: its architecture, weights and tokenizer), init_weights (start from them quantized by a PTQ method: "
        "rtn, gptq, ...), calib_samples, calib_ctx; an unknown key "
        "raises lowbit.Error. Returns `train --json`'s document as a dict, plus curve (one dict per step, "
        "log.jsonl's lines) and model (the trained lowbit.Model). progress(point, steps) after each step.");

  m.def("runs", &runs_rows, py::arg("db"), py::kw_only(), py::arg("kind") = py::none(), py::arg("model") = py::none(),
        py::arg("method") = py::none(),
        "The runs of a results database (SQLite, as `--db` writes it), in id order, each a dict with the store's "
        "columns (id, kind, model, n_params, tokens, format, canonical, element, exp_bits, man_bits, bits, block, "
        "scale_format, method, plan, metrics (NaN as None), config, config_hash, revision, time), as `explore "
        "--config --json` prints runs. kind, model, method: keep only runs with that value.");
}

}  // namespace lowbit::python
