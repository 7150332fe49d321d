// The model readers as `eval --model` reaches them (load_model: the container by extension, the
// config checks, the name maps, the tokenizer beside the file), on arbitrary bytes. Layout of an
// input: byte 0 chooses the container (0 safetensors with a config.json, 1 GGUF, 2 llama2.c),
// bytes 1..2 the length L of the config.json (safetensors), then L bytes of config, then the
// model file.
#include <cstring>

#include "fuzz_input.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/io/model_io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowbit;
  if (size < 3) return 0;
  const int kind = data[0] % 3;
  size_t config_len = size_t(data[1]) | size_t(data[2]) << 8;
  if (config_len > size - 3) config_len = size - 3;
  const uint8_t* body = data + 3 + config_len;
  const size_t body_size = size - 3 - config_len;
  std::string path;
  if (kind == 0) {
    fuzz::write_input(data + 3, config_len, "config.json");
    path = fuzz::write_input(body, body_size, "model.safetensors");
  } else {
    path = fuzz::write_input(body, body_size, kind == 1 ? "model.gguf" : "model.bin");
  }
  try {
    const model m = load_model(path);
    (void)m;
  } catch (const error&) {
  }
  return 0;
}
