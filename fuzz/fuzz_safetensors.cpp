// The safetensors reader on arbitrary bytes: the header parse and validation, every tensor's
// float read, and the packed-codes description (model files' "lowbit.packed").
#include "fuzz_input.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowbit;
  const std::string path = fuzz::write_input(data, size, "input.safetensors");
  try {
    safetensors_file f(path);
    for (const auto& t : f.tensors()) {
      try {
        (void)f.read_f32(t.name);
      } catch (const error&) {
      }
    }
    try {
      (void)load_packed_tensors(path);
    } catch (const error&) {
    }
  } catch (const error&) {
  }
  return 0;
}
