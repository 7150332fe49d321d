// Tokenizers: the score-ordered BPE of llama2.c (and of a SentencePiece vocabulary given as
// tokens + scores), the byte tokenizer, and load_tokenizer's dispatch by path. GPT-2's byte-level
// BPE lives in tokenizer_gpt2.cpp, the libsentencepiece wrapper in tokenizer_spm.cpp.
#include "lowbit/base/files.hpp"
#include "lowbit/text/tokenizer.hpp"

#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <unordered_map>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "pair_merge.hpp"

namespace lowbit {

std::string tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t id : ids) {
    out += decode_token(prev, id);
    prev = id;
  }
  return out;
}

namespace {

// The "<0xXX>" byte pieces of llama2.c / SentencePiece: the byte value, or -1.
int byte_piece_value(std::string_view p) {
  if (p.size() != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  int hi = hex(p[3]), lo = hex(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

// GGUF token types (llama.cpp's llama_token_type).
enum : int32_t { kTypeUndefined = 0, kTypeNormal = 1, kTypeUnknown = 2, kTypeControl = 3,
                 kTypeUserDefined = 4, kTypeUnused = 5, kTypeByte = 6 };

// llama2.c's encode(): codepoints (or their bytes) as initial symbols, then merge the adjacent
// pair whose concatenation is in the vocabulary with the highest score, leftmost on ties, until
// no pair merges. llama2.c rescans all pairs per merge (O(n^2)); this runs the same greedy choice
// with a priority queue keyed (score desc, left position asc) over a linked list, which picks the
// same pair at every step: positions keep their order, so the smallest left position among the
// live pairs is the leftmost pair of the current sequence.
class score_bpe_tokenizer final : public tokenizer {
 public:
  // spm = false: llama2.c's file (spaces are ' ', byte fallback = byte + 3, BOS 1, EOS 2).
  // spm = true : a SentencePiece vocabulary (spaces are U+2581, byte pieces found by name).
  score_bpe_tokenizer(std::string kind, bool spm, std::vector<std::string> pieces,
                      std::vector<float> scores, std::vector<int32_t> types, int bos, int eos,
                      const std::string& where, bool add_space_prefix = true)
      : kind_(std::move(kind)), spm_(spm), add_space_prefix_(add_space_prefix), pieces_(std::move(pieces)),
        scores_(std::move(scores)), types_(std::move(types)), bos_(bos), eos_(eos) {
    const int n = static_cast<int>(pieces_.size());
    if (n == 0) throw error(fmt::format("{}: the vocabulary is empty (expected at least one token)", where));
    if (scores_.size() != pieces_.size())
      throw error(fmt::format("{}: {} scores for {} tokens (expected one score per token)", where,
                              scores_.size(), pieces_.size()));
    if (!types_.empty() && types_.size() != pieces_.size())
      throw error(fmt::format("{}: {} token types for {} tokens (expected one per token, or none)",
                              where, types_.size(), pieces_.size()));
    if (bos_ < -1 || bos_ >= n)
      throw error(fmt::format("{}: BOS id {} is outside the vocabulary of {} tokens", where, bos_, n));
    if (eos_ < -1 || eos_ >= n)
      throw error(fmt::format("{}: EOS id {} is outside the vocabulary of {} tokens", where, eos_, n));

    byte_id_.fill(-1);
    byte_value_.assign(pieces_.size(), -1);
    for (int i = 0; i < n; ++i) {
      const int32_t type = types_.empty() ? kTypeNormal : types_[i];
      const int b = byte_piece_value(pieces_[i]);
      if (b >= 0 && (types_.empty() || type == kTypeByte)) {
        byte_value_[i] = static_cast<int16_t>(b);
        if (spm_ && byte_id_[b] < 0) byte_id_[b] = i;
      }
      if (spm_ && type == kTypeUnknown && unk_id_ < 0) unk_id_ = i;
      // llama2.c looks every piece up; a SentencePiece vocabulary merges only into normal and
      // user-defined pieces (not <unk>, control, unused or byte pieces), as SentencePiece does.
      const bool mergeable = !spm_ || types_.empty() || type == kTypeNormal ||
                             type == kTypeUserDefined || type == kTypeUndefined;
      if (mergeable) lookup_.emplace(std::string_view(pieces_[i]), i);  // first id wins
    }
    if (!spm_) {
      for (int b = 0; b < 256 && b + 3 < n; ++b) byte_id_[b] = b + 3;
    } else if (unk_id_ < 0) {
      for (int i = 0; i < n; ++i)
        if (pieces_[i] == "<unk>") { unk_id_ = i; break; }
    }
  }
  bool sentencepiece_vocabulary(spm_vocabulary& v) const override {
    v.tokens.clear(), v.types.clear();
    v.scores = scores_;
    v.bos = bos_, v.eos = eos_, v.unk = unk_id_;
    v.add_space_prefix = add_space_prefix_;
    if (!spm_ && !pieces_.empty() && pieces_[0] == "<unk>") v.unk = 0;  // llama2.c's id 0
    static const std::string space = "\xe2\x96\x81";  // U+2581
    for (size_t i = 0; i < pieces_.size(); ++i) {
      int32_t type = types_.empty() ? kTypeNormal : types_[i];
      std::string piece = pieces_[i];
      if (!spm_) {  // llama2.c: raw spaces, BOS/EOS written "\n<s>\n", bytes found by +3
        if (int(i) == bos_) piece = "<s>", type = kTypeControl;
        else if (int(i) == eos_) piece = "</s>", type = kTypeControl;
        else if (int(i) == v.unk) type = kTypeUnknown;
        else if (byte_value_[i] >= 0) type = kTypeByte;
        std::string out;
        for (char ch : piece) out += ch == ' ' ? space : std::string(1, ch);
        piece = std::move(out);
      }
      v.tokens.push_back(std::move(piece));
      v.types.push_back(type);
    }
    return true;
  }

  score_bpe_tokenizer(const score_bpe_tokenizer&) = delete;  // lookup_ views into pieces_
  score_bpe_tokenizer& operator=(const score_bpe_tokenizer&) = delete;

  std::string kind() const override { return kind_; }
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int bos_id() const override { return bos_; }
  int eos_id() const override { return eos_; }

  std::vector<int32_t> encode(std::string_view text, bool bos, bool eos) const override {
    std::string spm_text;
    if (spm_) {
      spm_text.reserve(text.size() + text.size() / 4);
      for (char c : text) {
        if (c == ' ') spm_text.append(kSpmSpace); else spm_text.push_back(c);
      }
      text = spm_text;
    }
    std::vector<int32_t> ids;
    ids.reserve(text.size() + 3);
    if (bos && bos_ >= 0) ids.push_back(bos_);
    // add_dummy_prefix: the token for " " (U+2581 for a SentencePiece vocabulary).
    if (!text.empty() && add_space_prefix_) push_symbol(spm_ ? kSpmSpace : std::string_view(" "), ids);
    // UTF-8 codepoints exactly as llama2.c cuts them: a byte plus up to 3 following
    // continuation bytes (a stray continuation byte starts a symbol of its own).
    for (size_t i = 0; i < text.size();) {
      size_t j = i + 1;
      while (j < text.size() && (static_cast<unsigned char>(text[j]) & 0xC0) == 0x80 && j - i < 4) ++j;
      push_symbol(text.substr(i, j - i), ids);
      i = j;
    }
    merge(ids);
    if (eos && eos_ >= 0) ids.push_back(eos_);
    return ids;
  }

  std::string decode_token(int32_t prev, int32_t token) const override {
    if (token < 0 || token >= vocab_size())
      throw error(fmt::format("{} tokenizer: token id {} is outside the vocabulary of {} tokens",
                              kind_, token, vocab_size()));
    // BOS/EOS (and control pieces) are markers, not text: llama2.c never prints BOS, and its
    // "\n<s>\n" pieces would break decode(encode(x)) == x.
    if (token == bos_ || token == eos_) return {};
    if (!types_.empty() && types_[token] == kTypeControl) return {};
    if (byte_value_[token] >= 0) return std::string(1, static_cast<char>(byte_value_[token]));
    std::string piece = pieces_[token];
    if (spm_) {
      std::string out;
      for (size_t i = 0; i < piece.size();) {
        if (piece.compare(i, kSpmSpace.size(), kSpmSpace) == 0) {
          out.push_back(' ');
          i += kSpmSpace.size();
        } else {
          out.push_back(piece[i++]);
        }
      }
      piece = std::move(out);
    }
    if (prev == bos_ && bos_ >= 0 && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    return piece;
  }

 private:
  // One initial symbol: its piece if the vocabulary has it, else its bytes' fallback tokens.
  void push_symbol(std::string_view sym, std::vector<int32_t>& ids) const {
    auto it = lookup_.find(sym);
    if (it != lookup_.end()) {
      ids.push_back(it->second);
      return;
    }
    if (spm_) {
      bool all = true;
      for (char c : sym) all = all && byte_id_[static_cast<unsigned char>(c)] >= 0;
      if (!all && unk_id_ >= 0) {
        ids.push_back(unk_id_);
        return;
      }
    }
    for (char c : sym) {
      const int b = static_cast<unsigned char>(c);
      if (byte_id_[b] < 0)
        throw error(fmt::format("{} tokenizer: no token for byte 0x{:02X} (expected {} in a vocabulary "
                                "of {} tokens)", kind_, b,
                                spm_ ? fmt::format("a <0x{:02X}> piece or <unk>", b)
                                     : fmt::format("byte-fallback id {}", b + 3),
                                vocab_size()));
      ids.push_back(byte_id_[b]);
    }
  }

  // The merge id of (a, b) and its score, or -1 when the pair never merges: not in the
  // vocabulary, or a score not above llama2.c's starting best of -1e10 (NaN included).
  int32_t pair_id(int32_t a, int32_t b, std::string& buf) const {
    buf.assign(pieces_[a]);
    buf.append(pieces_[b]);
    auto it = lookup_.find(std::string_view(buf));
    if (it == lookup_.end()) return -1;
    return scores_[it->second] > -1e10f ? it->second : -1;
  }

  // Highest score first, leftmost among equal scores (llama2.c's strict ">" scan).
  void merge(std::vector<int32_t>& ids) const {
    std::string buf;
    detail::merge_pairs<float>(ids, [&](int32_t a, int32_t b, float* score, int32_t* id) {
      *id = pair_id(a, b, buf);
      if (*id < 0) return false;
      *score = scores_[*id];  // never NaN here (pair_id)
      return true;
    });
  }

  std::string kind_;
  bool spm_;
  bool add_space_prefix_;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int32_t> types_;
  int bos_, eos_;
  int unk_id_ = -1;
  std::unordered_map<std::string_view, int32_t> lookup_;
  std::array<int32_t, 256> byte_id_{};
  std::vector<int16_t> byte_value_;
};

class byte_tokenizer final : public tokenizer {
 public:
  std::string kind() const override { return "bytes"; }
  int vocab_size() const override { return 258; }
  int bos_id() const override { return 256; }
  int eos_id() const override { return 257; }
  std::vector<int32_t> encode(std::string_view text, bool bos, bool eos) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size() + 2);
    if (bos) ids.push_back(256);
    for (char c : text) ids.push_back(static_cast<unsigned char>(c));
    if (eos) ids.push_back(257);
    return ids;
  }
  std::string decode_token(int32_t, int32_t token) const override {
    if (token < 0 || token >= 258)
      throw error(fmt::format("bytes tokenizer: token id {} is outside 0..257", token));
    return token < 256 ? std::string(1, static_cast<char>(token)) : std::string();
  }
  bool gpt2_vocabulary(std::vector<std::string>& tokens, std::vector<std::string>& merges) const override {
    tokens.clear();
    for (int b = 0; b < 256; ++b) tokens.push_back(gpt2_byte_symbol(static_cast<uint8_t>(b)));
    tokens.push_back("<s>");   // 256: BOS
    tokens.push_back("</s>");  // 257: EOS
    merges.clear();
    return true;
  }
};

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::unique_ptr<tokenizer> load_llama2c_tokenizer(const std::string& path) {
  const std::string data = read_file(path, "llama2.c tokenizer");
  size_t pos = 0;
  auto read_i32 = [&](const char* field, size_t index) {
    if (data.size() - pos < 4)
      throw error(fmt::format("{}: llama2.c tokenizer ends inside {} of token {} (offset {}, "
                              "expected 4 more bytes, file has {})", path, field, index, pos,
                              data.size()));
    int32_t v;
    std::memcpy(&v, data.data() + pos, 4);
    pos += 4;
    return v;
  };
  if (data.size() < 4)
    throw error(fmt::format("{}: llama2.c tokenizer is {} bytes (expected an int32 max_token_length "
                            "header, then tokens)", path, data.size()));
  int32_t max_len;
  std::memcpy(&max_len, data.data(), 4);
  pos = 4;
  if (max_len <= 0 || max_len > (1 << 16))
    throw error(fmt::format("{}: llama2.c tokenizer max_token_length = {} (expected 1..65536)", path,
                            max_len));
  std::vector<std::string> pieces;
  std::vector<float> scores;
  while (pos < data.size()) {
    const size_t index = pieces.size();
    const int32_t bits = read_i32("the score", index);
    float score;
    std::memcpy(&score, &bits, 4);
    const int32_t len = read_i32("the length", index);
    if (len < 0 || len > max_len)
      throw error(fmt::format("{}: llama2.c tokenizer token {} length = {} (expected 0..{}, the "
                              "header's max_token_length)", path, index, len, max_len));
    if (data.size() - pos < static_cast<size_t>(len))
      throw error(fmt::format("{}: llama2.c tokenizer ends inside the bytes of token {} (length {}, "
                              "{} bytes left)", path, index, len, data.size() - pos));
    pieces.emplace_back(data, pos, static_cast<size_t>(len));
    scores.push_back(score);
    pos += static_cast<size_t>(len);
  }
  if (pieces.size() < 3)
    throw error(fmt::format("{}: llama2.c tokenizer has {} tokens (expected at least <unk>, BOS 1 "
                            "and EOS 2)", path, pieces.size()));
  return std::make_unique<score_bpe_tokenizer>("llama2c", false, std::move(pieces), std::move(scores),
                                               std::vector<int32_t>{}, 1, 2, path);
}

std::unique_ptr<tokenizer> make_spm_vocab_tokenizer(std::vector<std::string> tokens,
                                                    std::vector<float> scores,
                                                    std::vector<int32_t> types, int bos_id,
                                                    int eos_id, bool add_space_prefix) {
  return std::make_unique<score_bpe_tokenizer>("spm-vocab", true, std::move(tokens), std::move(scores),
                                               std::move(types), bos_id, eos_id,
                                               "SentencePiece vocabulary", add_space_prefix);
}

std::unique_ptr<tokenizer> make_byte_tokenizer() { return std::make_unique<byte_tokenizer>(); }

bool is_byte_tokenizer_vocabulary(const std::vector<std::string>& tokens, const std::vector<std::string>& merges,
                                  int bos_id, int eos_id) {
  const byte_tokenizer bytes;
  std::vector<std::string> t, m;
  bytes.gpt2_vocabulary(t, m);
  return tokens == t && merges == m && bos_id == bytes.bos_id() && eos_id == bytes.eos_id();
}

std::unique_ptr<tokenizer> load_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  if (path == "bytes") return make_byte_tokenizer();
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path dir(path);
    return load_gpt2_tokenizer((dir / "encoder.json").string(), (dir / "vocab.bpe").string());
  }
  if (ends_with(path, "encoder.json")) {
    const fs::path p(path);
    return load_gpt2_tokenizer(path, (p.parent_path() / "vocab.bpe").string());
  }
  if (ends_with(path, ".model")) return load_sentencepiece_tokenizer(path);
  if (ends_with(path, ".bin")) return load_llama2c_tokenizer(path);
  throw error(fmt::format("{}: cannot tell the tokenizer kind (expected 'bytes', a directory or "
                          "encoder.json with vocab.bpe beside it (GPT-2), a SentencePiece *.model or "
                          "a llama2.c *.bin)", path));
}

}  // namespace lowbit
