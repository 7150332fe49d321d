// Trained families of a study (family.hpp).
#include "lowbit/explore/family.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/engine/eval.hpp"
#include "lowbit/explore/explore.hpp"
#include "lowbit/explore/finetune.hpp"
#include "lowbit/explore/study_json.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/law/predict.hpp"
#include "lowbit/runs/records.hpp"
#include "lowbit/train/job.hpp"
#include "lowbit/train/recipes.hpp"

namespace fs = std::filesystem;

namespace lowbit {

namespace {

// ${LOWBIT_DATA_DIR} (default: data_dir) and other ${VAR}s of the environment, then relative to
// base_dir; as sweep.json resolves its paths (sweep.hpp).
std::string resolve_path(const std::string& s, const std::string& base_dir, const std::string& data_dir,
                         const std::string& where) {
  // Absolute, so that the records' paths and the runs' directories do not depend on where the
  // study was started.
  return fs::absolute(resolve_config_path(s, base_dir, data_dir, where)).lexically_normal().string();
}

template <class T>
std::vector<T> list_of(const nlohmann::json& j, const std::string& key, const std::string& where) {
  if (!j.contains(key)) throw error(fmt::format("{}: '{}' is missing", where, key));
  const auto& v = j[key];
  if (!v.is_array() || v.empty()) throw error(fmt::format("{}: '{}' must be a non-empty list", where, key));
  try {
    return v.get<std::vector<T>>();
  } catch (const nlohmann::json::exception&) {
    throw error(fmt::format("{}: '{}' has the wrong type ({})", where, key, v.dump()));
  }
}

std::string plan_tag(const std::string& plan) {
  std::string tag;
  for (char ch : plan) {
    const bool alnum = std::isalnum(static_cast<unsigned char>(ch));
    if (alnum) tag += ch;
    else if (!tag.empty() && tag.back() != '_') tag += '_';
  }
  while (!tag.empty() && tag.back() == '_') tag.pop_back();
  return tag;
}

// The architecture keys a member may set (train_run_config's JSON keys).
const std::vector<std::string> k_member_keys = {"arch", "dim", "layers", "heads", "kv_heads", "hidden", "tied"};

train_run_config run_config(nlohmann::json j, const std::string& where) {
  try {
    train_run_config c = train_run_config::from_json(j);
    parse_training_plan(c.plan);  // refused here, before anything trains
    return c;
  } catch (const lowbit::error& e) {
    throw error(fmt::format("{}: {}", where, e.what()));
  }
}

std::vector<family_ptq> parse_ptq(const nlohmann::json& section, const std::string& where) {
  std::vector<family_ptq> out;
  if (!section.contains("ptq")) return out;
  const auto& list = section["ptq"];
  if (!list.is_array()) throw error(fmt::format("{}: 'ptq' must be a list", where));
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string w = fmt::format("{}: ptq[{}]", where, i);
    const auto& p = list[i];
    refuse_unknown_keys(p, {"runs", "formats", "methods", "max_tokens", "ctx", "flatness", "calibration"}, w);
    family_ptq q;
    q.runs = list_of<std::string>(p, "runs", w);
    q.formats = list_of<std::string>(p, "formats", w);
    if (p.contains("methods")) q.methods = list_of<std::string>(p, "methods", w);
    for (const auto& f : q.formats) {
      try {
        if (!parse_optional_format(f)) throw error("a float format is the reference every run gets anyway");
      } catch (const lowbit::error& e) {
        throw error(fmt::format("{}: format '{}': {}", w, f, e.what()));
      }
    }
    for (const auto& m : q.methods) {
      try {
        ptq::parse_method(m);
      } catch (const lowbit::error& e) {
        throw error(fmt::format("{}: method '{}': {}", w, m, e.what()));
      }
    }
    q.max_tokens = p.value("max_tokens", q.max_tokens);
    q.ctx = p.value("ctx", q.ctx);
    q.flatness = p.value("flatness", q.flatness);
    if (p.contains("calibration")) {
      const auto& c = p["calibration"];
      refuse_unknown_keys(c, {"samples", "ctx", "seed"}, w + ": calibration");
      q.calib_samples = c.value("samples", q.calib_samples);
      q.calib_ctx = c.value("ctx", q.calib_ctx);
      q.calib_seed = c.value("seed", q.calib_seed);
    }
    if (q.max_tokens <= 0 || q.ctx < 0 || q.flatness < 0 || q.calib_samples <= 0 || q.calib_ctx <= 1)
      throw error(fmt::format("{}: max_tokens, calibration samples and ctx must be positive; ctx and flatness >= 0", w));
    out.push_back(std::move(q));
  }
  return out;
}

// The runs of a section with its own members and grids.
family_config parse_grids(const nlohmann::json& t, const std::string& base_dir, const std::string& data_dir,
                          const std::string& where) {
  refuse_unknown_keys(t, {"dir", "settings", "members", "grids", "ptq"}, where);
  family_config f;
  f.source = where;
  if (!t.contains("dir") || !t["dir"].is_string()) throw error(fmt::format("{}: 'dir' (a string) is missing", where));
  f.dir = resolve_path(t["dir"].get<std::string>(), base_dir, data_dir, where + ": dir");
  nlohmann::json settings = t.value("settings", nlohmann::json::object());
  if (!settings.is_object()) throw error(fmt::format("{}: 'settings' must be an object", where));
  for (const char* k : {"out", "steps", "plan", "init", "eval_every"})
    if (settings.contains(k)) throw error(fmt::format("{}: settings: '{}' is set per run (grids)", where, k));
  if (settings.contains("data"))
    settings["data"] = resolve_path(settings["data"].get<std::string>(), base_dir, data_dir, where + ": data");
  const nlohmann::json members = t.value("members", nlohmann::json::object());
  if (!members.is_object()) throw error(fmt::format("{}: 'members' must be an object", where));
  for (const auto& [name, m] : members.items()) refuse_unknown_keys(m, k_member_keys, fmt::format("{}: member '{}'", where, name));
  if (!t.contains("grids") || !t["grids"].is_array()) throw error(fmt::format("{}: 'grids' (a list) is missing", where));
  std::set<std::string> seen;
  for (size_t g = 0; g < t["grids"].size(); ++g) {
    const std::string w = fmt::format("{}: grids[{}]", where, g);
    const auto& grid = t["grids"][g];
    refuse_unknown_keys(grid, {"members", "steps", "plans", "seeds", "init", "settings"}, w);
    const auto steps = list_of<int64_t>(grid, "steps", w);
    const auto plans = list_of<std::string>(grid, "plans", w);
    const std::vector<uint64_t> seeds =
        grid.contains("seeds") ? list_of<uint64_t>(grid, "seeds", w) : std::vector<uint64_t>{settings.value("seed", uint64_t(1))};
    nlohmann::json own = settings;
    if (grid.contains("settings")) {
      if (!grid["settings"].is_object()) throw error(fmt::format("{}: 'settings' must be an object", w));
      for (const auto& [k, v] : grid["settings"].items()) own[k] = k == "data" ? nlohmann::json(resolve_path(v.get<std::string>(), base_dir, data_dir, w)) : v;
    }
    std::string init;
    std::vector<std::string> grid_members;
    if (grid.contains("init")) {
      init = grid["init"].get<std::string>();
      if (!seen.count(init))
        throw error(fmt::format("{}: init '{}' is not a run of an earlier grid", w, init));
      if (grid.contains("members")) throw error(fmt::format("{}: a grid with init takes its start's architecture (no members)", w));
      grid_members = {""};
    } else {
      grid_members = list_of<std::string>(grid, "members", w);
    }
    for (uint64_t seed : seeds)
      for (const auto& plan : plans)
        for (const auto& member : grid_members)
          for (int64_t s : steps) {
            if (s < 2) throw error(fmt::format("{}: steps {} (at least 2)", w, s));
            family_run r;
            r.member = member;
            r.init_run = init;
            r.name = init.empty() ? fmt::format("{}-s{}-{}-seed{}", member, s, plan_tag(plan), seed)
                                  : fmt::format("{}.ft-s{}-{}-seed{}", init, s, plan_tag(plan), seed);
            if (!seen.insert(r.name).second) continue;  // the same run from two grids
            nlohmann::json j = own;
            if (init.empty()) {
              if (!members.contains(member)) throw error(fmt::format("{}: member '{}' is not in 'members'", w, member));
              for (const auto& [k, v] : members[member].items()) j[k] = v;
            } else {
              j["init"] = (fs::path(f.dir) / init / "model.safetensors").string();
            }
            j["steps"] = s, j["plan"] = plan, j["seed"] = seed, j["eval_every"] = std::max<int64_t>(1, s / 2);
            j["out"] = (fs::path(f.dir) / r.name).string();
            r.cfg = run_config(j, fmt::format("{}: run {}", w, r.name));
            for (const auto& [k, v] : j.items()) r.given.insert(k);
            f.runs.push_back(std::move(r));
          }
  }
  f.ptq = parse_ptq(t, where);
  return f;
}

}  // namespace

