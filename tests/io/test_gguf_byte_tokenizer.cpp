// A GGUF written for a byte-tokenizer model (lowbit synth, train --tokenizer bytes) carries that
// tokenizer as llama.cpp reads it: tokenizer.ggml.model "gpt2", the 256 bytes in GPT-2's
// byte-symbol spelling at ids 0..255 and no merges (so BPE leaves every byte its own token), BOS
// "<s>" = 256 and EOS "</s>" = 257 as control tokens; lowbit reads it back as the byte tokenizer.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/io/gguf.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/text/tokenizer.hpp"
#include "tests/cli_run.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

// GPT-2's bytes_to_unicode (Radford et al. 2019, encoder.py), written out here on its own: the
// printable bytes '!'..'~', 0xA1..0xAC, 0xAE..0xFF keep their code point, the other 68 take
// U+0100, U+0101, ... in byte order. As UTF-8.
std::string gpt2_symbol(int b) {
  static const std::vector<uint32_t> cps = [] {
    std::vector<uint32_t> v(256);
    uint32_t next = 0x100;
    for (int i = 0; i < 256; ++i) {
      const bool printable = (i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF);
      v[i] = printable ? uint32_t(i) : next++;
    }
    return v;
  }();
  const uint32_t cp = cps[b];
  if (cp < 0x80) return std::string(1, char(cp));
  return {char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))};
}

}  // namespace

TEST(GgufByteTokenizer, WrittenAsLlamaCppReadsItAndReadBackAsTheByteTokenizer) {
  const fs::path dir = lowbit::testing::scratch_path("lowbit_gguf_bytes");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "m.gguf").string();
  const auto synth = lowbit::testing::run_lowbit("synth --dim 64 --layers 1 --heads 4 --ctx 32 -o " + path, "", true);
  ASSERT_EQ(synth.code, 0) << synth.out;

  const gguf_file f(path);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  const std::vector<std::string> tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 258u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(tokens[b], gpt2_symbol(b)) << "byte " << b;
  EXPECT_EQ(tokens[32], "\xC4\xA0");  // the space: U+0120, GPT-2's 'Ġ'
  EXPECT_EQ(tokens[256], "<s>");
  EXPECT_EQ(tokens[257], "</s>");
  EXPECT_TRUE(f.get_string_array("tokenizer.ggml.merges").empty());
  const std::vector<int64_t> types = f.get_int_array("tokenizer.ggml.token_type");
  ASSERT_EQ(types.size(), 258u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(types[b], 1) << "byte " << b;  // normal
  EXPECT_EQ(types[256], 3);  // control
  EXPECT_EQ(types[257], 3);
  EXPECT_EQ(f.get_int("tokenizer.ggml.bos_token_id"), 256);
  EXPECT_EQ(f.get_int("tokenizer.ggml.eos_token_id"), 257);
  const gguf_kv* add_bos = f.find_kv("tokenizer.ggml.add_bos_token");
  ASSERT_NE(add_bos, nullptr);
  EXPECT_TRUE(add_bos->value.get<bool>());

  // Read back: the byte tokenizer, by the model and by the GGUF's own vocabulary alike.
  const model m = load_model(path);
  EXPECT_EQ(m.tokenizer.kind, "bytes");
  model by_vocabulary = m;
  by_vocabulary.tokenizer = {"gguf", path};
  const auto reference = make_byte_tokenizer();
  std::vector<std::unique_ptr<tokenizer>> read_back;
  read_back.push_back(tokenizer_for_model(m));
  read_back.push_back(tokenizer_for_model(by_vocabulary));
  const std::vector<std::string> texts = {"Once upon a time", "  two  spaces\tand a tab\n",
                                          "caf\xC3\xA9 \xE2\x96\x81 \xF0\x9F\x98\x80",
                                          std::string("\x00\x01\xFF", 3), "<s></s>", ""};
  for (const auto& tok : read_back) {
    EXPECT_EQ(tok->vocab_size(), 258);
    EXPECT_EQ(tok->bos_id(), 256);
    EXPECT_EQ(tok->eos_id(), 257);
    for (const std::string& text : texts) {
      EXPECT_EQ(tok->encode(text, true, true), reference->encode(text, true, true)) << text;
      EXPECT_EQ(tok->decode(tok->encode(text, false, false)), text);
    }
  }
  fs::remove_all(dir);
}

// A gpt2 vocabulary that is not exactly the byte tokenizer's (one merge more) is not taken for it.
TEST(GgufByteTokenizer, OnlyTheExactByteVocabularyIsRecognised) {
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(gpt2_symbol(b));
  tokens.push_back("<s>");
  tokens.push_back("</s>");
  EXPECT_TRUE(is_byte_tokenizer_vocabulary(tokens, {}, 256, 257));
  EXPECT_FALSE(is_byte_tokenizer_vocabulary(tokens, {"a b"}, 256, 257));
  EXPECT_FALSE(is_byte_tokenizer_vocabulary(tokens, {}, 257, 256));
  tokens[65] = "a";
  EXPECT_FALSE(is_byte_tokenizer_vocabulary(tokens, {}, 256, 257));
}
