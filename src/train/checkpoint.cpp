#include "lowbit/train/checkpoint.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/base/hash.hpp"
#include "lowbit/io/safetensors.hpp"

namespace lowbit {

namespace {

nlohmann::json curve_json(const std::vector<train_point>& curve) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& p : curve)
    out.push_back({{"step", p.step}, {"train_loss", p.train_loss}, {"val_loss", p.val_loss},
                   {"lr", p.lr}, {"grad_norm", p.grad_norm}, {"tokens_per_s", p.tokens_per_s}});
  return out;
}

// The checksum of a checkpoint: its state (as stored) and the bytes of its three vectors.
std::string checkpoint_checksum(const std::string& state, const train_checkpoint& c) {
  fnv1a64 h;
  h.add(state);
  for (const std::vector<float>* v : {&c.params, &c.adam_m, &c.adam_v}) h.add(v->data(), v->size() * sizeof(float));
  return h.hex();
}

}  // namespace

void save_train_checkpoint(const std::string& path, const train_checkpoint& c) {
  const nlohmann::json st = {{"step", c.step}, {"config", c.config}, {"curve", curve_json(c.curve)},
                             {"seconds", c.seconds}, {"quantizer", c.quantizer}};
  const std::string state = st.dump();
  const int64_t n = int64_t(c.params.size());
  write_safetensors(path,
                    {{"params", st_dtype::f32, {n}, c.params.data()},
                     {"adam.m", st_dtype::f32, {n}, c.adam_m.data()},
                     {"adam.v", st_dtype::f32, {n}, c.adam_v.data()}},
                    {{"lowbit.train_state", state}, {"lowbit.checksum", checkpoint_checksum(state, c)}});
}

train_checkpoint load_train_checkpoint(const std::string& path) {
  safetensors_file f(path);
  const auto it = f.metadata().find("lowbit.train_state");
  if (it == f.metadata().end()) throw error(fmt::format("{}: no lowbit.train_state metadata (not a training checkpoint)", path));
  nlohmann::json st;
  try {
    st = nlohmann::json::parse(it->second);
  } catch (const std::exception& e) {
    throw error(fmt::format("{}: lowbit.train_state is not JSON: {}", path, e.what()));
  }
  train_checkpoint c;
  try {
    c.step = st.at("step").get<int64_t>();
    c.seconds = st.value("seconds", 0.0);
    c.config = st.at("config");
    c.quantizer = st.value("quantizer", nlohmann::json());
    for (const auto& p : st.at("curve")) {
      train_point tp;
      tp.step = p.at("step"), tp.train_loss = p.at("train_loss"), tp.val_loss = p.at("val_loss");
      tp.lr = p.at("lr"), tp.grad_norm = p.at("grad_norm"), tp.tokens_per_s = p.value("tokens_per_s", 0.0);
      c.curve.push_back(tp);
    }
  } catch (const nlohmann::json::exception& e) {
    throw error(fmt::format("{}: lowbit.train_state: {}", path, e.what()));
  }
  c.params = f.read_f32("params");
  c.adam_m = f.read_f32("adam.m");
  c.adam_v = f.read_f32("adam.v");
  if (c.adam_m.size() != c.params.size() || c.adam_v.size() != c.params.size())
    throw error(fmt::format("{}: params, adam.m and adam.v differ in length", path));
  const auto sum = f.metadata().find("lowbit.checksum");
  if (sum == f.metadata().end())
    throw error(fmt::format("{}: no lowbit.checksum (a checkpoint of an older lowbit, or not lowbit's): not resuming "
                            "from data that cannot be verified", path));
  if (sum->second != checkpoint_checksum(it->second, c))
    throw error(fmt::format("{}: the checkpoint does not match its checksum (corrupted or edited): not resuming", path));
  return c;
}

nlohmann::json train_point_json(const train_point& p) {
  nlohmann::json line = {{"step", p.step}, {"train_loss", p.train_loss}, {"lr", p.lr},
                         {"grad_norm", p.grad_norm}, {"tokens_per_s", p.tokens_per_s}};
  if (p.val_loss >= 0) line["val_loss"] = p.val_loss;
  return line;
}

std::string train_log_line(const train_point& p) { return train_point_json(p).dump() + "\n"; }

void write_train_log(const std::string& path, const std::vector<train_point>& curve) {
  std::string text;
  for (const train_point& p : curve) text += train_log_line(p);
  write_text_file_atomic(path, text);
}

void append_train_log(const std::string& path, const train_point& p) {
  const std::string line = train_log_line(p);
  std::FILE* f = std::fopen(path.c_str(), "ab");
  if (!f) throw error(fmt::format("train: cannot append to '{}': {}", path, std::strerror(errno)));
  const bool written = std::fwrite(line.data(), 1, line.size(), f) == line.size();
  const bool flushed = std::fflush(f) == 0;  // a full disk shows here, not at fwrite
  const int err = errno;
  const bool closed = std::fclose(f) == 0;
  if (!written || !flushed || !closed)
    throw error(fmt::format("train: cannot append to '{}': {}", path, std::strerror(err ? err : EIO)));
}

}  // namespace lowbit