bool family_name_matches(const std::string& pattern, const std::string& name) {
  // '*' does not span a '.' (a fine-tuning run is START.ft-..., so "d128-*" does not take the
  // runs started from d128 runs): the pattern and the name have as many '.'-separated parts, and
  // each part of the name matches the pattern's (glob_match, engine/plan.hpp).
  for (size_t p = 0, n = 0;;) {
    const size_t p_end = pattern.find('.', p), n_end = name.find('.', n);
    if (!glob_match(pattern.substr(p, p_end - p), name.substr(n, n_end - n))) return false;
    if (p_end == std::string::npos || n_end == std::string::npos) return p_end == n_end;
    p = p_end + 1, n = n_end + 1;
  }
}

namespace {

// Whether one of `patterns` takes the run named `name`.
bool any_pattern_matches(const std::vector<std::string>& patterns, const std::string& name) {
  return std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) { return family_name_matches(p, name); });
}

// Whether `pattern` takes one of `runs`.
bool matches_any_run(const std::string& pattern, const std::vector<family_run>& runs) {
  return std::any_of(runs.begin(), runs.end(), [&](const family_run& r) { return family_name_matches(pattern, r.name); });
}

}  // namespace

family_config parse_family_config(const nlohmann::json& t, const std::string& base_dir, const std::string& data_dir,
                                  const std::string& source) {
  const std::string where = source + ": train";
  if (!t.is_object()) throw error(fmt::format("{}: expected an object", where));
  family_config f;
  if (t.contains("include")) {
    refuse_unknown_keys(t, {"include", "runs", "ptq"}, where);
    const std::string path = resolve_path(t["include"].get<std::string>(), base_dir, data_dir, where + ": include");
    std::ifstream in(path);
    if (!in) throw error(fmt::format("{}: include: cannot read '{}'", where, path));
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      throw error(fmt::format("{}: include '{}' is not JSON: {}", where, path, e.what()));
    }
    if (!j.contains("train")) throw error(fmt::format("{}: include '{}' has no 'train' section", where, path));
    if (j["train"].contains("include"))
      throw error(fmt::format("{}: include '{}' includes another file (one level only)", where, path));
    const family_config all = parse_grids(j["train"], fs::path(path).parent_path().string(), data_dir, path + ": train");
    f.dir = all.dir;
    const auto patterns = t.contains("runs") ? list_of<std::string>(t, "runs", where) : std::vector<std::string>{"*"};
    std::set<std::string> kept;
    for (const auto& pat : patterns) {
      bool any = false;
      for (const auto& r : all.runs)
        if (family_name_matches(pat, r.name)) any = true, kept.insert(r.name);
      if (!any) throw error(fmt::format("{}: runs: '{}' matches no run of '{}'", where, pat, path));
    }
    // A kept run's start is kept too, so that it can be trained here.
    for (auto it = all.runs.rbegin(); it != all.runs.rend(); ++it)
      if (kept.count(it->name) && !it->init_run.empty()) kept.insert(it->init_run);
    for (const auto& r : all.runs)
      if (kept.count(r.name)) f.runs.push_back(r);
    f.ptq = parse_ptq(t, where);
  } else {
    f = parse_grids(t, base_dir, data_dir, where);
  }
  f.source = source;
  f.data_dir = data_dir;
  for (size_t i = 0; i < f.ptq.size(); ++i)
    for (const auto& pat : f.ptq[i].runs)
      if (!matches_any_run(pat, f.runs)) throw error(fmt::format("{}: ptq[{}]: runs: '{}' matches no run", where, i, pat));
  return f;
}

