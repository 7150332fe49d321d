// Tokenizers: text <-> token ids.
//   llama2c      : llama2.c's tokenizer.bin (int32 max_token_length, then per token: f32 score,
//                  int32 length, bytes) — score-ordered BPE merges with <0xXX> byte fallback,
//                  exactly llama2.c's encode(text, bos, eos) including the dummy-prefix space.
//   spm vocab    : the same algorithm over a SentencePiece vocabulary given as tokens + scores
//                  (+ types), e.g. GGUF's tokenizer.ggml.* metadata.
//   gpt2         : byte-level BPE from encoder.json + vocab.bpe, GPT-2's pre-tokenizer regex
//                  (PCRE2 with Unicode classes); BOS = EOS = <|endoftext|> (50256, docs/conventions.md §15).
//   sentencepiece: a .model file through libsentencepiece.
//   bytes        : 256 byte tokens, BOS = 256, EOS = 257 (lowbit synth, docs/conventions.md §19).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lowbit {

class tokenizer {
 public:
  virtual ~tokenizer() = default;
  virtual std::string kind() const = 0;
  virtual int vocab_size() const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
  virtual std::vector<int32_t> encode(std::string_view text, bool bos, bool eos) const = 0;
  // The text of `token` when it follows `prev` (llama2.c strips the leading space after BOS).
  // BOS/EOS (and control pieces) decode to "" in every kind; an id outside the vocabulary throws.
  virtual std::string decode_token(int32_t prev, int32_t token) const = 0;
  // Concatenates decode_token(prev, id), with prev = -1 before the first id.
  std::string decode(const std::vector<int32_t>& ids) const;

  // The vocabulary as SentencePiece/GGUF write it (tokenizer.ggml.tokens / scores / token_type,
  // spaces as U+2581, types 1 normal, 2 unknown, 3 control, 6 byte), for tokenizers that have
  // one (llama2c, spm-vocab); false otherwise. Lets a GGUF export carry its tokenizer.
  struct spm_vocabulary {
    std::vector<std::string> tokens;
    std::vector<float> scores;
    std::vector<int32_t> types;
    int bos = -1, eos = -1, unk = -1;
    bool add_space_prefix = true;  // SentencePiece's add_dummy_prefix (GGUF tokenizer.ggml.add_space_prefix)
  };
  virtual bool sentencepiece_vocabulary(spm_vocabulary&) const { return false; }
  // GPT-2 byte-level BPE: tokens in byte-symbol spelling by id, merges "a b" by rank.
  virtual bool gpt2_vocabulary(std::vector<std::string>& tokens, std::vector<std::string>& merges) const {
    return false;
  }
};

std::unique_ptr<tokenizer> load_llama2c_tokenizer(const std::string& path);
// add_space_prefix: SentencePiece's add_dummy_prefix, a U+2581 before the text (true for Llama 1/2;
// a GGUF says tokenizer.ggml.add_space_prefix = false where the model's tokenizer does not).
std::unique_ptr<tokenizer> make_spm_vocab_tokenizer(std::vector<std::string> tokens,
                                                    std::vector<float> scores,
                                                    std::vector<int32_t> types, int bos_id,
                                                    int eos_id, bool add_space_prefix = true);
std::unique_ptr<tokenizer> load_gpt2_tokenizer(const std::string& encoder_json,
                                               const std::string& vocab_bpe);
// The same from vectors (GGUF's tokenizer.ggml.tokens / merges); `where` names the source.
std::unique_ptr<tokenizer> make_gpt2_tokenizer(std::vector<std::string> tokens, std::vector<std::string> merges,
                                               const std::string& where);
std::unique_ptr<tokenizer> load_sentencepiece_tokenizer(const std::string& model_path);
// GPT-2's spelling of byte b (bytes_to_unicode, as UTF-8): tokenizer.ggml.tokens of a gpt2 GGUF.
std::string gpt2_byte_symbol(uint8_t b);
// The byte tokenizer exports itself as a gpt2 vocabulary without merges (ids 0..255: the byte
// symbols; 256 "<s>", 257 "</s>"): llama.cpp's BPE then encodes any text to exactly its bytes,
// as lowbit does (a SentencePiece "llama" vocabulary of <0xXX> tokens would not: llama.cpp
// rewrites spaces as U+2581 before the byte fallback).
std::unique_ptr<tokenizer> make_byte_tokenizer();
// Whether a gpt2 vocabulary (tokens, merges, BOS/EOS ids) is the byte tokenizer's export: a GGUF
// written for a byte-tokenizer model reads back as make_byte_tokenizer().
bool is_byte_tokenizer_vocabulary(const std::vector<std::string>& tokens, const std::vector<std::string>& merges,
                                  int bos_id, int eos_id);

// By what the path is: a directory or encoder.json (gpt2, vocab.bpe beside it), *.model
// (sentencepiece), *.bin (llama2c), "bytes". Throws lowbit::error naming the file otherwise.
std::unique_ptr<tokenizer> load_tokenizer(const std::string& path);

}  // namespace lowbit
