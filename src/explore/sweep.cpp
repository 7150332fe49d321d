// Sweeps over models x formats x methods x eval settings (sweep.hpp). One coordinator owns the
// results database and hands runs to workers: a thread of its own process, forked worker
// processes (-j N), or the other Open MPI ranks; workers send each finished run back as one JSON
// line / message and the coordinator records it, so a run is in the database exactly when it
// has finished, and a killed sweep loses only the runs in flight.
#include "lowbit/explore/sweep.hpp"
#include "lowbit/explore/explore.hpp"
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

#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/base/mpi_world.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/text/documents.hpp"

namespace fs = std::filesystem;

namespace lowbit {

// ---- sweep.json ----------------------------------------------------------------------------------
namespace {

// ${NAME} from the environment; LOWBIT_DATA_DIR falls back to the shipped data directory.
std::string expand_vars(const std::string& s, const std::string& data_dir, const std::string& where) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, 2, "${") == 0) {
      const size_t end = s.find('}', i);
      if (end == std::string::npos) throw error(fmt::format("{}: '{}': unclosed '${{'", where, s));
      const std::string name = s.substr(i + 2, end - i - 2);
      const char* v = std::getenv(name.c_str());
      if (v && *v) out += v;
      else if (name == "LOWBIT_DATA_DIR") out += data_dir;
      else throw error(fmt::format("{}: '{}': environment variable {} is not set", where, s, name));
      i = end + 1;
    } else {
      out += s[i++];
    }
  }
  return out;
}

std::string resolve(const std::string& s, const std::string& base_dir, const std::string& data_dir,
                    const std::string& where) {
  const fs::path p = expand_vars(s, data_dir, where);
  return (p.is_absolute() || base_dir.empty() ? p : fs::path(base_dir) / p).lexically_normal().string();
}

void require_file(const std::string& path, const std::string& where) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw error(fmt::format("{}: {}: no such file", where, path));
}

void only_keys(const nlohmann::json& j, std::initializer_list<const char*> keys, const std::string& where) {
  for (const auto& [k, v] : j.items()) {
    bool known = false;
    for (const char* key : keys) known = known || k == key;
    if (!known) {
      std::string list;
      for (const char* key : keys) list += (list.empty() ? "" : ", ") + std::string(key);
      throw error(fmt::format("{}: unknown key '{}' (expected {})", where, k, list));
    }
  }
}

void check_spec(const std::string& spec, const std::string& where) {
  try {
    parse_optional_format(spec);
  } catch (const lowbit::error& e) {
    throw error(fmt::format("{}: {}", where, e.what()));
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
  return {parts[0], parts[1], parts[2]};
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
  only_keys(j, {"models", "data", "formats", "methods", "eval", "kl_base", "calibration", "train"}, source);
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
        only_keys(models[i], {"path", "name", "tokenizer"}, where);
        if (!models[i].contains("path")) throw error(fmt::format("{}: no \"path\"", where));
        path = str(models[i]["path"], fmt::format("models[{}].path", i));
        if (models[i].contains("name")) m.name = str(models[i]["name"], fmt::format("models[{}].name", i));
        if (models[i].contains("tokenizer")) {
          const std::string t = str(models[i]["tokenizer"], fmt::format("models[{}].tokenizer", i));
          m.tokenizer = t == "bytes" ? t : resolve(t, base_dir, data_dir, where);
          if (m.tokenizer != "bytes") require_file(m.tokenizer, where);
        }
      } else {
        throw error(fmt::format("{}: expected a path or {{\"path\", \"name\", \"tokenizer\"}}", where));
      }
      m.path = resolve(path, base_dir, data_dir, where);
      require_file(m.path, where);
      if (m.name.empty()) m.name = fs::path(m.path).stem().string();
      if (!names.insert(m.name).second)
        throw error(fmt::format("{}: a second model named '{}': give each a \"name\"", where, m.name));
      c.models.push_back(m);
    }
    // data
    c.data = resolve(j.contains("data") ? str(j["data"], "data") : "${LOWBIT_DATA_DIR}/text/tinystories_val_sample.txt",
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
        only_keys(f, {"weights", "acts", "kv"}, where);
        auto part = [&](const char* k) {
          const std::string v = f.contains(k) ? str(f[k], fmt::format("formats[{}].{}", i, k)) : "";
          return v == "-" ? std::string() : v;
        };
        p = {part("weights"), part("acts"), part("kv")};
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
        const std::string m = str(j["methods"][i], fmt::format("methods[{}]", i));
        try {
          ptq::parse_method(m);
        } catch (const lowbit::error& e) {
          throw error(fmt::format("{}: methods[{}]: {}", source, i, e.what()));
        }
        c.methods.push_back(m);
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
        only_keys(list[i], {"ctx", "max_tokens"}, where);
        sweep_eval e;
        e.ctx = list[i].value("ctx", 0);
        e.max_tokens = list[i].value("max_tokens", int64_t(0));
        if (e.ctx < 0 || e.max_tokens < 0) throw error(fmt::format("{}: ctx and max_tokens must be >= 0", where));
        c.evals.push_back(e);
      }
    }
    if (j.contains("kl_base")) {
      if (!j["kl_base"].is_boolean()) throw error(fmt::format("{}: kl_base: expected true or false", source));
      c.kl_base = j["kl_base"].get<bool>();
    }
    if (j.contains("calibration")) {
      const auto& cal = j["calibration"];
      const std::string where = source + ": calibration";
      if (!cal.is_object()) throw error(fmt::format("{}: expected {{\"samples\", \"ctx\", \"seed\"}}", where));
      only_keys(cal, {"samples", "ctx", "seed"}, where);
      c.calib_samples = cal.value("samples", c.calib_samples);
      c.calib_ctx = cal.value("ctx", c.calib_ctx);
      c.calib_seed = cal.value("seed", c.calib_seed);
      if (c.calib_samples <= 0 || c.calib_ctx <= 1) throw error(fmt::format("{}: samples and ctx must be positive", where));
    }
  } catch (const nlohmann::json::exception& e) {
    throw error(fmt::format("{}: {}", source, e.what()));
  }
  return c;
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
  return fps;
}