void make_family_tiny(family_config& f, const std::string& work_dir) {
  // The first run from scratch of each plan (at most 8, so that every recipe a study trains runs
  // in CI) and the first fine-tuning run (re-pointed at the first run), each a few steps.
  const std::string dir = (fs::path(work_dir) / "train-tiny").lexically_normal().string();
  std::vector<family_run> kept;
  const auto shrink = [&](family_run r) {
    r.cfg.steps = 12, r.cfg.batch = 4, r.cfg.ctx = std::min(r.cfg.ctx, 64), r.cfg.val_batches = 1;
    r.cfg.eval_every = 6, r.cfg.checkpoint_every = 0;
    r.cfg.calib_samples = 4, r.cfg.calib_ctx = 32;
    r.cfg.out_dir = (fs::path(dir) / r.name).string();
    kept.push_back(std::move(r));
  };
  std::set<std::string> plans;
  for (const auto& r : f.runs)
    if (r.init_run.empty() && plans.size() < 8 && plans.insert(r.cfg.plan).second) shrink(r);
  const size_t fresh = kept.size();
  for (const auto& r : f.runs)
    if (!r.init_run.empty() && fresh > 0) {
      family_run t = r;
      t.init_run = kept.front().name;
      t.name = kept.front().name + r.name.substr(r.name.find(".ft-"));
      t.cfg.init = (fs::path(dir) / t.init_run / "model.safetensors").string();
      shrink(std::move(t));
      break;
    }
  if (kept.empty()) throw error(fmt::format("{}: train: no run to train", f.source));
  f.runs = std::move(kept);
  f.dir = dir;
  for (auto& q : f.ptq) {
    const bool any = std::any_of(q.runs.begin(), q.runs.end(), [&](const std::string& pat) { return matches_any_run(pat, f.runs); });
    if (!any) q.runs = {f.runs.front().name};
    q.formats.resize(1);
    q.methods.resize(1);
    q.max_tokens = 256, q.calib_samples = 4, q.calib_ctx = 32, q.flatness = std::min(q.flatness, 1);
  }
}

