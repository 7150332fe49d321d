// Sweeps over models x formats x methods x eval settings (sweep.hpp). One coordinator owns the
// results database and hands runs to workers: a thread of its own process, forked worker
// processes (-j N), or the other Open MPI ranks; workers send each finished run back as one JSON
// line / message and the coordinator records it, so a run is in the database exactly when it
// has finished, and a killed sweep loses only the runs in flight.
#include "lowbit/explore/sweep.hpp"
#include "lowbit/explore/explore.hpp"
#include "lowbit/explore/study_json.hpp"
#include "lowbit/runs/records.hpp"

#include <fcntl.h>
#include <mpi.h>
#include <omp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/base/mpi_world.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/ptq/calibrate.hpp"
#include "lowbit/ptq/job.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/formats/analysis.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/text/documents.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/runs/spread.hpp"
#include "lowbit/runs/task_eval.hpp"

namespace fs = std::filesystem;

namespace lowbit {

// ---- sweep.json ----------------------------------------------------------------------------------
namespace {

void require_file(const std::string& path, const std::string& where) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw error(fmt::format("{}: {}: no such file", where, path));
}

void check_spec(const std::string& spec, const std::string& where) {
  try {
    parse_optional_format(spec);
  } catch (const lowbit::error& e) {
    throw error(fmt::format("{}: {}", where, e.what()));
  }
}

// A method object {"name", "method", options...}: its label. Its options are checked with each
// weight format that runs it, as `lowbit quantize` checks its flags (check_method_object).
std::string parse_method_object(const nlohmann::json& m, const std::string& where) {
  refuse_unknown_keys(m, {"name", "method", "lorc_rank", "lorc_format", "shared_pow2_scales", "equalize", "bias_correction",
                "alpha", "damp", "act_order", "adaround_iters", "adaround_lambda", "preshift", "rotate",
                "act_calibration"},
            where);
  if (!m.contains("name") || !m["name"].is_string() || m["name"].get<std::string>().empty())
    throw error(fmt::format("{}: a method object needs a \"name\" (the label its runs are recorded under)", where));
  if (!m.contains("method") || !m["method"].is_string())
    throw error(fmt::format("{}: a method object needs a \"method\" (a method's name)", where));
  if (m.contains("act_calibration")) {  // the statistic, whatever the format
    try {
      if (!m["act_calibration"].is_string())
        throw error("act_calibration: expected a statistic: max, mse, llmfp4 or percentile:P");
      ptq::act_calibration_options ao;
      ptq::parse_act_statistic(m["act_calibration"].get<std::string>(), ao);
    } catch (const lowbit::error& e) {
      throw error(fmt::format("{}: {}", where, e.what()));
    }
  }
  return m["name"].get<std::string>();
}

// A method object's options with the weight format (and activation format) of a format entry
// that runs it, as `quantize` would check them.
void check_method_object(const nlohmann::json& m, const sweep_plan& p, const std::string& where) {
  try {
    ptq::quantize_options_of(method_job_config(m, p.weights));
  } catch (const lowbit::error& e) {
    throw error(fmt::format("{}: {}", where, e.what()));
  }
  if (!m.contains("act_calibration")) return;
  const std::string w = where + " (act_calibration)";
  const auto acts = parse_optional_format(p.acts);
  if (!acts) throw error(fmt::format("{}: no activation format to calibrate", w));
  check_static_format(*acts, w);
}

}  // namespace

ptq::quantize_job_config method_job_config(const nlohmann::json& m, const std::string& weights) {
  ptq::quantize_job_config q;
  q.method = m.at("method").get<std::string>();
  q.weights = weights;
  q.lorc_rank = m.value("lorc_rank", 0);
  q.lorc_format = m.value("lorc_format", std::string());
  q.shared_pow2_scales = m.value("shared_pow2_scales", false);
  q.equalize = m.value("equalize", false);
  q.bias_correct = m.value("bias_correction", false);
  q.alpha = m.value("alpha", q.alpha);
  q.damp = m.value("damp", q.damp);
  q.act_order = m.value("act_order", false);
  if (m.contains("adaround_iters")) q.adaround_iters = m["adaround_iters"].get<int>();
  if (m.contains("adaround_lambda")) q.adaround_lambda = m["adaround_lambda"].get<double>();
  q.preshift = m.value("preshift", false);
  q.rotate = m.value("rotate", false);
  return q;
}

namespace {

void parse_tasks(const nlohmann::json& list, sweep_config& c, const std::string& base_dir, const std::string& data_dir) {
  const std::string& source = c.source;
  if (!list.is_array() || list.empty())
    throw error(fmt::format("{}: tasks: expected a non-empty list of {{\"kind\", \"n\", \"seed\", ...}}", source));
  std::set<std::string> names;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = fmt::format("{}: tasks[{}]", source, i);
    const auto& t = list[i];
    if (!t.is_object()) throw error(fmt::format("{}: expected an object", where));
    refuse_unknown_keys(t, {"name", "kind", "n", "seed", "options", "max_chars", "text"}, where);
    sweep_task task;
    if (!t.contains("kind") || !t["kind"].is_string()) throw error(fmt::format("{}: \"kind\": ending or lastword", where));
    try {
      task.build.kind = parse_task_kind(t["kind"].get<std::string>());
    } catch (const lowbit::error& e) {
      throw error(fmt::format("{}: {}", where, e.what()));
    }
    task.name = t.value("name", t["kind"].get<std::string>());
    if (!names.insert(task.name).second) throw error(fmt::format("{}: a second task named '{}'", where, task.name));
    task.build.n = t.value("n", int64_t(300));
    task.build.seed = t.value("seed", uint64_t(0));
    task.build.options = t.value("options", task.build.options);
    task.build.max_chars = t.value("max_chars", task.build.max_chars);
    if (task.build.n < 1 || task.build.options < 2 || task.build.max_chars < 1)
      throw error(fmt::format("{}: expected n >= 1, options >= 2 and max_chars >= 1", where));
    task.text = t.contains("text") ? resolve_config_path(t["text"].get<std::string>(), base_dir, data_dir, where) : c.data;
    require_file(task.text, where);
    c.tasks.push_back(task);
  }
}

}  // namespace

