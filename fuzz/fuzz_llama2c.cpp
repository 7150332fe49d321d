// The llama2.c checkpoint and tokenizer readers on arbitrary bytes. The first byte chooses:
// even -> the model reader (load_llama2c), odd -> the tokenizer reader, which then encodes and
// decodes a fixed text.
#include "fuzz_input.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/text/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowbit;
  if (size < 1) return 0;
  const bool tokenizer_file = data[0] & 1;
  const std::string path = fuzz::write_input(data + 1, size - 1, tokenizer_file ? "tok.bin" : "model.bin");
  try {
    if (tokenizer_file) {
      auto tok = load_llama2c_tokenizer(path);
      const auto ids = tok->encode("Once upon a time, 42 \xc3\xa9t\xc3\xa9s ran.", true, true);
      (void)tok->decode(ids);
    } else {
      (void)load_llama2c(path);
    }
  } catch (const error&) {
  }
  return 0;
}