namespace {

// A finished run's record, from its result file and model (the run is not trained again).
run_record record_of_finished(const family_run& r, const nlohmann::json& result, const std::string& data_dir) {
  train_job job = prepare_train_job(r.cfg, true, data_dir, r.given);
  train_result tr;
  tr.val_loss = result.at("val_loss").get<double>();
  tr.train_loss = result.at("train_loss").get<double>();
  tr.steps = result.at("steps").get<int64_t>();
  tr.params = result.at("params").get<int64_t>();
  tr.tokens = result.at("tokens").get<int64_t>();
  tr.seconds = result.at("seconds").get<double>();
  tr.tokens_per_s = result.at("tokens_per_s").get<double>();
  tr.trained.config = load_model((fs::path(r.cfg.out_dir) / "model.safetensors").string()).config;
  return train_run_record(job, tr);
}

// The evaluations of block q on run r: the float model, then each format x method (none when
// q's patterns do not take r).
std::vector<std::pair<std::string, std::string>> ptq_points(const family_ptq& q, const family_run& r) {
  if (!any_pattern_matches(q.runs, r.name)) return {};
  std::vector<std::pair<std::string, std::string>> points = {{"fp32", "rtn"}};
  for (const auto& weights : q.formats)
    for (const auto& method : q.methods) points.emplace_back(weights, method);
  return points;
}

}  // namespace

