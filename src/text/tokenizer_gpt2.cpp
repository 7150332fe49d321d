// GPT-2's byte-level BPE (OpenAI's encoder.py): bytes_to_unicode maps every byte to a printable
// codepoint, encoder.json maps those strings to ids, vocab.bpe lists the merges by rank, and a
// regex cuts the text into pre-tokens before BPE. Everything here works on raw bytes: the files'
// strings are mapped back through bytes_to_unicode once, at load.
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <unordered_map>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/text/tokenizer.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "pair_merge.hpp"

namespace lowbit {
namespace {

constexpr const char* kPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kEndOfText = "<|endoftext|>";

// bytes_to_unicode(): printable bytes keep their codepoint, the others get 256, 257, ...
std::array<uint32_t, 256> byte_to_codepoint() {
  std::array<uint32_t, 256> cp{};
  uint32_t n = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    cp[b] = printable ? b : 256 + n++;
  }
  return cp;
}

// A string of bytes_to_unicode codepoints (UTF-8) back to its bytes; false if it is not one.
bool unmap(std::string_view s, const std::unordered_map<uint32_t, uint8_t>& inv, std::string& out) {
  out.clear();
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    size_t len;
    if (c < 0x80) { cp = c; len = 1; }
    else if ((c & 0xE0) == 0xC0) { cp = c & 0x1F; len = 2; }
    else if ((c & 0xF0) == 0xE0) { cp = c & 0x0F; len = 3; }
    else return false;  // the map never goes beyond U+0143
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    auto it = inv.find(cp);
    if (it == inv.end()) return false;
    out.push_back(static_cast<char>(it->second));
    i += len;
  }
  return true;
}

