// Memory-bounded quantization (quantize_to_shards): the model read block by block from its file,
// each finished block in a shard, the output assembled from the shards. It must write the bytes
// the in-memory pipeline writes, resume a killed run without redoing finished blocks, and never
// use a damaged shard.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "lowbit/engine/model.hpp"
#include "lowbit/engine/eval.hpp"
#include "lowbit/error.hpp"
#include "lowbit/ptq/pipeline.hpp"

using namespace lowbit;
namespace fs = std::filesystem;

namespace {

const std::string data_dir = LOWBIT_DATA_DIR;
const std::string stories_path = data_dir + "/llama2c/stories260K.bin";

const std::vector<int32_t>& story_ids() {
  static const std::vector<int32_t> ids = [] {
    std::ifstream in(data_dir + "/text/tinystories_val_sample.txt");
    std::stringstream ss;
    ss << in.rdbuf();
    const auto tok = load_llama2c_tokenizer(data_dir + "/llama2c/tok512.bin");
    auto all = encode_documents(*tok, ss.str());
    all.resize(40000);
    return all;
  }();
  return ids;
}

ptq::quantize_options small_options(ptq::method how, const std::string& fmt) {
  ptq::quantize_options o;
  o.how = how;
  o.weights = parse_format(fmt);
  o.calib_samples = 4;
  o.calib_ctx = 64;
  return o;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string fresh_dir(const std::string& name) {
  const std::string dir = testing::TempDir() + "lowbit_stream_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// The in-memory pipeline and the writers as `lowbit quantize` used them before streaming.
void write_in_memory(model m, const ptq::quantize_options& o, const std::string& out) {
  const ptq::quantize_report r = ptq::quantize_model(m, story_ids(), o);
  if (out.size() > 5 && out.substr(out.size() - 5) == ".gguf") {
    gguf_export ex;
    ex.packed = r.packed;
    plan_gguf_export(m, ggml_type_for_format(o.weights), ex);
    save_gguf_model(m, out, ex);
  } else {
    std::map<std::string, quantized_tensor> packed;
    pack_linear_weights(m, o.weights, r.packed, packed);
    save_safetensors_model(m, out, "F32", packed);
  }
}

// The streaming pipeline and the writers as `lowbit quantize` uses them now.
ptq::quantize_report write_streamed(const tensor_reader& source, ptq::quantize_options o, const std::string& dir,
                                    const std::string& out, const ptq::ptq_progress& progress = {}) {
  o.checkpoint_dir = dir;
  const ptq::quantize_report r = ptq::quantize_to_shards(source, story_ids(), o, progress);
  const auto quantized = ptq::read_quantized_shards(source, dir);
  if (out.size() > 5 && out.substr(out.size() - 5) == ".gguf") {
    std::map<std::string, uint32_t> types;
    gguf_export_types(quantized->header, ggml_type_for_format(o.weights), types);
    save_gguf_model(*quantized, out, types);
  } else {
    save_safetensors_model(*quantized, out, "F32", true);
  }
  return r;
}

uint64_t inode(const std::string& path) {
  struct stat st {};
  ::stat(path.c_str(), &st);
  return st.st_ino;
}

}  // namespace

// Byte for byte the same file, for methods with their own codes (GPTQ), with folded scales
// (AWQ, SmoothQuant + equalization), data-free RTN, both output formats, and a GGUF input.
TEST(Streaming, WritesTheBytesOfTheInMemoryPipeline) {
  const std::string dir = fresh_dir("equal");
  struct run_case {
    ptq::method how;
    std::string fmt, ext;
    bool equalize;
  };
  const std::vector<run_case> cases = {{ptq::method::gptq, "int4/g32", ".safetensors", false},
                                       {ptq::method::awq, "q4_0", ".gguf", false},
                                       {ptq::method::smoothquant, "int4/g32", ".safetensors", true},
                                       {ptq::method::rtn, "int4/g32~sr:3", ".safetensors", false}};
  const auto source = open_model_reader(stories_path);
  for (const run_case& c : cases) {
    SCOPED_TRACE(std::string(ptq::method_name(c.how)) + " " + c.fmt + c.ext);
    auto o = small_options(c.how, c.fmt);
    o.equalize = c.equalize;
    const std::string a = dir + "/memory" + c.ext, b = dir + "/streamed" + c.ext;
    write_in_memory(load_model(stories_path), o, a);
    fs::remove_all(dir + "/shards");
    const auto r = write_streamed(*source, o, dir + "/shards", b);
    EXPECT_EQ(r.resumed_at_block, 0);
    EXPECT_TRUE(r.packed.empty());  // the shards hold the codes
    const std::string bytes_a = file_bytes(a), bytes_b = file_bytes(b);
    EXPECT_GT(bytes_a.size(), 100000u);
    EXPECT_TRUE(bytes_a == bytes_b) << a << " and " << b << " differ";
  }

  // A GGUF input (F32) streams too, and gives what its in-memory load gives.
  save_gguf_model(load_model(stories_path), dir + "/input.gguf");
  const auto o = small_options(ptq::method::gptq, "int4/g32");
  write_in_memory(load_model(dir + "/input.gguf"), o, dir + "/gguf_memory.safetensors");
  fs::remove_all(dir + "/shards");
  write_streamed(*open_model_reader(dir + "/input.gguf"), o, dir + "/shards", dir + "/gguf_streamed.safetensors");
  EXPECT_TRUE(file_bytes(dir + "/gguf_memory.safetensors") == file_bytes(dir + "/gguf_streamed.safetensors"));
  fs::remove_all(dir);
}

// GPT-2 (biases, the fused qkv) with bias correction and LoRC (weights that stay float).
TEST(Streaming, Gpt2WithBiasCorrectionAndLorcWritesTheSameBytes) {
  const std::string dir = fresh_dir("gpt2");
  model_config c;
  c.arch = architecture::gpt2;
  c.dim = 64, c.hidden_dim = 256, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.vocab_size = 512;
  c.max_seq_len = 128;
  save_safetensors_model(synthesize_model(c, 3), dir + "/gpt2.safetensors");
  auto o = small_options(ptq::method::gptq, "int4/g32");
  o.bias_correct = true;
  o.lorc_rank = 4;
  write_in_memory(load_model(dir + "/gpt2.safetensors"), o, dir + "/memory.safetensors");
  const auto source = open_model_reader(dir + "/gpt2.safetensors");
  write_streamed(*source, o, dir + "/shards", dir + "/streamed.safetensors");
  EXPECT_TRUE(file_bytes(dir + "/memory.safetensors") == file_bytes(dir + "/streamed.safetensors"));
  const model q = load_model(dir + "/streamed.safetensors");
  EXPECT_NE(q.get("blk.1.ffn_down.bias").data, load_model(dir + "/gpt2.safetensors").get("blk.1.ffn_down.bias").data);
  fs::remove_all(dir);
}

// A run killed in block 3 resumes there, keeps the finished shards (not rewritten) and writes
// the same file as an uninterrupted run; another run's shards are refused.
TEST(Streaming, KilledRunResumesAtTheNextBlock) {
  const std::string dir = fresh_dir("resume");
  const auto source = open_model_reader(stories_path);
  const auto o = small_options(ptq::method::gptq, "int4/g32~sr:3");  // stochastic: tensor_id resumes too
  write_streamed(*source, o, dir + "/whole", dir + "/whole.safetensors");

  struct interrupted {};
  int64_t seen = 0;
  try {  // stop in the middle of block 3 (2 passes x 4 windows per block)
    write_streamed(*source, o, dir + "/killed", dir + "/killed.safetensors", [&](int64_t, int64_t) {
      if (++seen == 3 * 8 + 5) throw interrupted{};
    });
    FAIL() << "not interrupted";
  } catch (const interrupted&) {
  }
  EXPECT_FALSE(fs::exists(dir + "/killed.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/killed/blk.2.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/killed/blk.3.safetensors"));
  const uint64_t shard0 = inode(dir + "/killed/blk.0.safetensors");
  const auto r = write_streamed(*source, o, dir + "/killed", dir + "/killed.safetensors");
  EXPECT_EQ(r.resumed_at_block, 3);
  EXPECT_EQ(inode(dir + "/killed/blk.0.safetensors"), shard0);  // reused, not rewritten
  EXPECT_EQ(r.layers.size(), size_t(source->header.config.n_layers) * 7);
  EXPECT_TRUE(file_bytes(dir + "/whole.safetensors") == file_bytes(dir + "/killed.safetensors"));

  auto other = o;
  other.seed = 99;
  other.checkpoint_dir = dir + "/killed";
  try {
    ptq::quantize_to_shards(*source, story_ids(), other);
    FAIL() << "another run's checkpoint accepted";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("another run"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// A shard damaged on disk (a flipped byte, a truncated file) stops the run with an error naming
// it, on resume and when the output is assembled; it is never used.
TEST(Streaming, DamagedShardIsRefused) {
  const std::string dir = fresh_dir("damaged");
  const auto source = open_model_reader(stories_path);
  auto o = small_options(ptq::method::rtn, "int4/g32");
  o.checkpoint_dir = dir + "/shards";
  ptq::quantize_to_shards(*source, story_ids(), o);
  const std::string shard1 = dir + "/shards/blk.1.safetensors";
  std::string bytes = file_bytes(shard1);
  auto expect_refused = [&](const std::string& what) {
    SCOPED_TRACE(what);
    try {
      const auto quantized = ptq::read_quantized_shards(*source, dir + "/shards");
      quantized->read("blk.1.ffn_up.weight");
      FAIL() << "damaged shard used";
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find("blk.1.safetensors"), std::string::npos) << e.what();
    }
  };
  {
    std::string flipped = bytes;
    flipped[flipped.size() - 100] ^= 0x10;
    std::ofstream(shard1, std::ios::binary | std::ios::trunc) << flipped;
    expect_refused("flipped byte");
  }
  {
    std::ofstream(shard1, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 2);
    expect_refused("truncated");
  }
  // Resuming a run whose finished shard is damaged: refused as well.
  auto gptq = small_options(ptq::method::gptq, "int4/g32");
  gptq.checkpoint_dir = dir + "/gptq";
  struct interrupted {};
  int64_t seen = 0;
  try {
    ptq::quantize_to_shards(*source, story_ids(), gptq, [&](int64_t, int64_t) {
      if (++seen == 2 * 8 + 1) throw interrupted{};
    });
  } catch (const interrupted&) {
  }
  const std::string gptq0 = dir + "/gptq/blk.0.safetensors";
  bytes = file_bytes(gptq0);
  bytes[bytes.size() - 8] ^= 0x01;
  std::ofstream(gptq0, std::ios::binary | std::ios::trunc) << bytes;
  try {
    ptq::quantize_to_shards(*source, story_ids(), gptq);
    FAIL() << "damaged shard resumed";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}
