// A SentencePiece .model through libsentencepiece: encode is the processor's (its normalizer,
// its model type); decode_token mirrors SentencePieceProcessor::Decode piece by piece.
#include <sentencepiece_processor.h>

#include <cstdio>

#include <fmt/format.h>

#include "lowbit/text/tokenizer.hpp"
#include "lowbit/base/error.hpp"

namespace lowbit {
namespace {

class sentencepiece_tokenizer final : public tokenizer {
 public:
  explicit sentencepiece_tokenizer(const std::string& path) {
    const auto status = sp_.Load(path);
    if (!status.ok())
      throw error(fmt::format("{}: cannot load SentencePiece model: {}", path, status.ToString()));
    if (sp_.GetPieceSize() <= 0)
      throw error(fmt::format("{}: SentencePiece model has no pieces", path));
  }

  std::string kind() const override { return "sentencepiece"; }
  int vocab_size() const override { return sp_.GetPieceSize(); }
  int bos_id() const override { return sp_.bos_id(); }
  int eos_id() const override { return sp_.eos_id(); }

  std::vector<int32_t> encode(std::string_view text, bool bos, bool eos) const override {
    std::vector<int> pieces;
    const auto status = sp_.Encode(text, &pieces);
    if (!status.ok()) throw error(fmt::format("sentencepiece encode: {}", status.ToString()));
    std::vector<int32_t> ids;
    ids.reserve(pieces.size() + 2);
    if (bos && sp_.bos_id() >= 0) ids.push_back(sp_.bos_id());  // a model without BOS adds none
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    if (eos && sp_.eos_id() >= 0) ids.push_back(sp_.eos_id());
    return ids;
  }

  // Control pieces (BOS, EOS) are invisible, <unk> reads " \u2047 ", byte pieces are their
  // byte, U+2581 is a space; the first visible piece (prev < 0 or a control piece) loses its
  // leading U+2581, as SentencePieceProcessor::Decode does with a dummy prefix.
  std::string decode_token(int32_t prev, int32_t token) const override {
    if (token < 0 || token >= vocab_size())
      throw error(fmt::format("sentencepiece tokenizer: token id {} is outside the vocabulary of {} "
                              "tokens", token, vocab_size()));
    if (sp_.IsControl(token)) return {};
    if (sp_.IsUnknown(token)) return " \xE2\x81\x87 ";
    const std::string& piece = sp_.IdToPiece(token);
    if (sp_.IsByte(token)) {  // "<0xXX>"
      unsigned v = 0;
      if (piece.size() == 6 && std::sscanf(piece.c_str() + 3, "%2x", &v) == 1)
        return std::string(1, static_cast<char>(v));
    }
    constexpr std::string_view space = "\xE2\x96\x81";
    const bool first = prev < 0 || prev >= vocab_size() || sp_.IsControl(prev);
    std::string out;
    size_t i = 0;
    if (first && piece.compare(0, space.size(), space) == 0) i = space.size();
    while (i < piece.size()) {
      if (piece.compare(i, space.size(), space) == 0) {
        out.push_back(' ');
        i += space.size();
      } else {
        out.push_back(piece[i++]);
      }
    }
    return out;
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::unique_ptr<tokenizer> load_sentencepiece_tokenizer(const std::string& model_path) {
  return std::make_unique<sentencepiece_tokenizer>(model_path);
}

}  // namespace lowbit