class gpt2_tokenizer final : public tokenizer {
 public:
  // tokens[id]: the token in GPT-2's byte-symbol spelling (encoder.json's keys, GGUF's
  // tokenizer.ggml.tokens); merges: "a b" in rank order (vocab.bpe's lines, GGUF's
  // tokenizer.ggml.merges). `where` names the source in messages.
  gpt2_tokenizer(std::vector<std::string> tokens, std::vector<std::string> merges, const std::string& where)
      : tokens_(std::move(tokens)), merge_text_(std::move(merges)) {
    const auto cp = byte_to_codepoint();
    std::unordered_map<uint32_t, uint8_t> inv;
    for (int b = 0; b < 256; ++b) inv[cp[b]] = static_cast<uint8_t>(b);
    for (int b = 0; b < 256; ++b) intern(std::string(1, static_cast<char>(b)));
    const size_t n = tokens_.size();
    if (n == 0) throw error(fmt::format("{}: the vocabulary is empty", where));
    if (n > (1u << 24)) throw error(fmt::format("{}: {} tokens (expected at most 2^24)", where, n));
    id_bytes_.assign(n, std::string());
    std::string raw;
    for (size_t id = 0; id < n; ++id) {
      const std::string& key = tokens_[id];
      if (!unmap(key, inv, raw))
        throw error(fmt::format("{}: token {} '{}' is not a string of GPT-2 byte symbols (bytes_to_unicode)",
                                where, id, key));
      id_bytes_[id] = raw;
      const int32_t sym = intern(raw);
      if (static_cast<size_t>(sym) >= sym_to_id_.size()) sym_to_id_.resize(sym + 1, -1);
      if (sym_to_id_[sym] < 0) sym_to_id_[sym] = static_cast<int32_t>(id);
      if (key == kEndOfText) eot_ = static_cast<int32_t>(id);
    }
    if (eot_ < 0) throw error(fmt::format("{}: no '{}' token (expected it as GPT-2's BOS/EOS)", where, kEndOfText));
    std::string ra, rb;
    for (size_t i = 0; i < merge_text_.size(); ++i) {
      const std::string_view line = merge_text_[i];
      const size_t sp = line.find(' ');
      if (sp == std::string_view::npos || sp == 0 || sp + 1 == line.size() ||
          line.find(' ', sp + 1) != std::string_view::npos)
        throw error(fmt::format("{}: merge {}: '{}' (expected two symbols separated by one space)", where, i + 1, line));
      if (!unmap(line.substr(0, sp), inv, ra) || !unmap(line.substr(sp + 1), inv, rb))
        throw error(fmt::format("{}: merge {}: '{}' is not made of GPT-2 byte symbols", where, i + 1, line));
      const int32_t a = intern(ra), b = intern(rb), m = intern(ra + rb);
      const int32_t rank = static_cast<int32_t>(merges_.size());
      merges_.emplace(key(a, b), merge_rule{rank, m});  // a repeated pair keeps its first rank
    }
    sym_to_id_.resize(symbols_.size(), -1);

    int err = 0;
    PCRE2_SIZE err_off = 0;
    re_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED,
                        PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_off, nullptr);
    if (!re_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw error(fmt::format("GPT-2 pre-tokenizer regex: {} at offset {}", reinterpret_cast<char*>(msg),
                              err_off));
    }
    pcre2_jit_compile(re_, PCRE2_JIT_COMPLETE);  // optional speed-up; the interpreter is the fallback
  }
  ~gpt2_tokenizer() override { pcre2_code_free(re_); }
  gpt2_tokenizer(const gpt2_tokenizer&) = delete;
  gpt2_tokenizer& operator=(const gpt2_tokenizer&) = delete;

  std::string kind() const override { return "gpt2"; }
  bool gpt2_vocabulary(std::vector<std::string>& tokens, std::vector<std::string>& merges) const override {
    tokens = tokens_;
    merges = merge_text_;
    return true;
  }
  int vocab_size() const override { return static_cast<int>(id_bytes_.size()); }
  int bos_id() const override { return eot_; }
  int eos_id() const override { return eot_; }

  std::vector<int32_t> encode(std::string_view text, bool bos, bool eos) const override {
    std::vector<int32_t> ids;
    if (bos) ids.push_back(eot_);
    const std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> owner(
        pcre2_match_data_create_from_pattern(re_, nullptr), &pcre2_match_data_free);
    pcre2_match_data* md = owner.get();
    if (!md) throw error("GPT-2 pre-tokenizer: out of memory");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t offset = 0;
    while (offset < text.size()) {
      const int rc = pcre2_match(re_, subject, text.size(), offset, 0, md, nullptr);
      size_t start = text.size(), end = text.size();
      if (rc >= 0) {
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        start = ov[0];
        end = ov[1];
      } else if (rc != PCRE2_ERROR_NOMATCH) {
        throw error(fmt::format("GPT-2 pre-tokenizer: PCRE2 match error {}", rc));
      }
      // Bytes no alternative matches are invalid UTF-8 (every character matches some
      // alternative); they go through BPE as one pre-token, so no byte is lost.
      if (start > offset) bpe(text.substr(offset, start - offset), ids);
      if (end > start) bpe(text.substr(start, end - start), ids);
      offset = end > offset ? end : offset + 1;  // the pattern never matches empty
      if (rc < 0) break;
    }
    if (eos) ids.push_back(eot_);
    return ids;
  }

  std::string decode_token(int32_t, int32_t token) const override {
    if (token < 0 || token >= vocab_size())
      throw error(fmt::format("gpt2 tokenizer: token id {} is outside the vocabulary of {} tokens",
                              token, vocab_size()));
    if (token == eot_) return {};
    return id_bytes_[token];
  }

 private:
  struct merge_rule {
    int32_t rank;
    int32_t result;
  };
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  int32_t intern(const std::string& s) {
    auto [it, inserted] = symbol_ids_.emplace(s, static_cast<int32_t>(symbols_.size()));
    if (inserted) symbols_.push_back(s);
    return it->second;
  }

  // One pre-token through BPE (cached): merges by rank, lowest first, leftmost first among equal
  // pairs — OpenAI's loop, which merges every occurrence of the best pair left to right before
  // looking at new pairs, picks the same pairs in the same order for a merge list in which a
  // merge ranks after the merges that make its parts (true of any trained list).
  void bpe(std::string_view piece, std::vector<int32_t>& out) const {
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = cache_.find(std::string(piece));
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const int n = static_cast<int>(piece.size());
    std::vector<int32_t> sym(n);
    for (int i = 0; i < n; ++i) sym[i] = static_cast<unsigned char>(piece[i]);  // byte b = symbol b
    // Lowest rank first (priority = -rank), leftmost among equals.
    detail::merge_pairs<int64_t>(sym, [&](int32_t a, int32_t b, int64_t* priority, int32_t* result) {
      const auto it = merges_.find(key(a, b));
      if (it == merges_.end()) return false;
      *priority = -int64_t(it->second.rank);
      *result = it->second.result;
      return true;
    });
    std::vector<int32_t> ids;
    for (const int32_t s : sym) {
      const int32_t id = sym_to_id_[s];
      if (id < 0)
        throw error(fmt::format("gpt2 tokenizer: BPE produced '{}', which encoder.json lacks "
                                "(expected every merge result to be a token)", symbols_[s]));
      ids.push_back(id);
    }
    out.insert(out.end(), ids.begin(), ids.end());
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheMax) cache_.clear();
    cache_.emplace(std::string(piece), std::move(ids));
  }

  static constexpr size_t kCacheMax = 1 << 16;
  std::vector<std::string> id_bytes_;                   // id -> raw bytes
  std::vector<std::string> symbols_;                    // symbol -> raw bytes
  std::unordered_map<std::string, int32_t> symbol_ids_;
  std::vector<int32_t> sym_to_id_;                      // symbol -> token id, -1 if none
  std::unordered_map<uint64_t, merge_rule> merges_;     // (left, right) symbols -> rank, result
  int32_t eot_ = -1;
  pcre2_code* re_ = nullptr;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
  std::vector<std::string> tokens_, merge_text_;  // as given, for export (GGUF tokenizer.ggml.*)
};