sweep_plan parse_plan_row(const std::string& row) {
  std::vector<std::string> parts;
  std::stringstream ss(row);
  std::string p;
  while (std::getline(ss, p, ',')) parts.push_back(p == "-" ? "" : p);
  if (parts.empty() || parts.size() > 3)
    throw error(fmt::format("'{}': expected WEIGHTS[,ACTS[,KV]] ('-' for float)", row));
  parts.resize(3);
  return {parts[0], parts[1], parts[2], {}};
}

std::string plan_label(const sweep_plan& p) {
  std::string s = p.weights.empty() ? "fp32" : p.weights;
  if (!p.acts.empty() || !p.kv.empty()) s += "," + (p.acts.empty() ? std::string("-") : p.acts);
  if (!p.kv.empty()) s += "," + p.kv;
  return s;
}

sweep_config parse_sweep_config(const nlohmann::json& j, const std::string& base_dir, const std::string& data_dir,
                                const std::string& source) {
  sweep_config c;
  c.source = source;
  if (!j.is_object()) throw error(fmt::format("{}: expected a JSON object", source));
  refuse_unknown_keys(j, {"models", "data", "formats", "methods", "eval", "kl_base", "calibration", "tasks", "spread", "sqnr",
                "train"},
            source);
  auto str = [&](const nlohmann::json& v, const std::string& where) {
    if (!v.is_string()) throw error(fmt::format("{}: {}: expected a string", source, where));
    return v.get<std::string>();
  };
  try {
    // models
    std::vector<nlohmann::json> models;
    if (j.contains("models")) {
      if (!j["models"].is_array() || j["models"].empty())
        throw error(fmt::format("{}: models: expected a non-empty list", source));
      for (const auto& m : j["models"]) models.push_back(m);
    } else {
      models.push_back("${LOWBIT_DATA_DIR}/llama2c/stories260K.bin");
    }
    std::set<std::string> names;
    for (size_t i = 0; i < models.size(); ++i) {
      const std::string where = fmt::format("{}: models[{}]", source, i);
      sweep_model m;
      std::string path;
      if (models[i].is_string()) {
        path = models[i].get<std::string>();
      } else if (models[i].is_object()) {
        refuse_unknown_keys(models[i], {"path", "name", "tokenizer"}, where);
        if (!models[i].contains("path")) throw error(fmt::format("{}: no \"path\"", where));
        path = str(models[i]["path"], fmt::format("models[{}].path", i));
        if (models[i].contains("name")) m.name = str(models[i]["name"], fmt::format("models[{}].name", i));
        if (models[i].contains("tokenizer")) {
          const std::string t = str(models[i]["tokenizer"], fmt::format("models[{}].tokenizer", i));
          m.tokenizer = t == "bytes" ? t : resolve_config_path(t, base_dir, data_dir, where);
          if (m.tokenizer != "bytes") require_file(m.tokenizer, where);
        }
      } else {
        throw error(fmt::format("{}: expected a path or {{\"path\", \"name\", \"tokenizer\"}}", where));
      }
      m.path = resolve_config_path(path, base_dir, data_dir, where);
      require_file(m.path, where);
      if (m.name.empty()) m.name = fs::path(m.path).stem().string();
      if (!names.insert(m.name).second)
        throw error(fmt::format("{}: a second model named '{}': give each a \"name\"", where, m.name));
      c.models.push_back(m);
    }
    // data
    c.data = resolve_config_path(j.contains("data") ? str(j["data"], "data") : "${LOWBIT_DATA_DIR}/text/tinystories_val_sample.txt",
                     base_dir, data_dir, source + ": data");
    require_file(c.data, source + ": data");
    if (j.contains("train")) c.family = parse_family_config(j["train"], base_dir, data_dir, source);
    // formats (required, unless a family is trained)
    const bool formats_given = !c.family || j.contains("formats");
    if (formats_given && (!j.contains("formats") || !j["formats"].is_array() || j["formats"].empty()))
      throw error(fmt::format("{}: formats: expected a non-empty list of WEIGHTS[,ACTS[,KV]] strings or "
                              "{{\"weights\", \"acts\", \"kv\"}} objects", source));
    for (size_t i = 0; formats_given && i < j["formats"].size(); ++i) {
      const auto& f = j["formats"][i];
      const std::string where = fmt::format("{}: formats[{}]", source, i);
      sweep_plan p;
      if (f.is_string()) {
        try {
          p = parse_plan_row(f.get<std::string>());
        } catch (const lowbit::error& e) {
          throw error(fmt::format("{}: {}", where, e.what()));
        }
      } else if (f.is_object()) {
        refuse_unknown_keys(f, {"weights", "acts", "kv", "methods"}, where);
        auto part = [&](const char* k) {
          const std::string v = f.contains(k) ? str(f[k], fmt::format("formats[{}].{}", i, k)) : "";
          return v == "-" ? std::string() : v;
        };
        p = {part("weights"), part("acts"), part("kv"), {}};
        if (f.contains("methods")) {
          if (!f["methods"].is_array() || f["methods"].empty())
            throw error(fmt::format("{}: methods: expected a non-empty list of the sweep's method labels", where));
          for (size_t k = 0; k < f["methods"].size(); ++k)
            p.methods.push_back(str(f["methods"][k], fmt::format("formats[{}].methods[{}]", i, k)));
        }
      } else {
        throw error(fmt::format("{}: expected a string or an object", where));
      }
      check_spec(p.weights, where + " (weights)");
      check_spec(p.acts, where + " (acts)");
      check_spec(p.kv, where + " (kv)");
      c.formats.push_back(p);
    }
    // methods
    if (j.contains("methods")) {
      if (!j["methods"].is_array() || j["methods"].empty())
        throw error(fmt::format("{}: methods: expected a non-empty list", source));
      c.methods.clear();
      for (size_t i = 0; i < j["methods"].size(); ++i) {
        const auto& entry = j["methods"][i];
        const std::string where = fmt::format("{}: methods[{}]", source, i);
        std::string label;
        if (entry.is_object()) {
          label = parse_method_object(entry, where);
          c.method_options[label] = entry;
          c.method_options[label].erase("name");
        } else {
          label = str(entry, fmt::format("methods[{}]", i));
          try {
            ptq::parse_method(label);
          } catch (const lowbit::error& e) {
            throw error(fmt::format("{}: {}", where, e.what()));
          }
        }
        if (std::find(c.methods.begin(), c.methods.end(), label) != c.methods.end())
          throw error(fmt::format("{}: a second method named '{}'", where, label));
        c.methods.push_back(label);
      }
    }
    // eval settings
    if (j.contains("eval")) {
      const nlohmann::json list = j["eval"].is_array() ? j["eval"] : nlohmann::json::array({j["eval"]});
      if (list.empty()) throw error(fmt::format("{}: eval: expected an object or a non-empty list", source));
      c.evals.clear();
      for (size_t i = 0; i < list.size(); ++i) {
        const std::string where = fmt::format("{}: eval[{}]", source, i);
        if (!list[i].is_object()) throw error(fmt::format("{}: expected {{\"ctx\", \"max_tokens\"}}", where));
        refuse_unknown_keys(list[i], {"ctx", "max_tokens"}, where);
        sweep_eval e;
        e.ctx = list[i].value("ctx", 0);
        e.max_tokens = list[i].value("max_tokens", int64_t(0));
        if (e.ctx < 0 || e.max_tokens < 0) throw error(fmt::format("{}: ctx and max_tokens must be >= 0", where));
        c.evals.push_back(e);
      }
    }
    for (size_t i = 0; i < c.formats.size(); ++i)
      for (const std::string& m : c.formats[i].methods)
        if (std::find(c.methods.begin(), c.methods.end(), m) == c.methods.end())
          throw error(fmt::format("{}: formats[{}]: method '{}' is not among the sweep's \"methods\" ({})", source, i, m,
                                  fmt::join(c.methods, ", ")));
    for (const auto& [label, o] : c.method_options) {
      bool runs = false;
      for (size_t i = 0; i < c.formats.size(); ++i) {
        const auto& fm = c.formats[i].methods;
        if (!parse_optional_format(c.formats[i].weights) ||
            (!fm.empty() && std::find(fm.begin(), fm.end(), label) == fm.end()))
          continue;
        check_method_object(o, c.formats[i], fmt::format("{}: formats[{}] with method '{}'", source, i, label));
        runs = true;
      }
      // Its options would never be checked, nor used.
      if (!runs)
        throw error(fmt::format("{}: method '{}' runs with no format (it needs a format entry with a weight format "
                                "that takes it)", source, label));
    }
    if (j.contains("kl_base")) {
      if (!j["kl_base"].is_boolean()) throw error(fmt::format("{}: kl_base: expected true or false", source));
      c.kl_base = j["kl_base"].get<bool>();
    }
    if (j.contains("calibration")) {
      const auto& cal = j["calibration"];
      const std::string where = source + ": calibration";
      if (!cal.is_object()) throw error(fmt::format("{}: expected {{\"samples\", \"ctx\", \"seed\"}}", where));
      refuse_unknown_keys(cal, {"samples", "ctx", "seed"}, where);
      c.calib_samples = cal.value("samples", c.calib_samples);
      c.calib_ctx = cal.value("ctx", c.calib_ctx);
      c.calib_seed = cal.value("seed", c.calib_seed);
      if (c.calib_samples <= 0 || c.calib_ctx <= 1) throw error(fmt::format("{}: samples and ctx must be positive", where));
    }
    if (j.contains("tasks")) parse_tasks(j["tasks"], c, base_dir, data_dir);
    if (j.contains("spread")) {
      const auto& sp = j["spread"];
      const std::string where = source + ": spread";
      if (!sp.is_object()) throw error(fmt::format("{}: expected {{\"formats\", \"budget\", \"batch\", \"seed\"}}", where));
      refuse_unknown_keys(sp, {"formats", "budget", "batch", "seed"}, where);
      if (c.tasks.empty()) throw error(fmt::format("{}: FormatSpread needs a task: add \"tasks\"", where));
      c.spread.enabled = true;
      c.spread.formats = sp.value("formats", c.spread.formats);
      c.spread.budget = sp.value("budget", c.spread.budget);
      c.spread.batch = sp.value("batch", c.spread.batch);
      c.spread.seed = sp.value("seed", c.spread.seed);
      if (c.spread.formats < 2 || c.spread.budget < 1 || c.spread.batch < 1)
        throw error(fmt::format("{}: expected formats >= 2, budget >= 1 and batch >= 1", where));
    }
    if (j.contains("sqnr")) {
      const auto& q = j["sqnr"];
      const std::string where = source + ": sqnr";
      if (!q.is_object() || !q.contains("formats") || !q["formats"].is_array() || q["formats"].empty())
        throw error(fmt::format("{}: expected {{\"formats\": [\"WEIGHTS[,ACTS]\", ...], \"windows\", \"ctx\", "
                                "\"densities\"}}", where));
      refuse_unknown_keys(q, {"formats", "windows", "ctx", "densities"}, where);
      for (size_t i = 0; i < q["formats"].size(); ++i) {
        const std::string w = fmt::format("{}.formats[{}]", where, i);
        sweep_plan p;
        try {
          p = parse_plan_row(str(q["formats"][i], fmt::format("sqnr.formats[{}]", i)));
        } catch (const lowbit::error& e) {
          throw error(fmt::format("{}: {}", w, e.what()));
        }
        if (!p.kv.empty()) throw error(fmt::format("{}: expected WEIGHTS[,ACTS] (no KV format in an SQNR analysis)", w));
        if (p.weights.empty() && p.acts.empty()) throw error(fmt::format("{}: neither weights nor acts to analyse", w));
        check_spec(p.weights, w + " (weights)");
        check_spec(p.acts, w + " (acts)");
        c.sqnr.formats.push_back(p);
      }
      c.sqnr.windows = q.value("windows", c.sqnr.windows);
      c.sqnr.ctx = q.value("ctx", c.sqnr.ctx);
      if (c.sqnr.windows < 1 || c.sqnr.ctx < 2) throw error(fmt::format("{}: expected windows >= 1 and ctx >= 2", where));
      if (q.contains("densities")) {
        if (!q["densities"].is_array()) throw error(fmt::format("{}: densities: expected a list", where));
        c.sqnr.densities.clear();
        for (size_t i = 0; i < q["densities"].size(); ++i) {
          const std::string d = str(q["densities"][i], fmt::format("sqnr.densities[{}]", i));
          try {
            parse_density(d);
          } catch (const lowbit::error& e) {
            throw error(fmt::format("{}.densities[{}]: {}", where, i, e.what()));
          }
          c.sqnr.densities.push_back(d);
        }
      }
    }
  } catch (const nlohmann::json::exception& e) {
    throw error(fmt::format("{}: {}", source, e.what()));
  }
  return c;
}

