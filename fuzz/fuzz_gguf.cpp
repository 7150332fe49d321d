// The GGUF reader on arbitrary bytes: header, metadata, tensor table, every tensor decoded, and
// the tokenizer a GGUF carries.
#include "fuzz_input.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/io/gguf.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowbit;
  const std::string path = fuzz::write_input(data, size, "input.gguf");
  try {
    gguf_file f(path);
    for (const auto& t : f.tensors()) {
      try {
        (void)f.read_f32(t.name);
      } catch (const error&) {
      }
    }
  } catch (const error&) {
  }
  return 0;
}
