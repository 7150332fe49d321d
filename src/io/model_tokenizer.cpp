// Finding a model's tokenizer: an explicit path, the model file's own metadata, or the llama2.c
// convention of a tokenizer file beside the model.
#include <filesystem>

#include <fmt/format.h>

#include "lowbit/engine/eval.hpp"
#include "lowbit/io/gguf.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/io/model_io.hpp"

namespace fs = std::filesystem;

namespace lowbit {

namespace {

std::unique_ptr<tokenizer> gguf_tokenizer(const std::string& path) {
  gguf_file f(path);
  if (gguf_holds_byte_tokenizer(f)) return make_byte_tokenizer();
  const std::string kind = f.find_kv("tokenizer.ggml.model") ? f.get_string("tokenizer.ggml.model") : "";
  if (kind == "gpt2") {  // byte-level BPE: tokens in GPT-2's byte-symbol spelling + ranked merges
    const gguf_kv* tokens = f.find_kv("tokenizer.ggml.tokens");
    const gguf_kv* merges = f.find_kv("tokenizer.ggml.merges");
    if (!tokens || !tokens->value.is_array() || !merges || !merges->value.is_array())
      throw error(fmt::format("{}: a gpt2 tokenizer needs tokenizer.ggml.tokens and tokenizer.ggml.merges", path));
    std::vector<std::string> t, mg;
    for (const auto& v : tokens->value) t.push_back(v.is_string() ? v.get<std::string>() : "");
    for (const auto& v : merges->value) mg.push_back(v.is_string() ? v.get<std::string>() : "");
    return make_gpt2_tokenizer(std::move(t), std::move(mg), path + " (tokenizer.ggml.*)");
  }
  if (kind != "llama")
    throw error(fmt::format("{}: tokenizer.ggml.model '{}' is not supported here (expected llama or gpt2); "
                            "pass --tokenizer", path, kind));
  const gguf_kv* tokens = f.find_kv("tokenizer.ggml.tokens");
  const gguf_kv* scores = f.find_kv("tokenizer.ggml.scores");
  const gguf_kv* types = f.find_kv("tokenizer.ggml.token_type");
  if (!tokens || !tokens->value.is_array())
    throw error(fmt::format("{}: tokenizer.ggml.tokens is missing", path));
  std::vector<std::string> t;
  std::vector<float> s;
  std::vector<int32_t> ty;
  for (const auto& v : tokens->value) t.push_back(v.is_string() ? v.get<std::string>() : "");
  if (scores && scores->value.is_array())
    for (const auto& v : scores->value) s.push_back(v.is_number() ? v.get<float>() : 0.0f);
  if (types && types->value.is_array())
    for (const auto& v : types->value) ty.push_back(v.is_number() ? v.get<int32_t>() : 1);
  s.resize(t.size(), 0.0f);
  ty.resize(t.size(), 1);
  const int bos = f.find_kv("tokenizer.ggml.bos_token_id") ? static_cast<int>(f.get_int("tokenizer.ggml.bos_token_id")) : 1;
  const int eos = f.find_kv("tokenizer.ggml.eos_token_id") ? static_cast<int>(f.get_int("tokenizer.ggml.eos_token_id")) : 2;
  // llama.cpp's default is true; a file that says false (models whose SentencePiece tokenizer has
  // add_dummy_prefix off) must be tokenized without it.
  bool space_prefix = true;
  if (const gguf_kv* p = f.find_kv("tokenizer.ggml.add_space_prefix"); p && p->value.is_boolean())
    space_prefix = p->value.get<bool>();
  return make_spm_vocab_tokenizer(std::move(t), std::move(s), std::move(ty), bos, eos, space_prefix);
}

}  // namespace

bool gguf_holds_byte_tokenizer(const gguf_file& f) {
  const gguf_kv* kind = f.find_kv("tokenizer.ggml.model");
  const gguf_kv* tokens = f.find_kv("tokenizer.ggml.tokens");
  const gguf_kv* merges = f.find_kv("tokenizer.ggml.merges");
  if (!kind || !kind->value.is_string() || kind->value.get<std::string>() != "gpt2" || !tokens ||
      !tokens->value.is_array() || tokens->value.size() != 258 || !merges || !merges->value.is_array() ||
      !merges->value.empty() || !f.find_kv("tokenizer.ggml.bos_token_id") || !f.find_kv("tokenizer.ggml.eos_token_id"))
    return false;
  std::vector<std::string> t;
  for (const auto& v : tokens->value) {
    if (!v.is_string()) return false;
    t.push_back(v.get<std::string>());
  }
  return is_byte_tokenizer_vocabulary(t, {}, static_cast<int>(f.get_int("tokenizer.ggml.bos_token_id")),
                                      static_cast<int>(f.get_int("tokenizer.ggml.eos_token_id")));
}

std::string tokenizer_file_beside(const std::string& model_path, int vocab_size) {
  const fs::path dir = fs::path(model_path).parent_path();
  for (const std::string& name : {std::string("tokenizer.bin"), fmt::format("tok{}.bin", vocab_size),
                                 std::string("tokenizer.model")})
    if (fs::exists(dir / name)) return (dir / name).string();
  return "";
}

tokenizer_source model_tokenizer_source(const model& m) {
  if (m.tokenizer.kind == "gguf") return {"gguf", fs::absolute(m.tokenizer.path.empty() ? m.source_path : m.tokenizer.path).string()};
  if (m.tokenizer.kind == "bytes") return {"bytes", ""};
  if (!m.tokenizer.path.empty()) return m.tokenizer;
  const std::string beside = tokenizer_file_beside(m.source_path, m.config.vocab_size);
  if (beside.empty())
    throw error(fmt::format("{}: no tokenizer named by the model or found beside it; pass --tokenizer", m.source_path));
  return {"file", fs::absolute(beside).string()};
}

std::unique_ptr<tokenizer> tokenizer_for_model(const model& m, const std::string& path) {
  std::unique_ptr<tokenizer> tok;
  if (!path.empty()) {
    tok = load_tokenizer(path);
  } else if (m.tokenizer.kind == "gguf") {
    tok = gguf_tokenizer(m.tokenizer.path.empty() ? m.source_path : m.tokenizer.path);
  } else if (m.tokenizer.kind == "bytes") {
    tok = make_byte_tokenizer();
  } else if (!m.tokenizer.path.empty()) {
    tok = load_tokenizer(m.tokenizer.path);
  } else {
    const std::string beside = tokenizer_file_beside(m.source_path, m.config.vocab_size);
    if (beside.empty())
      throw error(fmt::format("{}: no tokenizer named by the model or found beside it; pass --tokenizer",
                              m.source_path));
    tok = load_tokenizer(beside);
  }
  if (tok->vocab_size() > m.config.vocab_size)
    throw error(fmt::format("tokenizer ({}) has {} tokens but the model only {}", tok->kind(),
                            tok->vocab_size(), m.config.vocab_size));
  // A llama2.c tokenizer lists the model's whole vocabulary, one entry per row of the embedding: one
  // with fewer entries is truncated (cut at a token boundary it parses; before, stories260K then
  // evaluated at NLL 27 instead of 0.94). Other kinds may leave padding rows unnamed (GPT-2's
  // 50257 tokens in a 50304-row embedding).
  if (tok->kind() == "llama2c" && tok->vocab_size() < m.config.vocab_size)
    throw error(fmt::format("llama2.c tokenizer has {} tokens but the model's vocabulary is {}: the tokenizer "
                            "file is truncated or belongs to another model", tok->vocab_size(), m.config.vocab_size));
  return tok;
}

}  // namespace lowbit