void make_tiny(sweep_config& c, const std::string& work_dir) {
  if (c.family) make_family_tiny(*c.family, work_dir);
  if (c.models.size() > 1) c.models.resize(1);
  if (c.formats.size() > 2) c.formats.resize(2);
  if (c.evals.size() > 1) c.evals.resize(1);
  for (sweep_eval& e : c.evals) {
    e.ctx = e.ctx == 0 ? 128 : std::min(e.ctx, 128);
    e.max_tokens = 256;
  }
  c.calib_samples = std::min(c.calib_samples, 4);
  c.calib_ctx = std::min(c.calib_ctx, 64);
  // AdaRound at 20 steps: a method object's iterations cut, a plain "adaround" made one.
  for (const std::string& label : c.methods)
    if (label == "adaround" && !c.method_options.count(label)) c.method_options[label] = {{"method", "adaround"}};
  for (auto& [label, o] : c.method_options)
    if (o.value("method", "") == "adaround") o["adaround_iters"] = std::min(o.value("adaround_iters", 20), 20);
  for (sweep_task& t : c.tasks) t.build.n = 8;
  c.spread.formats = std::min(c.spread.formats, 3);
  c.spread.budget = std::min<int64_t>(c.spread.budget, 16);
  c.spread.batch = std::min<int64_t>(c.spread.batch, 4);
  if (c.sqnr.formats.size() > 2) c.sqnr.formats.resize(2);
  c.sqnr.windows = 1;
  c.sqnr.ctx = std::min(c.sqnr.ctx, 64);
}