std::vector<sweep_job> expand_sweep(const sweep_config& c, const std::map<std::string, std::string>& fingerprints) {
  auto canonical = [](const std::string& s) {
    const auto f = parse_optional_format(s);
    return f ? format_name(*f) : std::string("fp32");
  };
  auto fingerprint = [&](const std::string& path) {  // sweep_fingerprints' paths
    const auto it = fingerprints.find(path);
    if (it == fingerprints.end()) throw error(fmt::format("{}: no fingerprint among the sweep's files", path));
    return it->second;
  };
  const std::string data_fp = fingerprint(c.data);
  std::vector<sweep_job> jobs;
  std::set<std::string> seen;
  for (const sweep_model& m : c.models) {
    const std::string model_fp = fingerprint(m.path);
    const std::string tok_fp = m.tokenizer.empty() || m.tokenizer == "bytes" ? m.tokenizer : fingerprint(m.tokenizer);
    for (const sweep_plan& p : c.formats)
      for (const std::string& method : c.methods) {
        if (method != "rtn" && !parse_optional_format(p.weights)) continue;  // nothing to calibrate
        for (const sweep_eval& e : c.evals) {
          sweep_job j;
          j.model = m, j.plan = p, j.method = method, j.eval = e;
          j.config = {{"kind", "explore"}, {"model", model_fp}, {"tokenizer", tok_fp}, {"data", data_fp},
                      {"weights", canonical(p.weights)}, {"acts", canonical(p.acts)}, {"kv", canonical(p.kv)},
                      {"method", method}, {"ctx", e.ctx}, {"max_tokens", e.max_tokens},
                      {"eval_tokens", "first half"}, {"kl_base", c.kl_base}};
          if (method != "rtn")
            j.config["calibration"] = {{"samples", c.calib_samples}, {"ctx", c.calib_ctx}, {"seed", c.calib_seed}};
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
  std::vector<int32_t> ids;
};

sweep_runner::sweep_runner(const sweep_config& c) : config_(c) {}
sweep_runner::~sweep_runner() = default;

run_record sweep_runner::run(const sweep_job& job) {
  if (!cache_ || cache_->model_path != job.model.path || cache_->tokenizer != job.model.tokenizer) {
    cache_.reset();
    auto l = std::make_unique<loaded>();
    l->model_path = job.model.path, l->tokenizer = job.model.tokenizer;
    l->base = load_model(job.model.path);
    const auto tok = tokenizer_for_model(l->base, job.model.tokenizer);
    l->ids = encode_documents(*tok, read_file(config_.data, "data file"));
    cache_ = std::move(l);
  }
  const model& base = cache_->base;
  const std::vector<int32_t>& ids = cache_->ids;
  const int64_t half = int64_t(ids.size()) / 2;
  eval_options eo;
  eo.ctx = job.eval.ctx;
  eo.max_tokens = job.eval.max_tokens > 0 && job.eval.max_tokens < half ? job.eval.max_tokens : half;
  eo.kl_base = config_.kl_base;

  const quant_plan plan = quant_plan_of(job.plan);
  const double t0 = now_seconds();
  double sqnr = std::numeric_limits<double>::quiet_NaN();
  const calibration_settings calib{config_.calib_samples, config_.calib_ctx, config_.calib_seed};
  const model variant = quantize_variant(base, ids, plan, job.method, calib, {}, &sqnr);
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
  return rec;
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
  if (progress) progress(0, total);
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
    family_config f = *c.family;
    if (c.tiny) make_family_tiny(f, fs::path(o.db).parent_path().string());
    family_progress fp;
    if (progress) fp.begin = [&](const std::string&) { progress(s.ran, s.total); };
    const family_summary fs_ = run_family(f, o.db, fp);
    s.total += int64_t(f.runs.size()) + fs_.ptq_total;
    s.ran += fs_.trained + fs_.ptq_ran;
    s.already += fs_.found + (fs_.ptq_total - fs_.ptq_ran);
    s.failures.insert(s.failures.end(), fs_.failures.begin(), fs_.failures.end());
    s.already -= int64_t(fs_.failures.size());
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