family_summary run_family(const family_config& f, const std::string& db_path, const family_progress& progress) {
  family_summary s;
  const std::string& data_dir = f.data_dir;
  for (const auto& q : f.ptq)
    for (const auto& r : f.runs) s.ptq_total += int64_t(ptq_points(q, r).size());
  const int64_t total = int64_t(f.runs.size()) + s.ptq_total;
  const auto begin = [&](const std::string& stage) {
    if (progress.begin) progress.begin(stage, s.trained + s.found + s.ptq_ran + s.ptq_found + int64_t(s.failures.size()), total);
  };
  runs_db db(db_path);
  std::set<std::string> ready;  // runs with a model.safetensors of their finished training
  for (const auto& r : f.runs) {
    try {
      const fs::path dir(r.cfg.out_dir);
      const fs::path result_path = dir / "result.json";
      bool finished = fs::exists(result_path);
      // Two studies sharing the run directory: the second is refused this run at once (a
      // failure naming it) instead of writing the same checkpoint; the first may have finished
      // it meanwhile (then it is found, as a run finished before).
      std::optional<exclusive_lock> lock;
      if (!finished) {
        begin("train " + r.name);
        fs::create_directories(dir);
        lock.emplace(dir.string(), "train " + r.name);
        finished = fs::exists(result_path);
      }
      run_record rec;
      if (finished) {
        std::ifstream in(result_path);
        rec = record_of_finished(r, nlohmann::json::parse(in), data_dir);
        ++s.found;
      } else {
        const bool resume = fs::exists(dir / "checkpoint.safetensors");
        train_job job = prepare_train_job(r.cfg, resume, data_dir, r.given);
        const train_result tr = run_training(job, [&](const train_point& p, int64_t steps) {
          if (progress.step) progress.step(p.step, steps, p.train_loss);
        });
        write_text_file_atomic(result_path.string(), train_job_json(job, tr).dump() + "\n");
        rec = train_run_record(job, tr);
        ++s.trained;
      }
      rec.metrics["family_run"] = 1;
      rec.config["paths"]["run"] = dir.string();
      db.record(rec);
      ready.insert(r.name);
    } catch (const std::exception& e) {
      s.failures.push_back(fmt::format("train {}: {}", r.name, e.what()));
    }
  }

  // ---- PTQ of the trained runs, on their held-out text ----
  for (const auto& q : f.ptq)
    for (const auto& r : f.runs) {
      const auto points = ptq_points(q, r);
      if (!ready.count(r.name)) {  // its training failed (reported above): each evaluation is not done
        for (const auto& [weights, method] : points)
          s.failures.push_back(fmt::format("ptq {} {}@{}: not evaluated (the run did not train)", r.name, weights, method));
        continue;
      }
      const std::string model_path = (fs::path(r.cfg.out_dir) / "model.safetensors").string();
      std::unique_ptr<model> base;
      std::vector<int32_t> train_ids, val_ids;
      const int ctx = q.ctx > 0 ? q.ctx : r.cfg.ctx;
      // Flatness depends on the model and the format, not the method: measured once per format
      // and reused; the float NLL under it is the fp32 point's (or the first measurement's).
      double float_nll = std::numeric_limits<double>::quiet_NaN();
      std::map<std::string, law::flatness_result> flatness;
      for (const auto& [weights, method] : points) {
        const bool is_float = weights == "fp32";
        nlohmann::json conf = {{"kind", "explore"},
                               {"model", file_fingerprint(model_path)},
                               {"data", file_fingerprint(r.cfg.data_path)},
                               {"eval_tokens", "validation part"},
                               {"val_fraction", r.cfg.val_fraction},
                               {"ctx", ctx},
                               {"max_tokens", q.max_tokens},
                               {"weights", weights},
                               {"method", method}};
        if (method != "rtn")
          conf["calibration"] = {{"samples", q.calib_samples}, {"ctx", q.calib_ctx}, {"seed", q.calib_seed}};
        if (!is_float && q.flatness > 0) conf["flatness_draws"] = q.flatness;
        conf["paths"] = {{"model", model_path}, {"data", r.cfg.data_path}, {"study", f.source}};
        const std::string hash = run_hash(conf);
        if (db.has(hash)) {
          ++s.ptq_found;
          continue;
        }
        try {
          begin(fmt::format("ptq {} {}@{}", r.name, weights, method));
          if (!base) {
            base = std::make_unique<model>(load_model(model_path));
            const auto tok = tokenizer_for_model(*base);
            // As the family's runs from scratch read the text (one plain stream), for fine-tuned
            // runs too, so that a run and the runs started from it are evaluated on the same tokens.
            token_split split = training_tokens(r.cfg, *tok, false);
            train_ids = std::move(split.train), val_ids = std::move(split.val);
          }
          eval_options eo;
          eo.ctx = ctx;
          eo.max_tokens = q.max_tokens;
          eo.kl_base = !is_float;
          const quant_plan plan = quant_plan_of(sweep_plan{is_float ? "" : weights, "", "", {}});
          double sqnr = std::numeric_limits<double>::quiet_NaN();
          const calibration_settings calib{q.calib_samples, q.calib_ctx, q.calib_seed};
          std::optional<model> quantized;  // the fp32 point evaluates the base itself (no copy)
          if (!is_float) quantized.emplace(quantize_variant(*base, train_ids, plan, method, calib, {}, &sqnr));
          const model& variant = is_float ? *base : *quantized;
          const eval_result ev = evaluate(variant, plan, val_ids, eo, is_float ? nullptr : base.get());
          run_record rec = model_run_record("explore", "family:" + r.name, base->config, is_float ? "" : weights,
                                            method, plan);
          rec.config = conf;
          rec.config_hash = hash;
          add_evaluation(rec, ev);
          if (is_float) float_nll = ev.mean_nll;
          if (!is_float) {
            rec.metrics["sqnr_db"] = sqnr;
            if (q.flatness > 0) {
              auto fl = flatness.find(weights);
              if (fl == flatness.end()) {
                law::flatness_options fo;
                fo.draws = q.flatness;
                fo.float_nll = float_nll;
                fl = flatness.emplace(weights, law::measure_flatness(*base, weights, val_ids, eo, fo)).first;
                float_nll = fl->second.float_nll;
              }
              rec.metrics["flatness"] = fl->second.mean_increase;
              rec.metrics["flatness_stderr"] = fl->second.stderr_increase;
            }
          }
          rec.revision = code_revision();
          db.record(rec);
          ++s.ptq_ran;
        } catch (const std::exception& e) {
          s.failures.push_back(fmt::format("ptq {} {}@{}: {}", r.name, weights, method, e.what()));
        }
      }
    }
  return s;
}

}  // namespace lowbit