sweep_config load_sweep_config(const std::string& path, const std::string& data_dir) {
  require_regular_file(path, "the sweep configuration");
  std::ifstream in(path);
  if (!in) throw error(fmt::format("{}: cannot open the sweep configuration", path));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw error(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
  return parse_sweep_config(j, fs::path(path).parent_path().string(), data_dir, path);
}

std::map<std::string, std::string> sweep_fingerprints(const sweep_config& c) {
  std::map<std::string, std::string> fps;
  auto add = [&](const std::string& path) {
    if (!path.empty() && path != "bytes" && !fps.count(path)) fps.emplace(path, file_fingerprint(path));
  };
  add(c.data);
  for (const sweep_model& m : c.models) add(m.path), add(m.tokenizer);
  for (const sweep_task& t : c.tasks) add(t.text);
  return fps;
}

std::vector<sweep_job> expand_sweep(const sweep_config& c, const std::map<std::string, std::string>& fingerprints) {
  auto canonical = [](const std::string& s) {
    const auto f = parse_optional_format(s);
    return f ? format_name(*f) : std::string("fp32");
  };
  auto fingerprint = [&](const std::string& path) -> std::string {  // sweep_fingerprints' paths
    const auto it = fingerprints.find(path);
    if (it == fingerprints.end()) throw error(fmt::format("{}: no fingerprint among the sweep's files", path));
    return it->second;
  };
  const std::string data_fp = fingerprint(c.data);
  std::vector<sweep_job> jobs;
  std::set<std::string> seen;
  nlohmann::json tasks_config = nlohmann::json::array();
  for (const sweep_task& t : c.tasks)
    tasks_config.push_back({{"name", t.name}, {"kind", task_kind_name(t.build.kind)}, {"n", t.build.n},
                            {"seed", t.build.seed}, {"options", t.build.options}, {"max_chars", t.build.max_chars},
                            {"text", fingerprint(t.text)}});
  const nlohmann::json spread_config = {{"formats", c.spread.formats}, {"budget", c.spread.budget},
                                        {"batch", c.spread.batch}, {"seed", c.spread.seed}};
  for (const sweep_model& m : c.models) {
    const std::string model_fp = fingerprint(m.path);
    const std::string tok_fp = m.tokenizer.empty() || m.tokenizer == "bytes" ? m.tokenizer : fingerprint(m.tokenizer);
    for (const sweep_plan& p : c.sqnr.formats) {  // the per-layer analyses first: they are quick
      sweep_job j;
      j.kind = "sqnr", j.model = m, j.plan = p, j.method = "sqnr";
      j.config = {{"kind", "sqnr"}, {"model", model_fp}, {"tokenizer", tok_fp}, {"data", data_fp},
                  {"weights", canonical(p.weights)}, {"acts", canonical(p.acts)}, {"windows", c.sqnr.windows},
                  {"ctx", c.sqnr.ctx}, {"densities", c.sqnr.densities}};
      j.config["paths"] = {{"model", m.path}, {"data", c.data}, {"tokenizer", m.tokenizer}, {"sweep", c.source}};
      j.hash = run_hash(j.config);
      if (!seen.insert(j.hash).second) continue;
      j.index = jobs.size();
      jobs.push_back(std::move(j));
    }
    for (const sweep_plan& p : c.formats)
      for (const std::string& method : c.methods) {
        if (method != "rtn" && !parse_optional_format(p.weights)) continue;  // nothing to calibrate
        if (!p.methods.empty() && std::find(p.methods.begin(), p.methods.end(), method) == p.methods.end()) continue;
        for (const sweep_eval& e : c.evals) {
          sweep_job j;
          j.model = m, j.plan = p, j.method = method, j.eval = e;
          j.config = {{"kind", "explore"}, {"model", model_fp}, {"tokenizer", tok_fp}, {"data", data_fp},
                      {"weights", canonical(p.weights)}, {"acts", canonical(p.acts)}, {"kv", canonical(p.kv)},
                      {"method", method}, {"ctx", e.ctx}, {"max_tokens", e.max_tokens},
                      {"eval_tokens", "first half"}, {"kl_base", c.kl_base}};
          const auto options = c.method_options.find(method);
          if (options != c.method_options.end()) j.config["method_options"] = options->second;
          if (method != "rtn" || options != c.method_options.end())
            j.config["calibration"] = {{"samples", c.calib_samples}, {"ctx", c.calib_ctx}, {"seed", c.calib_seed}};
          if (!c.tasks.empty()) {
            j.config["tasks"] = tasks_config;
            if (c.spread.enabled) j.config["spread"] = spread_config;
          }
          j.config["paths"] = {{"model", m.path}, {"data", c.data}, {"tokenizer", m.tokenizer}, {"sweep", c.source}};
          j.hash = run_hash(j.config);
          if (!seen.insert(j.hash).second) continue;  // the same run spelled twice (fp8_e4m3 and e4m3fn)
          j.index = jobs.size();
          jobs.push_back(std::move(j));
        }
      }
  }
  return jobs;
}

// ---- one run -------------------------------------------------------------------------------------
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

struct sweep_runner::loaded {
  std::string model_path, tokenizer;
  model base;
  std::unique_ptr<lowbit::tokenizer> tok;
  std::vector<int32_t> ids;
  std::vector<std::vector<task_item>> tasks;  // config_.tasks' items, built on first use
};

sweep_runner::sweep_runner(const sweep_config& c) : config_(c) {}
sweep_runner::~sweep_runner() = default;

namespace {

// Excess kurtosis of n values (0 for a Gaussian; heavy tails > 0), accumulated in double.
struct moments {
  double n = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0;
  void add(const float* x, int64_t count) {
    for (int64_t i = 0; i < count; ++i) {
      const double v = x[i], v2 = v * v;
      n += 1, s1 += v, s2 += v2, s3 += v2 * v, s4 += v2 * v2;
    }
  }
  double excess_kurtosis() const {
    if (n < 2) return std::numeric_limits<double>::quiet_NaN();
    const double m = s1 / n, var = s2 / n - m * m;
    if (!(var > 0)) return std::numeric_limits<double>::quiet_NaN();
    const double m4 = s4 / n - 4 * m * s3 / n + 6 * m * m * s2 / n - 3 * m * m * m * m;
    return m4 / (var * var) - 3;
  }
};

double sqnr_of(double signal, double noise) {
  return noise > 0 ? 10 * std::log10(signal / noise) : std::numeric_limits<double>::infinity();
}

}  // namespace

// The per-layer SQNR analysis (sweep.hpp "sqnr").
run_record sweep_runner::analyse_sqnr(const sweep_job& job) {
  const model& base = cache_->base;
  const std::vector<int32_t>& ids = cache_->ids;
  const double t0 = now_seconds();
  run_record rec = model_run_record("sqnr", job.model.name, base.config, job.plan.weights, "sqnr", quant_plan_of(job.plan));
  rec.config = job.config;
  rec.config_hash = job.hash;
  auto closed_form = [&](const std::string& spec, const char* prefix) {
    const auto f = parse_optional_format(spec);
    if (!f) return;
    for (const std::string& d : config_.sqnr.densities)
      rec.metrics[fmt::format("{}:{}", prefix, d)] = analyze_sqnr(f->element, parse_density(d)).sqnr_db;
  };
  if (!job.plan.weights.empty()) {
    model scratch = base;
    quant_plan w;
    w.weights_spec = job.plan.weights, w.weights = parse_optional_format(job.plan.weights);
    // The original values of the weights the plan quantizes (apply_weight_plan overwrites them).
    std::map<std::string, moments> stats;
    for (const auto& [name, t] : base.tensors)
      if (w.weight_format(base, name)) stats[name].add(t.data.data(), int64_t(t.data.size()));
    const auto reports = apply_weight_plan(scratch, w);
    for (const weight_quant_report& r : reports) {
      rec.metrics["w_sqnr:" + r.name] = r.sqnr_db;
      if (stats.count(r.name)) rec.metrics["w_kurt:" + r.name] = stats[r.name].excess_kurtosis();
    }
    rec.metrics["w_sqnr_mean"] = mean_sqnr_db(reports);
    closed_form(job.plan.weights, "closed_w");
  }
  if (!job.plan.acts.empty()) {
    act_quant q;
    q.fmt = parse_optional_format(job.plan.acts);
    const int ctx = std::min(config_.sqnr.ctx, base.config.max_seq_len);
    const int64_t half = int64_t(ids.size()) / 2;
    if (half < ctx) throw error(fmt::format("sqnr: the evaluation half holds {} tokens, fewer than ctx {}", half, ctx));
    const int windows = int(std::min<int64_t>(config_.sqnr.windows, half / ctx));
    struct site {
      double signal = 0, noise = 0;
      moments m;
    };
    std::map<std::string, site> sites;
    std::vector<float> out;
    uint64_t stream = 0;
    forward_session session(base, quant_plan{}, ctx);
    const auto names = activation_names(base.config);
    const std::set<std::string> wanted(names.begin(), names.end());
    session.set_dump([&](const std::string& name, const float* x, int64_t rows, int64_t cols) {
      if (!wanted.count(name)) return;
      out.resize(size_t(rows * cols));
      q.apply(x, out.data(), rows, cols, ++stream);
      site& s = sites[name];
      for (int64_t i = 0; i < rows * cols; ++i) {
        const double d = double(x[i]) - out[size_t(i)];
        s.signal += double(x[i]) * x[i], s.noise += d * d;
      }
      s.m.add(x, rows * cols);
    });
    for (int w = 0; w < windows; ++w) {
      session.reset();
      session.forward(ids.data() + int64_t(w) * ctx, ctx);
    }
    double sum_db = 0, total = 0;
    for (const auto& [name, s] : sites) {
      const double db = sqnr_of(s.signal, s.noise);
      rec.metrics["a_sqnr:" + name] = db;
      rec.metrics["a_kurt:" + name] = s.m.excess_kurtosis();
      if (std::isfinite(db)) sum_db += db * s.m.n, total += s.m.n;
    }
    rec.metrics["a_sqnr_mean"] = total > 0 ? sum_db / total : std::numeric_limits<double>::quiet_NaN();
    rec.metrics["a_tokens"] = double(windows) * ctx;
    closed_form(job.plan.acts, "closed_a");
  }
  rec.metrics["seconds"] = now_seconds() - t0;
  rec.metrics["sweep_worker"] = double(worker_id);
  return rec;
}

run_record sweep_runner::run(const sweep_job& job) {
  if (!cache_ || cache_->model_path != job.model.path || cache_->tokenizer != job.model.tokenizer) {
    cache_.reset();
    auto l = std::make_unique<loaded>();
    l->model_path = job.model.path, l->tokenizer = job.model.tokenizer;
    l->base = load_model(job.model.path);
    l->tok = tokenizer_for_model(l->base, job.model.tokenizer);
    l->ids = encode_documents(*l->tok, read_file(config_.data, "data file"));
    cache_ = std::move(l);
  }
  if (job.kind == "sqnr") return analyse_sqnr(job);
  const model& base = cache_->base;
  const std::vector<int32_t>& ids = cache_->ids;
  const int64_t half = int64_t(ids.size()) / 2;
  eval_options eo;
  eo.ctx = job.eval.ctx;
  eo.max_tokens = job.eval.max_tokens > 0 && job.eval.max_tokens < half ? job.eval.max_tokens : half;
  eo.kl_base = config_.kl_base;

  quant_plan plan = quant_plan_of(job.plan);
  const double t0 = now_seconds();
  double sqnr = std::numeric_limits<double>::quiet_NaN();
  const calibration_settings calib{config_.calib_samples, config_.calib_ctx, config_.calib_seed};
  const auto options = config_.method_options.find(job.method);
  model variant;
  if (options != config_.method_options.end()) {
    // A method object: the quantize job's options, checked at parse time.
    const nlohmann::json& m = options->second;
    ptq::quantize_options qo = ptq::quantize_options_of(method_job_config(m, job.plan.weights));
    qo.calib_samples = calib.samples, qo.calib_ctx = calib.ctx, qo.seed = calib.seed, qo.rotate_seed = calib.seed;
    variant = quantize_variant(base, ids, plan, qo, &sqnr);
    if (m.contains("act_calibration")) {
      // Static activation scales (ptq/calibrate.hpp) on the quantized model, from the same
      // calibration windows: every linear layer's input gets its calibrated clip.
      ptq::act_calibration_options ao;
      ptq::parse_act_statistic(m["act_calibration"].get<std::string>(), ao);
      ao.element = *plan.acts;
      ao.calib_samples = std::min(calib.samples, 16), ao.calib_ctx = calib.ctx, ao.seed = calib.seed;
      quant_plan without_acts = plan;
      without_acts.acts.reset(), without_acts.acts_spec.clear();
      plan = ptq::calibrate_activations(variant, without_acts, ids, ao).plan;
    }
  } else {
    variant = quantize_variant(base, ids, plan, job.method, calib, {}, &sqnr);
  }
  const double quant_seconds = now_seconds() - t0;
  const eval_result r = evaluate(variant, plan, ids, eo, config_.kl_base ? &base : nullptr);

  run_record rec = model_run_record("explore", job.model.name, base.config, job.plan.weights, job.method, plan);
  rec.config = job.config;
  rec.config_hash = job.hash;
  add_evaluation(rec, r);
  rec.metrics["quantize_seconds"] = quant_seconds;
  rec.metrics["bits_per_weight"] = average_linear_bits(variant, plan);
  rec.metrics["sqnr_db"] = sqnr;
  rec.metrics["sweep_worker"] = double(worker_id);
  score_tasks(variant, plan, rec);
  return rec;
}

// Task accuracy and FormatSpread of a variant (sweep.hpp "tasks", "spread").
void sweep_runner::score_tasks(const model& variant, const quant_plan& plan, run_record& rec) {
  if (config_.tasks.empty()) return;
  if (cache_->tasks.empty())
    for (const sweep_task& t : config_.tasks) cache_->tasks.push_back(build_task(read_file(t.text, "task text"), t.build));
  const double t0 = now_seconds();
  for (size_t i = 0; i < config_.tasks.size(); ++i) {
    const std::string key = "task." + config_.tasks[i].name;
    const task_accuracy a = score_task(variant, plan, *cache_->tok, cache_->tasks[i]);
    rec.metrics[key + ".acc"] = a.acc;
    rec.metrics[key + ".acc_stderr"] = a.acc_stderr;
    if (config_.tasks[i].build.kind == task_kind::ending) {
      rec.metrics[key + ".acc_norm"] = a.acc_norm;
      rec.metrics[key + ".acc_norm_stderr"] = a.acc_norm_stderr;
    } else {
      rec.metrics[key + ".mean_loglik"] = a.mean_loglik;
    }
  }
  if (config_.spread.enabled) {
    spread_options so;
    so.formats = config_.spread.formats;
    so.bandit.budget = config_.spread.budget, so.bandit.batch = config_.spread.batch, so.bandit.seed = config_.spread.seed;
    const spread_result s = format_spread(variant, plan, *cache_->tok, cache_->tasks[0], so);
    const std::string key = "spread." + config_.tasks[0].name;
    rec.metrics[key] = s.spread;
    rec.metrics[key + ".best_acc"] = s.best_acc, rec.metrics[key + ".best_acc_stderr"] = s.best_stderr;
    rec.metrics[key + ".worst_acc"] = s.worst_acc, rec.metrics[key + ".worst_acc_stderr"] = s.worst_stderr;
    rec.metrics[key + ".original_acc"] = s.original_acc, rec.metrics[key + ".original_acc_stderr"] = s.original_stderr;
    rec.metrics[key + ".item_evaluations"] = double(s.item_evaluations);
  }
  rec.metrics["task_seconds"] = now_seconds() - t0;
}

// ---- workers -------------------------------------------------------------------------------------
namespace {

// One finished job as a message: {"ok": true, "record": {...}} or {"ok": false, "error": "..."}.
std::string run_message(sweep_runner& runner, const sweep_job& job) {
  try {
    return nlohmann::json{{"ok", true}, {"record", to_json(runner.run(job))}}.dump();
  } catch (const std::exception& e) {
    return nlohmann::json{{"ok", false}, {"error", e.what()}}.dump();
  }
}

class worker {
 public:
  virtual ~worker() = default;
  virtual void start(size_t job) = 0;
  // The finished job's message, once; nullopt while running. Throws when the worker died.
  virtual std::optional<std::string> poll() = 0;
  virtual void stop() = 0;
  bool busy = false, dead = false;
  size_t job = 0;
};

// A thread of the coordinator's own process.
class thread_worker : public worker {
 public:
  thread_worker(const sweep_config& c, const std::vector<sweep_job>& jobs, int threads)
      : thread_([this, &c, &jobs, threads] {
          if (threads > 0) omp_set_num_threads(threads);
          sweep_runner runner(c);
          std::unique_lock lock(mu_);
          for (;;) {
            cv_.wait(lock, [this] { return next_.has_value() || quit_; });
            if (quit_) return;
            const size_t j = *next_;
            next_.reset();
            lock.unlock();
            std::string msg = run_message(runner, jobs[j]);
            lock.lock();
            result_ = std::move(msg);
          }
        }) {}
  ~thread_worker() override { stop(); }
  void start(size_t j) override {
    std::lock_guard lock(mu_);
    next_ = j, job = j, busy = true;
    cv_.notify_one();
  }
  std::optional<std::string> poll() override {
    std::lock_guard lock(mu_);
    std::optional<std::string> r;
    r.swap(result_);
    return r;
  }
  void stop() override {
    {
      std::lock_guard lock(mu_);
      quit_ = true;
      cv_.notify_one();
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<size_t> next_;
  std::optional<std::string> result_;
  bool quit_ = false;
  std::thread thread_;
};

bool write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += size_t(n);
  }
  return true;
}

// The coordinator's ends of the pipes to its worker processes: a later child closes those of its
// older siblings, or a sibling's job pipe would never see end-of-file.
std::vector<int> coordinator_fds;

// A forked process: job indices in, one JSON line per finished job out.
class process_worker : public worker {
 public:
  process_worker(const sweep_config& c, const std::vector<sweep_job>& jobs, int threads, int id) {
    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) throw error("explore: cannot create a pipe for a worker");
    pid_ = fork();
    if (pid_ < 0) throw error("explore: cannot fork a worker process");
    if (pid_ == 0) {
      // The child: never returns; _exit skips destructors of the parent's objects (its database
      // connection above all, which must not be closed from here).
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // a killed sweep leaves no workers behind
      ::close(to_child[1]), ::close(from_child[0]);
      for (int fd : coordinator_fds) ::close(fd);
      if (threads > 0) omp_set_num_threads(threads);
      sweep_runner runner(c);
      runner.worker_id = id;
      std::string buf;
      char chunk[256];
      for (;;) {
        const ssize_t n = ::read(to_child[0], chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        buf.append(chunk, size_t(n));
        for (size_t nl; (nl = buf.find('\n')) != std::string::npos;) {
          const size_t j = std::stoul(buf.substr(0, nl));
          buf.erase(0, nl + 1);
          if (!write_all(from_child[1], run_message(runner, jobs[j]) + "\n")) _exit(1);
        }
      }
      _exit(0);
    }
    ::close(to_child[0]), ::close(from_child[1]);
    in_ = to_child[1], out_ = from_child[0];
    coordinator_fds.push_back(in_), coordinator_fds.push_back(out_);
    fcntl(out_, F_SETFL, fcntl(out_, F_GETFL) | O_NONBLOCK);
  }
  ~process_worker() override { stop(); }
  void start(size_t j) override {
    job = j, busy = true;
    if (!write_all(in_, fmt::format("{}\n", j))) dead = true;
  }
  std::optional<std::string> poll() override {
    char chunk[65536];
    for (;;) {
      const ssize_t n = ::read(out_, chunk, sizeof chunk);
      if (n > 0) {
        buf_.append(chunk, size_t(n));
        continue;
      }
      if (n == 0) dead = true;  // the process is gone
      break;
    }
    if (const size_t nl = buf_.find('\n'); nl != std::string::npos) {
      std::string msg = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return msg;
    }
    if (dead && busy) {
      int status = 0;
      waitpid(pid_, &status, 0);
      pid_ = -1;
      return nlohmann::json{{"ok", false},
                            {"error", WIFSIGNALED(status) ? fmt::format("worker process killed by signal {}", WTERMSIG(status))
                                                          : fmt::format("worker process exited ({})", WEXITSTATUS(status))}}
          .dump();
    }
    return std::nullopt;
  }
  void stop() override {
    std::erase_if(coordinator_fds, [this](int fd) { return fd == in_ || fd == out_; });
    if (in_ >= 0) ::close(in_), in_ = -1;
    if (pid_ > 0) {
      int status = 0;
      waitpid(pid_, &status, 0);
      pid_ = -1;
    }
    if (out_ >= 0) ::close(out_), out_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string buf_;
};

constexpr int k_tag_job = 61, k_tag_result = 62;

// Another MPI rank: job indices as one int (-1 = stop), results as a char message.
class rank_worker : public worker {
 public:
  explicit rank_worker(int rank) : rank_(rank) {}
  ~rank_worker() override { stop(); }
  void start(size_t j) override {
    job = j, busy = true;
    int v = int(j);
    MPI_Send(&v, 1, MPI_INT, rank_, k_tag_job, MPI_COMM_WORLD);
  }
  std::optional<std::string> poll() override {
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(rank_, k_tag_result, MPI_COMM_WORLD, &flag, &st);
    if (!flag) return std::nullopt;
    int n = 0;
    MPI_Get_count(&st, MPI_CHAR, &n);
    std::string msg(size_t(n), '\0');
    MPI_Recv(msg.data(), n, MPI_CHAR, rank_, k_tag_result, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    return msg;
  }
  void stop() override {
    if (stopped_) return;
    stopped_ = true;
    int v = -1;
    MPI_Send(&v, 1, MPI_INT, rank_, k_tag_job, MPI_COMM_WORLD);
  }

 private:
  int rank_;
  bool stopped_ = false;
};

// The loop of an MPI rank other than 0.
void rank_worker_loop(const sweep_config& c, const std::vector<sweep_job>& jobs, int rank) {
  sweep_runner runner(c);
  runner.worker_id = rank;
  for (;;) {
    int j = -1;
    MPI_Recv(&j, 1, MPI_INT, 0, k_tag_job, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (j < 0) return;
    const std::string msg = run_message(runner, jobs[size_t(j)]);
    MPI_Send(msg.data(), int(msg.size()), MPI_CHAR, 0, k_tag_result, MPI_COMM_WORLD);
  }
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

// The coordinator: hands out `pending` to the workers, records what they send back.
void coordinate(runs_db& db, const std::vector<sweep_job>& jobs, std::vector<size_t> pending,
                std::vector<std::unique_ptr<worker>>& workers, sweep_summary& s, const sweep_progress& progress,
                const sweep_run_seen& on_run) {
  const int64_t total = int64_t(pending.size());
  int64_t done = 0;
  size_t next = 0;
  if (progress && total > 0) progress(0, total);
  auto finish = [&](size_t j, const std::string& msg) {
    ++done;
    std::string err;
    std::optional<run_record> rec;
    try {
      const auto m = nlohmann::json::parse(msg);
      if (m.value("ok", false)) {
        rec = run_from_json(m.at("record"));
        rec->id = db.record(*rec);
        ++s.ran;
      } else {
        err = m.value("error", "unknown error");
      }
    } catch (const nlohmann::json::exception& e) {
      err = fmt::format("bad message from a worker: {}", e.what());
    }
    if (!err.empty()) s.failures.push_back(fmt::format("{} {} @{}: {}", jobs[j].model.name, plan_label(jobs[j].plan),
                                                       jobs[j].method, err));
    if (on_run) on_run(jobs[j], rec ? &*rec : nullptr, err);
    if (progress) progress(done, total);
  };
  while (done < total) {
    bool any_alive = false;
    for (auto& w : workers) {
      if (w->dead && !w->busy) continue;
      any_alive = true;
      while (!w->busy && next < pending.size()) {
        const size_t j = pending[next++];
        if (db.has(jobs[j].hash)) {  // recorded meanwhile by another sweep on the same database
          ++done, ++s.already;
          if (progress) progress(done, total);
          continue;
        }
        w->start(j);
      }
    }
    if (!any_alive) {  // every worker died: what is left stays for the next (resumed) sweep
      for (; next < pending.size(); ++next) finish(pending[next], R"({"ok": false, "error": "no worker left"})");
      break;
    }
    bool seen = false;
    for (auto& w : workers)
      if (w->busy)
        if (auto msg = w->poll()) {
          w->busy = false;
          seen = true;
          finish(w->job, *msg);
        }
    if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (auto& w : workers) w->stop();
}

// The grid's runs not yet in the database (counting the others in s.already), at most max_runs
// of them (-1: all).
std::vector<size_t> pending_runs(const runs_db& db, sweep_summary& s, int64_t max_runs) {
  std::vector<size_t> pending;
  for (const auto& j : s.jobs)
    if (db.has(j.hash)) ++s.already;
    else pending.push_back(j.index);
  if (max_runs >= 0 && int64_t(pending.size()) > max_runs) pending.resize(size_t(max_runs));
  return pending;
}

}  // namespace

sweep_summary run_sweep(const sweep_config& c, const sweep_options& o, const sweep_progress& progress,
                        const sweep_run_seen& on_run) {
  if (o.jobs < 1) throw error(fmt::format("explore: -j {}: expected at least 1", o.jobs));
  sweep_summary s;
  const int procs = std::max(1, omp_get_num_procs());
  if (c.family) {
    if (mpi_world::under_mpirun())
      throw error(fmt::format("{}: a study with a \"train\" section runs without mpirun", c.source));
    const family_config& f = *c.family;
    family_progress fp;
    if (progress) fp.begin = [&](const std::string&, int64_t done, int64_t total) { progress(done, total); };
    const family_summary fs_ = run_family(f, o.db, fp);
    s.total += int64_t(f.runs.size()) + fs_.ptq_total;
    s.ran += fs_.trained + fs_.ptq_ran;
    s.already += fs_.found + fs_.ptq_found;
    s.failures.insert(s.failures.end(), fs_.failures.begin(), fs_.failures.end());
    if (progress) progress(s.total, s.total);
  }

  // ---- across Open MPI ranks ----
  if (mpi_world::under_mpirun()) {
    const mpi_world& world = mpi_world::world();
    const int rank = world.rank, size = world.size;
    s.ranks = size;
    s.coordinator = rank == 0;
    const int threads = o.threads_per_job > 0 ? o.threads_per_job
                                              : std::max(1, procs / std::max(1, env_int("OMPI_COMM_WORLD_LOCAL_SIZE", size)));
    // Rank 0 reads the files once and sends their fingerprints (or its error, which every rank
    // then throws: no rank waits for a message that will not come).
    std::string message;
    if (rank == 0) {
      try {
        message = nlohmann::json{{"fingerprints", sweep_fingerprints(c)}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      } catch (const std::exception& e) {
        message = nlohmann::json{{"error", e.what()}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      }
    }
    int length = int(message.size());
    MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
    message.resize(size_t(length));
    MPI_Bcast(message.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);
    const nlohmann::json got = nlohmann::json::parse(message);
    if (got.contains("error")) {
      throw error(got["error"].get<std::string>());
    }
    s.jobs = expand_sweep(c, got["fingerprints"].get<std::map<std::string, std::string>>());
    s.total = int64_t(s.jobs.size());
    if (rank != 0) {
      if (threads > 0) omp_set_num_threads(threads);
      rank_worker_loop(c, s.jobs, rank);
      return s;
    }
    std::vector<std::unique_ptr<worker>> workers;
    try {
      for (int r = 1; r < size; ++r) workers.push_back(std::make_unique<rank_worker>(r));
      runs_db db(o.db);
      std::vector<size_t> pending = pending_runs(db, s, o.max_runs);
      workers.push_back(std::make_unique<thread_worker>(c, s.jobs, threads));
      coordinate(db, s.jobs, pending, workers, s, progress, on_run);
    } catch (...) {
      for (auto& w : workers) w->stop();  // the other ranks must not wait forever
      workers.clear();
      throw;
    }
    workers.clear();
    return s;
  }

  // ---- one process, or forked workers (-j N) ----
  s.jobs = expand_sweep(c);
  s.total += int64_t(s.jobs.size());
  // The runs still to do, read before any fork (the children must not inherit the database).
  std::vector<size_t> pending;
  {
    const runs_db db(o.db);
    pending = pending_runs(db, s, o.max_runs);
  }
  // No more workers than runs to do, nor than a few per core: -j 2000 on a one-run sweep forks
  // nothing, and no -j can exhaust the machine's processes.
  // After a family's training this process has OpenMP threads: no fork then (one worker).
  const int jobs = c.family ? 1 : int(std::clamp<int64_t>(std::min<int64_t>(o.jobs, int64_t(pending.size())), 1, int64_t(4) * procs));
  const int threads = o.threads_per_job > 0 ? o.threads_per_job : (jobs > 1 ? std::max(1, procs / jobs) : 0);
  std::vector<std::unique_ptr<worker>> workers;
  // Fork before this process starts any thread (OpenMP's included), and before it opens the
  // database again: the children inherit neither.
  struct sigaction ignore {}, saved {};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &ignore, &saved);  // a dead worker is a failed run, not a dead sweep
  try {
    for (int i = 1; i < jobs; ++i) workers.push_back(std::make_unique<process_worker>(c, s.jobs, threads, i));
    runs_db db(o.db);
    workers.push_back(std::make_unique<thread_worker>(c, s.jobs, threads));
    coordinate(db, s.jobs, pending, workers, s, progress, on_run);
  } catch (...) {
    workers.clear();
    sigaction(SIGPIPE, &saved, nullptr);
    throw;
  }
  workers.clear();
  sigaction(SIGPIPE, &saved, nullptr);
  return s;
}

}  // namespace lowbit