// encoder.json ({"<symbols>": id}, ids 0..n-1 each once) and vocab.bpe ("#version" line, then
// one merge "a b" a line, in rank order) into the constructor's vectors.
void read_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe,
                     std::vector<std::string>& tokens, std::vector<std::string>& merges) {
  nlohmann::json enc;
  try {
    enc = nlohmann::json::parse(read_file(encoder_json, "GPT-2 encoder.json"));
  } catch (const nlohmann::json::exception& e) {
    throw error(fmt::format("{}: not valid JSON ({})", encoder_json, e.what()));
  }
  if (!enc.is_object() || enc.empty())
    throw error(fmt::format("{}: expected a non-empty JSON object mapping token strings to ids", encoder_json));
  const size_t n = enc.size();
  if (n > (1u << 24)) throw error(fmt::format("{}: {} tokens (expected at most 2^24)", encoder_json, n));
  tokens.assign(n, std::string());
  std::vector<char> seen(n, 0);
  for (const auto& [k, value] : enc.items()) {
    if (!value.is_number_integer())
      throw error(fmt::format("{}: token '{}' maps to {} (expected an integer id)", encoder_json, k, value.dump()));
    const int64_t id = value.get<int64_t>();
    if (id < 0 || id >= static_cast<int64_t>(n))
      throw error(fmt::format("{}: token '{}' has id {} (expected 0..{}, one id per entry)", encoder_json, k, id, n - 1));
    if (seen[id]) throw error(fmt::format("{}: id {} appears twice (token '{}')", encoder_json, id, k));
    seen[id] = 1;
    tokens[id] = k;
  }
  const std::string bpe = read_file(vocab_bpe, "GPT-2 vocab.bpe");
  size_t pos = 0;
  int line_no = 0;
  merges.clear();
  while (pos < bpe.size()) {
    size_t end = bpe.find('\n', pos);
    if (end == std::string::npos) end = bpe.size();
    std::string_view line(bpe.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.substr(0, 8) == "#version")) continue;
    merges.emplace_back(line);
  }
}

}  // namespace

std::unique_ptr<tokenizer> load_gpt2_tokenizer(const std::string& encoder_json,
                                               const std::string& vocab_bpe) {
  std::vector<std::string> tokens, merges;
  read_gpt2_files(encoder_json, vocab_bpe, tokens, merges);
  return std::make_unique<gpt2_tokenizer>(std::move(tokens), std::move(merges),
                                          fmt::format("{} + {}", encoder_json, vocab_bpe));
}

std::string gpt2_byte_symbol(uint8_t b) {
  const uint32_t cp = byte_to_codepoint()[b];  // < 0x800: one or two UTF-8 bytes
  if (cp < 0x80) return std::string(1, static_cast<char>(cp));
  return {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
}

std::unique_ptr<tokenizer> make_gpt2_tokenizer(std::vector<std::string> tokens, std::vector<std::string> merges,
                                               const std::string& where) {
  return std::make_unique<gpt2_tokenizer>(std::move(tokens), std::move(merges), where);
}

}  // namespace lowbit
