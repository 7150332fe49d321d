// Writes the fuzzers' seed corpora (docs/robustness.md "Fuzzing"): small valid inputs of every
// kind, made with lowbit's own writers from synthetic models, plus the shipped llama2.c
// tokenizer. Usage: make_seeds DATA_DIR OUT_DIR  ->  OUT_DIR/{spec,safetensors,gguf,llama2c,model}/
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "lowbit/base/error.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/kernels/quantize.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

std::vector<uint8_t> read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_all(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// fuzz_llama2c's and fuzz_model's framing: selector byte(s) before the file.
std::vector<uint8_t> framed(std::vector<uint8_t> prefix, const std::vector<uint8_t>& body) {
  prefix.insert(prefix.end(), body.begin(), body.end());
  return prefix;
}

model_config tiny(architecture arch) {
  model_config c;
  c.arch = arch;
  c.dim = 32, c.hidden_dim = 32, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = arch == architecture::llama ? 1 : 2;
  c.vocab_size = 16, c.max_seq_len = 8;
  return c;
}

// A llama2.c checkpoint of c (the reader's layout, src/io/llama2c.cpp), values from an LCG.
std::vector<uint8_t> llama2c_bytes(const model_config& c) {
  const int64_t d = c.dim, L = c.n_layers, hd = c.head_dim(), kv = int64_t(c.n_kv_heads) * hd, hid = c.hidden_dim,
                V = c.vocab_size;
  const int64_t floats = V * d + L * d + L * d * d + 2 * L * kv * d + L * d * d + L * d + 3 * L * hid * d + d +
                         int64_t(c.max_seq_len) * hd;
  const int32_t h[7] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len};
  std::vector<uint8_t> b(28 + floats * 4);
  std::memcpy(b.data(), h, 28);
  uint32_t s = 12345;
  for (int64_t i = 0; i < floats; ++i) {
    s = s * 1664525u + 1013904223u;
    const float v = (float(s >> 8) / float(1 << 24) - 0.5f) * 0.1f;
    std::memcpy(b.data() + 28 + 4 * i, &v, 4);
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: make_seeds DATA_DIR OUT_DIR\n");
    return 2;
  }
  const fs::path data = argv[1], out = argv[2];
  try {
    for (const char* d : {"spec", "safetensors", "gguf", "llama2c", "model"}) fs::create_directories(out / d);
    // Specs: every named format, and the grammar's pieces.
    int n = 0;
    auto spec_seed = [&](const std::string& s) { write_all(out / "spec" / ("s" + std::to_string(n++)), {s.begin(), s.end()}); };
    for (const auto& f : named_formats()) spec_seed(f.name);
    for (const char* s : {"int4/g32:e4m3@mse~sr:3", "e3m2(bias=4,subnormals=off)/c:bf16", "uint4/g64@p99.9",
                          "pow0.5(e2m1/g16:e8m0@rceil)", "lut(-1,-0.5,0,0.5,1)/g8~up", "e5m2(overflow=inf)/t",
                          "nf4/g64:fp16", "flex8+4", "e4m3fnuz/g17:pow2~odd", "q4_k~sr"})
      spec_seed(s);

    // Models: tiny Llama and GPT-2, as safetensors (F32, F16, packed codes), GGUF and llama2.c.
    for (architecture arch : {architecture::llama, architecture::gpt2}) {
      const std::string a = arch == architecture::llama ? "llama" : "gpt2";
      const model m = synthesize_model(tiny(arch), 7);
      const fs::path st = out / ("tmp-" + a + ".safetensors");
      for (const char* dtype : {"F32", "F16"}) {
        save_safetensors_model(m, st.string(), dtype);
        const auto body = read_all(st), config = read_all(st.parent_path() / "config.json");
        write_all(out / "safetensors" / (a + "-" + dtype), body);
        std::vector<uint8_t> prefix = {0, uint8_t(config.size() & 0xff), uint8_t(config.size() >> 8)};
        prefix.insert(prefix.end(), config.begin(), config.end());
        write_all(out / "model" / (a + "-" + dtype + ".safetensors"), framed(prefix, body));
      }
      std::map<std::string, quantized_tensor> packed;
      for (const auto& [name, t] : m.tensors)
        if (t.shape.size() == 2 && name.find("blk.0.ffn") == 0)
          packed[name] = quantize(t.data.data(), t.shape[0], t.shape[1], parse_format(a == "llama" ? "int4/g16" : "nvfp4"));
      save_safetensors_model(m, st.string(), "F32", packed);
      write_all(out / "safetensors" / (a + "-packed"), read_all(st));
      const fs::path gg = out / ("tmp-" + a + ".gguf");
      save_gguf_model(m, gg.string());
      write_all(out / "gguf" / a, read_all(gg));
      write_all(out / "model" / (a + ".gguf"), framed({1, 0, 0}, read_all(gg)));
      fs::remove(st);
      fs::remove(st.parent_path() / "config.json");
      fs::remove(gg);
    }
    const auto l2c = llama2c_bytes(tiny(architecture::llama));
    write_all(out / "llama2c" / "model", framed({0}, l2c));
    write_all(out / "model" / "llama2c.bin", framed({2, 0, 0}, l2c));
    write_all(out / "llama2c" / "tok512", framed({1}, read_all(data / "llama2c" / "tok512.bin")));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
