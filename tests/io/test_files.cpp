// safetensors and GGUF readers/writers: the shipped GGUF, round trips of every dtype / kv type /
// tensor type, hand-computed ggml blocks, exact fp16/bf16 conversions against independent
// references, hostile files (truncations, byte flips, huge counts, lying headers) that must load
// or throw lowbit::error and nothing else, and the atomic writer.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/io/gguf.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "tests/data.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

const std::string kShippedGguf = lowbit_test::data_path("gguf/llama-2-tiny-random.gguf");

// A scratch directory removed at the end of the test; in /dev/shm where there is one (the
// corruption tests write thousands of variants).
fs::path scratch_base() {
  std::error_code ec;
  if (fs::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0) return "/dev/shm";
  return fs::temp_directory_path();
}

struct scratch {
  fs::path dir;
  explicit scratch(const std::string& tag) {
    dir = scratch_base() / ("lowbit_test_files_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const uint8_t* p, size_t n) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(p), static_cast<std::streamsize>(n));
}
void write_bytes(const std::string& path, const std::vector<uint8_t>& b) { write_bytes(path, b.data(), b.size()); }

uint32_t bits_of(float x) { return std::bit_cast<uint32_t>(x); }

// ---- independent conversions (double arithmetic, no bit tricks shared with the library) ----
double ref_half_value(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 0) v = std::ldexp(m, -24);
  else if (e == 31) v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else v = std::ldexp(m + 1024, e - 25);
  return (h & 0x8000) ? -v : v;
}

// Nearest half to x, ties to the even code, overflow to Inf (IEEE RNE).
uint16_t ref_float_to_half(float x) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(x));
  if (a >= 65520.0) return sign | 0x7c00;
  // largest code c <= 0x7bff with value(c) <= a (values grow with the code)
  int lo = 0, hi = 0x7bff;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (ref_half_value(static_cast<uint16_t>(mid)) <= a) lo = mid;
    else hi = mid - 1;
  }
  const double v0 = ref_half_value(static_cast<uint16_t>(lo));
  const double v1 = lo == 0x7bff ? 65536.0 : ref_half_value(static_cast<uint16_t>(lo + 1));
  int c = lo;
  if (a - v0 > v1 - a || (a - v0 == v1 - a && (lo & 1))) c = lo + 1;
  return static_cast<uint16_t>(sign | c);
}

double ref_bf16_mag(uint32_t c) {  // magnitude of bf16 code c (no sign); 0x7f80 -> 2^128
  const int e = static_cast<int>(c >> 7), m = static_cast<int>(c & 127);
  return e == 0 ? std::ldexp(m, -133) : std::ldexp(128 + m, e - 134);
}

uint16_t ref_float_to_bf16(float x) {
  const uint32_t b = bits_of(x);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000);
  if (std::isinf(x)) return sign | 0x7f80;
  const uint32_t t = (b & 0x7fffffff) >> 16;
  const double a = std::fabs(static_cast<double>(x));
  const double v0 = ref_bf16_mag(t), v1 = ref_bf16_mag(t + 1);
  uint32_t c = t;
  if (a - v0 > v1 - a || (a - v0 == v1 - a && (t & 1))) c = t + 1;
  return static_cast<uint16_t>(sign | c);
}

float ref_bf16_to_float(uint16_t h) {
  const double v = (h & 0x7f80) == 0x7f80 ? ((h & 0x7f) ? NAN : INFINITY) : ref_bf16_mag(h & 0x7fff);
  return static_cast<float>((h & 0x8000) ? -v : v);
}

// Same value bit for bit, NaN matching any NaN.
bool same_bits(float a, float b) { return (std::isnan(a) && std::isnan(b)) || bits_of(a) == bits_of(b); }
// Same bits, except that ggml's MXFP4 decodes the E2M1 code -0 as +0.
bool same_bits_but_zero_sign(float a, float b) { return same_bits(a, b) || (a == 0 && b == 0); }

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// ---- load-or-throw harness ----
// Loads and, if it loads, reads every tensor. Returns true when it loaded; a lowbit::error is a
// refusal; any other exception fails the test.
bool st_loads(const std::string& path, const std::string& variant) {
  try {
    safetensors_file f(path);
    for (const auto& t : f.tensors()) {
      if (t.dtype == st_dtype::f32 || t.dtype == st_dtype::f16 || t.dtype == st_dtype::bf16 || t.dtype == st_dtype::f64) {
        const auto v = f.read_f32(t.name);
        EXPECT_EQ(static_cast<int64_t>(v.size()), t.numel()) << variant;
      } else {
        volatile uint8_t sink = 0;
        const uint8_t* p = f.raw(t);
        for (uint64_t i = 0; i < t.end - t.begin; ++i) sink = sink + p[i];
      }
    }
    return true;
  } catch (const lowbit::error&) {
    return false;
  } catch (const std::exception& e) {
    ADD_FAILURE() << variant << ": threw a non-lowbit exception: " << e.what();
  } catch (...) {
    ADD_FAILURE() << variant << ": threw a non-std exception";
  }
  return false;
}

bool gguf_loads(const std::string& path, const std::string& variant) {
  try {
    gguf_file f(path);
    for (const auto& t : f.tensors()) {
      const auto v = f.read_f32(t.name);
      EXPECT_EQ(static_cast<int64_t>(v.size()), t.numel()) << variant;
    }
    return true;
  } catch (const lowbit::error&) {
    return false;
  } catch (const std::exception& e) {
    ADD_FAILURE() << variant << ": threw a non-lowbit exception: " << e.what();
  } catch (...) {
    ADD_FAILURE() << variant << ": threw a non-std exception";
  }
  return false;
}

template <typename T>
void poke(std::vector<uint8_t>& b, size_t at, T v) {
  if (at + sizeof(T) <= b.size()) std::memcpy(b.data() + at, &v, sizeof(T));
}

// Position of the length-prefixed string s (its length field) in b, or npos.
size_t find_lp_string(const std::vector<uint8_t>& b, const std::string& s) {
  std::vector<uint8_t> pat(8 + s.size());
  const uint64_t n = s.size();
  std::memcpy(pat.data(), &n, 8);
  std::memcpy(pat.data() + 8, s.data(), s.size());
  const auto it = std::search(b.begin(), b.end(), pat.begin(), pat.end());
  return it == b.end() ? std::string::npos : static_cast<size_t>(it - b.begin());
}

// Writes the GGUF used by the round-trip and corruption tests; returns the source data.
struct gguf_fixture {
  std::vector<float> a, b, c, d, e, f, g;
};

gguf_fixture write_test_gguf(const std::string& path, uint32_t alignment = 32) {
  gguf_fixture fx;
  gguf_writer w;
  w.add_string("general.architecture", "llama");
  w.add_kv({"k.u8", gguf_type::u8, gguf_type::u32, 200});
  w.add_kv({"k.i8", gguf_type::i8, gguf_type::u32, -100});
  w.add_kv({"k.u16", gguf_type::u16, gguf_type::u32, 60000});
  w.add_kv({"k.i16", gguf_type::i16, gguf_type::u32, -30000});
  w.add_u32("k.u32", 4000000000u);
  w.add_kv({"k.i32", gguf_type::i32, gguf_type::u32, -2000000000});
  w.add_f32("k.f32", 1e-5f);
  w.add_bool("k.bool", true);
  w.add_string("k.string", "h\xc3\xa9llo \"quoted\"");
  w.add_kv({"k.u64", gguf_type::u64, gguf_type::u32, uint64_t{18446744073709551615ull}});
  w.add_kv({"k.i64", gguf_type::i64, gguf_type::u32, int64_t{-9000000000000000000ll}});
  w.add_kv({"k.f64", gguf_type::f64, gguf_type::u32, 0.1});
  w.add_string_array("k.strings", {"<unk>", "<s>", "</s>", "", "\xe2\x96\x81the"});
  w.add_f32_array("k.f32s", {0.0f, -1.5f, 3.25f});
  w.add_i32_array("k.i32s", {-1, 0, 2147483647});
  w.add_kv({"k.u8s", gguf_type::array, gguf_type::u8, nlohmann::json::array({0, 255})});
  w.add_kv({"k.i16s", gguf_type::array, gguf_type::i16, nlohmann::json::array({-32768, 32767})});
  w.add_kv({"k.u64s", gguf_type::array, gguf_type::u64, nlohmann::json::array({0, uint64_t{1} << 63})});
  w.add_kv({"k.f64s", gguf_type::array, gguf_type::f64, nlohmann::json::array({0.5, -1e300})});
  w.add_kv({"k.bools", gguf_type::array, gguf_type::boolean, nlohmann::json::array({true, false})});
  w.add_kv({"k.empty", gguf_type::array, gguf_type::i64, nlohmann::json::array()});
  fx.a = random_floats(3 * 64, 1);
  fx.b = random_floats(2 * 64, 2, 0.05f);
  fx.c = random_floats(2 * 64, 3, 300.0f);
  fx.d = random_floats(2 * 3 * 64, 4);
  fx.d[5] = 0.0f;
  fx.d[70] = -1e-9f;  // rounds to a signed zero in q8_0/q4_0/mxfp4
  fx.e = random_floats(4 * 64, 5, 0.01f);
  fx.e[33] = std::numeric_limits<float>::quiet_NaN();  // a NaN group (NaN scale in q8_0/q4_0)
  fx.f = random_floats(2 * 96, 6, 3.0f);
  fx.g = random_floats(5, 7);
  w.add_tensor("t.f32", {3, 64}, fx.a.data(), ggml_type::f32);
  w.add_tensor("t.f16", {2, 64}, fx.b.data(), ggml_type::f16);
  w.add_tensor("t.bf16", {2, 64}, fx.c.data(), ggml_type::bf16);
  w.add_tensor("t.q8_0", {2, 3, 64}, fx.d.data(), ggml_type::q8_0);
  w.add_tensor("t.q4_0", {4, 64}, fx.e.data(), ggml_type::q4_0);
  w.add_tensor("t.mxfp4", {2, 96}, fx.f.data(), ggml_type::mxfp4);
  w.add_tensor("t.vec", {5}, fx.g.data(), ggml_type::f32);
  w.write(path, alignment);
  return fx;
}

}  // namespace

// ---- conversions ------------------------------------------------------------------------------------
TEST(FilesConversions, HalfAndBf16MatchIndependentReference) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float v = fp16_to_f32(static_cast<uint16_t>(h));
    const double r = ref_half_value(static_cast<uint16_t>(h));
    if (std::isnan(r)) {
      ASSERT_TRUE(std::isnan(v)) << h;
    } else {
      ASSERT_EQ(bits_of(v), bits_of(static_cast<float>(r))) << h;
      ASSERT_EQ(f32_to_fp16(v), h) << h;  // every half survives the round trip
    }
    const float bv = bf16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(bv)) {
      ASSERT_TRUE(std::isnan(ref_bf16_to_float(static_cast<uint16_t>(h)))) << h;
    } else {
      ASSERT_EQ(bits_of(bv), bits_of(ref_bf16_to_float(static_cast<uint16_t>(h)))) << h;
      ASSERT_EQ(f32_to_bf16(bv), h) << h;
    }
  }
  // Midpoints between neighbouring halves (ties) and the floats next to them.
  for (uint32_t c = 0; c < 0x7c00; ++c) {
    const double m = (ref_half_value(static_cast<uint16_t>(c)) +
                      (c == 0x7bff ? 65536.0 : ref_half_value(static_cast<uint16_t>(c + 1)))) / 2;
    const float mf = static_cast<float>(m);
    ASSERT_EQ(static_cast<double>(mf), m);
    for (float x : {mf, std::nextafter(mf, 0.0f), std::nextafter(mf, INFINITY), -mf}) {
      ASSERT_EQ(f32_to_fp16(x), ref_float_to_half(x)) << x;
      ASSERT_EQ(f32_to_bf16(x), ref_float_to_bf16(x)) << x;
    }
  }
  // Random bit patterns over the whole float range.
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    const float x = std::bit_cast<float>(static_cast<uint32_t>(rng()));
    if (std::isnan(x)) {
      EXPECT_EQ(f32_to_fp16(x), 0x7e00);
      EXPECT_EQ(f32_to_bf16(x), 0x7fc0);
      continue;
    }
    ASSERT_EQ(f32_to_fp16(x), ref_float_to_half(x)) << x;
    ASSERT_EQ(f32_to_bf16(x), ref_float_to_bf16(x)) << x;
  }
  EXPECT_EQ(f32_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_fp16(65519.99f), 0x7bff);
  EXPECT_EQ(f32_to_fp16(65520.0f), 0x7c00);
  EXPECT_EQ(f32_to_fp16(0x1p-25f), 0x0000);
  EXPECT_EQ(f32_to_fp16(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds past bf16's max
}

// ---- the shipped GGUF -------------------------------------------------------------------------------
TEST(GgufShipped, LlamaTinyRandom) {
  gguf_file f(kShippedGguf);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.embedding_length"), 8);
  EXPECT_EQ(f.get_int("llama.block_count"), 1);
  EXPECT_EQ(f.get_int("llama.feed_forward_length"), 32);
  EXPECT_EQ(f.get_int("llama.attention.head_count"), 2);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv"), 2);
  EXPECT_EQ(f.get_int("llama.rope.dimension_count"), 4);
  EXPECT_EQ(f.get_int("llama.context_length"), 4096);
  EXPECT_FLOAT_EQ(static_cast<float>(f.get_float("llama.attention.layer_norm_rms_epsilon")), 1e-5f);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f.get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(f.get_int("tokenizer.ggml.eos_token_id"), 2);
  EXPECT_EQ(f.get_int("tokenizer.ggml.unknown_token_id"), 0);
  const auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 32000u);
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[2], "</s>");
  EXPECT_EQ(f.get_float_array("tokenizer.ggml.scores").size(), 32000u);
  EXPECT_EQ(f.get_int_array("tokenizer.ggml.token_type").size(), 32000u);
  EXPECT_THROW(f.get_int("general.architecture"), lowbit::error);
  EXPECT_THROW(f.get_string("no.such.key"), lowbit::error);

  struct expect_t {
    const char* name;
    ggml_type type;
    std::vector<int64_t> shape;  // lowbit order
  };
  const std::vector<expect_t> expected = {
      {"token_embd.weight", ggml_type::f16, {32000, 8}},   {"blk.0.attn_q.weight", ggml_type::f16, {8, 8}},
      {"blk.0.attn_k.weight", ggml_type::f16, {8, 8}},     {"blk.0.attn_v.weight", ggml_type::f16, {8, 8}},
      {"blk.0.attn_output.weight", ggml_type::f16, {8, 8}}, {"blk.0.ffn_gate.weight", ggml_type::f16, {32, 8}},
      {"blk.0.ffn_up.weight", ggml_type::f16, {32, 8}},    {"blk.0.ffn_down.weight", ggml_type::f16, {8, 32}},
      {"blk.0.attn_norm.weight", ggml_type::f32, {8}},     {"blk.0.ffn_norm.weight", ggml_type::f32, {8}},
      {"output_norm.weight", ggml_type::f32, {8}},         {"output.weight", ggml_type::f16, {32000, 8}},
  };
  ASSERT_EQ(f.tensors().size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const gguf_tensor_info& t = f.tensors()[i];
    EXPECT_EQ(t.name, expected[i].name);
    EXPECT_EQ(t.type, expected[i].type) << t.name;
    EXPECT_EQ(t.shape(), expected[i].shape) << t.name;
    EXPECT_EQ(t.offset % 32, 0u) << t.name;
    const auto v = f.read_f32(t.name);
    ASSERT_EQ(static_cast<int64_t>(v.size()), t.numel());
    const uint8_t* raw = f.raw(t);
    for (size_t k = 0; k < v.size(); ++k) {
      ASSERT_TRUE(std::isfinite(v[k])) << t.name << " " << k;
      if (t.type == ggml_type::f16) {
        uint16_t h;
        std::memcpy(&h, raw + 2 * k, 2);
        ASSERT_EQ(bits_of(v[k]), bits_of(static_cast<float>(ref_half_value(h)))) << t.name << " " << k;
      }
    }
  }
  const auto norm = f.read_f32("output_norm.weight");
  for (float x : norm) EXPECT_EQ(x, 1.0f);
  EXPECT_THROW(f.read_f32("no.such.tensor"), lowbit::error);
}

// ---- safetensors round trip -------------------------------------------------------------------------
TEST(SafetensorsRoundTrip, AllFloatDtypesAndMetadata) {
  scratch s("st_rt");
  const std::string path = s / "m.safetensors";
  std::vector<float> a = random_floats(6 * 7, 11);
  std::vector<float> b = random_floats(3 * 5, 12, 1000.0f);
  std::vector<float> c = random_floats(33, 13, 1e-3f);
  std::vector<float> d = random_floats(4, 14);
  const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-8f, 70000.0f, 3.0e38f, 0x1p-140f};
  b.insert(b.end(), std::begin(specials), std::end(specials));  // 15 + 9 = 24 = 4 x 6
  c.insert(c.end(), std::begin(specials), std::end(specials));  // 33 + 9 = 42
  const float scalar = 2.5f;
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"lowbit.note", "h\xc3\xa9 \"x\"\n"}};
  write_safetensors(path,
                    {{"layer.a", st_dtype::f32, {6, 7}, a.data()},
                     {"layer.b", st_dtype::f16, {4, 6}, b.data()},
                     {"c", st_dtype::bf16, {2, 3, 7}, c.data()},
                     {"d64", st_dtype::f64, {4}, d.data()},
                     {"scalar", st_dtype::f32, {}, &scalar},
                     {"empty", st_dtype::f16, {0, 3}, nullptr}},
                    meta);
  const auto bytes = read_bytes(path);
  uint64_t hn = 0;
  std::memcpy(&hn, bytes.data(), 8);
  EXPECT_EQ((8 + hn) % 8, 0u);
  EXPECT_EQ(bytes[8], '{');

  safetensors_file f(path);
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.tensors().size(), 6u);
  const char* order[] = {"layer.a", "layer.b", "c", "d64", "scalar", "empty"};
  uint64_t expect_begin = 0;
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(f.tensors()[i].name, order[i]);
    EXPECT_EQ(f.tensors()[i].begin, expect_begin);  // contiguous, in the given order
    expect_begin = f.tensors()[i].end;
  }
  EXPECT_EQ(f.get("c").shape, (std::vector<int64_t>{2, 3, 7}));
  EXPECT_EQ(f.get("c").dtype, st_dtype::bf16);
  EXPECT_EQ(f.get("scalar").numel(), 1);
  EXPECT_EQ(f.get("empty").numel(), 0);

  const auto ra = f.read_f32("layer.a");
  ASSERT_EQ(ra.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(bits_of(ra[i]), bits_of(a[i]));
  const auto rb = f.read_f32("layer.b");
  const uint8_t* rawb = f.raw(f.get("layer.b"));
  for (size_t i = 0; i < b.size(); ++i) {
    uint16_t h;
    std::memcpy(&h, rawb + 2 * i, 2);
    if (std::isnan(b[i])) {
      EXPECT_TRUE(std::isnan(rb[i]));
      continue;
    }
    EXPECT_EQ(h, ref_float_to_half(b[i])) << i;
    EXPECT_EQ(bits_of(rb[i]), bits_of(static_cast<float>(ref_half_value(ref_float_to_half(b[i]))))) << i;
  }
  const auto rc = f.read_f32("c");
  for (size_t i = 0; i < c.size(); ++i) {
    if (std::isnan(c[i])) {
      EXPECT_TRUE(std::isnan(rc[i]));
      continue;
    }
    EXPECT_EQ(bits_of(rc[i]), bits_of(ref_bf16_to_float(ref_float_to_bf16(c[i])))) << i;
  }
  const auto rd = f.read_f32("d64");
  for (size_t i = 0; i < d.size(); ++i) EXPECT_EQ(bits_of(rd[i]), bits_of(d[i]));
  EXPECT_EQ(f.read_f32("scalar"), std::vector<float>{2.5f});
  EXPECT_TRUE(f.read_f32("empty").empty());
  EXPECT_THROW(f.get("nope"), lowbit::error);

  // Writer refusals.
  EXPECT_THROW(write_safetensors(s / "x.safetensors", {{"a", st_dtype::f32, {2}, a.data()}, {"a", st_dtype::f32, {2}, a.data()}}),
               lowbit::error);
  EXPECT_THROW(write_safetensors(s / "x.safetensors", {{"a", st_dtype::f32, {-1}, a.data()}}), lowbit::error);
  EXPECT_THROW(write_safetensors(s / "x.safetensors", {{"a", st_dtype::i32, {2}, a.data()}}), lowbit::error);
  EXPECT_THROW(write_safetensors(s / "x.safetensors", {{"a", st_dtype::f32, {2}, nullptr}}), lowbit::error);
  EXPECT_THROW(write_safetensors(s / "x.safetensors", {{"\xff", st_dtype::f32, {2}, a.data()}}), lowbit::error);
  EXPECT_FALSE(fs::exists(s / "x.safetensors"));
}

TEST(SafetensorsReader, IntegerDtypesAndF64FromHandWrittenFile) {
  scratch s("st_hand");
  // Header without padding (data unaligned), integer dtypes, F64 values beyond float's range.
  const std::string hdr =
      R"({"i":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},"f":{"dtype":"F64","shape":[3],"data_offsets":[8,32]},)"
      R"("u":{"dtype":"U8","shape":[1],"data_offsets":[32,33]}})";
  std::vector<uint8_t> b(8);
  const uint64_t n = hdr.size();
  std::memcpy(b.data(), &n, 8);
  b.insert(b.end(), hdr.begin(), hdr.end());
  const int32_t iv[2] = {-7, 9};
  const double fv[3] = {1e300, -0.1, 0x1.fffffefffffffp127};  // Inf, RNE(-0.1), FLT_MAX
  b.insert(b.end(), reinterpret_cast<const uint8_t*>(iv), reinterpret_cast<const uint8_t*>(iv) + 8);
  b.insert(b.end(), reinterpret_cast<const uint8_t*>(fv), reinterpret_cast<const uint8_t*>(fv) + 24);
  b.push_back(200);
  write_bytes(s / "h.safetensors", b);
  safetensors_file f(s / "h.safetensors");
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(f.get("i").dtype, st_dtype::i32);
  int32_t got[2];
  std::memcpy(got, f.raw(f.get("i")), 8);
  EXPECT_EQ(got[0], -7);
  EXPECT_EQ(got[1], 9);
  EXPECT_EQ(f.raw(f.get("u"))[0], 200);
  try {
    f.read_f32("i");
    ADD_FAILURE() << "read_f32 of I32 should throw";
  } catch (const lowbit::error& e) {
    EXPECT_NE(std::string(e.what()).find("'i'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("I32"), std::string::npos) << e.what();
  }
  const auto r = f.read_f32("f");
  EXPECT_EQ(r[0], INFINITY);
  EXPECT_EQ(r[1], -0.1f);
  EXPECT_EQ(r[2], std::numeric_limits<float>::max());
}

// ---- GGUF round trip --------------------------------------------------------------------------------
TEST(GgufRoundTrip, AllKvTypesAndTensorTypes) {
  scratch s("gguf_rt");
  for (uint32_t alignment : {32u, 64u}) {
    const std::string path = s / ("m" + std::to_string(alignment) + ".gguf");
    const gguf_fixture fx = write_test_gguf(path, alignment);
    gguf_file f(path);
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.alignment(), alignment);
    // Metadata: insertion order, types and values.
    const std::vector<std::string> keys = {"general.architecture", "k.u8", "k.i8", "k.u16", "k.i16", "k.u32", "k.i32",
                                           "k.f32", "k.bool", "k.string", "k.u64", "k.i64", "k.f64", "k.strings",
                                           "k.f32s", "k.i32s", "k.u8s", "k.i16s", "k.u64s", "k.f64s", "k.bools",
                                           "k.empty"};
    ASSERT_EQ(f.metadata().size(), keys.size() + (alignment != 32 ? 1 : 0));
    for (size_t i = 0; i < keys.size(); ++i) EXPECT_EQ(f.metadata()[i].key, keys[i]);
    if (alignment != 32) {
      EXPECT_EQ(f.get_int("general.alignment"), alignment);
    }
    EXPECT_EQ(f.find_kv("k.u8")->type, gguf_type::u8);
    EXPECT_EQ(f.get_int("k.u8"), 200);
    EXPECT_EQ(f.get_int("k.i8"), -100);
    EXPECT_EQ(f.get_int("k.u16"), 60000);
    EXPECT_EQ(f.get_int("k.i16"), -30000);
    EXPECT_EQ(f.get_int("k.u32"), 4000000000ll);
    EXPECT_EQ(f.get_int("k.i32"), -2000000000);
    EXPECT_EQ(f.find_kv("k.f32")->type, gguf_type::f32);
    EXPECT_EQ(f.get_float("k.f32"), static_cast<double>(1e-5f));
    EXPECT_EQ(f.find_kv("k.bool")->value, true);
    EXPECT_EQ(f.get_string("k.string"), "h\xc3\xa9llo \"quoted\"");
    EXPECT_EQ(f.find_kv("k.u64")->value.get<uint64_t>(), 18446744073709551615ull);
    EXPECT_THROW(f.get_int("k.u64"), lowbit::error);  // beyond int64
    EXPECT_EQ(f.get_int("k.i64"), -9000000000000000000ll);
    EXPECT_EQ(f.get_float("k.f64"), 0.1);
    EXPECT_EQ(f.get_string_array("k.strings"), (std::vector<std::string>{"<unk>", "<s>", "</s>", "", "\xe2\x96\x81the"}));
    EXPECT_EQ(f.get_float_array("k.f32s"), (std::vector<float>{0.0f, -1.5f, 3.25f}));
    EXPECT_EQ(f.get_int_array("k.i32s"), (std::vector<int64_t>{-1, 0, 2147483647}));
    EXPECT_EQ(f.find_kv("k.i32s")->array_type, gguf_type::i32);
    EXPECT_EQ(f.get_int_array("k.u8s"), (std::vector<int64_t>{0, 255}));
    EXPECT_EQ(f.find_kv("k.u8s")->array_type, gguf_type::u8);
    EXPECT_EQ(f.get_int_array("k.i16s"), (std::vector<int64_t>{-32768, 32767}));
    EXPECT_EQ(f.find_kv("k.u64s")->value[1].get<uint64_t>(), uint64_t{1} << 63);
    EXPECT_EQ(f.find_kv("k.f64s")->value, nlohmann::json::array({0.5, -1e300}));
    EXPECT_EQ(f.find_kv("k.bools")->value, nlohmann::json::array({true, false}));
    EXPECT_EQ(f.find_kv("k.empty")->array_type, gguf_type::i64);
    EXPECT_TRUE(f.find_kv("k.empty")->value.empty());
    EXPECT_THROW(f.get_string_array("k.f32s"), lowbit::error);

    // Tensors: shapes in lowbit order, ggml ne reversed, aligned offsets.
    ASSERT_EQ(f.tensors().size(), 7u);
    for (const auto& t : f.tensors()) {
      EXPECT_EQ(t.offset % alignment, 0u) << t.name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(f.raw(t)) % alignment, 0u) << t.name;  // mmap is page-aligned
    }
    EXPECT_EQ(f.get("t.q8_0").ne, (std::vector<int64_t>{64, 3, 2}));
    EXPECT_EQ(f.get("t.q8_0").shape(), (std::vector<int64_t>{2, 3, 64}));
    EXPECT_EQ(f.get("t.q8_0").bytes, 6u * 2 * 34);
    EXPECT_EQ(f.get("t.vec").shape(), (std::vector<int64_t>{5}));

    const auto ra = f.read_f32("t.f32");
    for (size_t i = 0; i < fx.a.size(); ++i) ASSERT_EQ(bits_of(ra[i]), bits_of(fx.a[i]));
    const auto rg = f.read_f32("t.vec");
    for (size_t i = 0; i < fx.g.size(); ++i) ASSERT_EQ(bits_of(rg[i]), bits_of(fx.g[i]));
    const auto rb = f.read_f32("t.f16");
    for (size_t i = 0; i < fx.b.size(); ++i)
      ASSERT_EQ(bits_of(rb[i]), bits_of(static_cast<float>(ref_half_value(ref_float_to_half(fx.b[i])))));
    const auto rc = f.read_f32("t.bf16");
    for (size_t i = 0; i < fx.c.size(); ++i) ASSERT_EQ(bits_of(rc[i]), bits_of(ref_bf16_to_float(ref_float_to_bf16(fx.c[i]))));

    // Quantized: read_f32 (ggml's dequantize_row_*) == lowbit dequantize(quantize(x)); the raw
    // blocks decode to exactly the quantized tensor lowbit made.
    struct qcase {
      const char* name;
      const char* fmt;
      ggml_type type;
      const std::vector<float>* x;
      int64_t rows, cols;
    };
    for (const qcase& qc : {qcase{"t.q8_0", "q8_0", ggml_type::q8_0, &fx.d, 6, 64},
                            qcase{"t.q4_0", "q4_0", ggml_type::q4_0, &fx.e, 4, 64},
                            qcase{"t.mxfp4", "mxfp4", ggml_type::mxfp4, &fx.f, 2, 96}}) {
      const quantized_tensor q = quantize(qc.x->data(), qc.rows, qc.cols, parse_format(qc.fmt));
      std::vector<float> want(qc.x->size());
      dequantize(q, want.data());
      const auto got = f.read_f32(qc.name);
      ASSERT_EQ(got.size(), want.size());
      int nan_count = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        if (qc.type == ggml_type::mxfp4) {
          ASSERT_TRUE(same_bits_but_zero_sign(got[i], want[i])) << qc.name << " " << i;
        } else {
          ASSERT_TRUE(same_bits(got[i], want[i])) << qc.name << " " << i << " " << got[i] << " vs " << want[i];
        }
        nan_count += std::isnan(got[i]);
      }
      EXPECT_EQ(nan_count, qc.type == ggml_type::q4_0 ? 32 : 0) << qc.name;  // the NaN group
      const gguf_tensor_info& t = f.get(qc.name);
      EXPECT_TRUE(decode_ggml_blocks(f.raw(t), qc.rows, qc.cols, qc.type) == q) << qc.name;
    }
  }

  // Writer refusals.
  gguf_writer w;
  w.add_u32("a", 1);
  EXPECT_THROW(w.add_u32("a", 2), lowbit::error);
  EXPECT_THROW(w.add_kv({"b", gguf_type::u8, gguf_type::u32, 256}), lowbit::error);
  EXPECT_THROW(w.add_kv({"b", gguf_type::i8, gguf_type::u32, "x"}), lowbit::error);
  EXPECT_THROW(w.add_kv({"b", gguf_type::array, gguf_type::array, nlohmann::json::array()}), lowbit::error);
  EXPECT_THROW(w.add_kv({"b", gguf_type::f32, gguf_type::u32, 1e300}), lowbit::error);
  const std::vector<float> x(64, 1.0f);
  EXPECT_THROW(w.add_tensor("t", {2, 30}, x.data(), ggml_type::q8_0), lowbit::error);  // rows not /32
  EXPECT_THROW(w.add_tensor("t", {0, 32}, x.data(), ggml_type::f32), lowbit::error);
  EXPECT_THROW(w.add_tensor("t", {1, 1, 1, 1, 32}, x.data(), ggml_type::f32), lowbit::error);
  EXPECT_THROW(w.add_tensor("t", {32}, x.data(), static_cast<ggml_type>(4)), lowbit::error);  // ggml's removed Q4_2
  w.add_tensor("t", {2, 32}, x.data(), ggml_type::q4_0);
  EXPECT_THROW(w.add_tensor("t", {2, 32}, x.data(), ggml_type::q4_0), lowbit::error);
  EXPECT_THROW(w.write(s / "bad.gguf", 3), lowbit::error);
  EXPECT_FALSE(fs::exists(s / "bad.gguf"));
  gguf_writer wrong_size;  // encoded blocks of another size than the type's: refused, no file
  wrong_size.add_tensor_deferred("t", {32}, ggml_type::q8_0, [] { return std::vector<uint8_t>(33); });
  EXPECT_THROW(wrong_size.write(s / "bad.gguf"), lowbit::error);
  EXPECT_FALSE(fs::exists(s / "bad.gguf"));
}

// ---- ggml blocks ------------------------------------------------------------------------------------
TEST(GgufBlocks, HandComputedBlocks) {
  scratch s("gguf_hand");
  // q4_0: d = 0.5 (fp16 0x3800); byte j = j | (15 - j) << 4:
  //   element j      = (j - 8) * 0.5            -> -4, -3.5, ..., 3.5
  //   element j + 16 = ((15 - j) - 8) * 0.5     -> 3.5, 3, ..., -4
  std::vector<uint8_t> q4 = {0x00, 0x38};
  for (int j = 0; j < 16; ++j) q4.push_back(static_cast<uint8_t>(j | (15 - j) << 4));
  const std::vector<float> q4_want = {-4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5, 0,  0.5,  1,  1.5,  2,  2.5,  3,  3.5,
                                      3.5, 3,   2.5, 2,   1.5, 1,   0.5, 0,   -0.5, -1, -1.5, -2, -2.5, -3, -3.5, -4};
  // q8_0: d = 0.25 (fp16 0x3400); q[j] = 4j - 64 -> x = j - 16; q[0] = -128 -> -32; q[31] = 127 -> 31.75
  std::vector<uint8_t> q8 = {0x00, 0x34};
  for (int j = 0; j < 32; ++j) q8.push_back(static_cast<uint8_t>(static_cast<int8_t>(j == 0 ? -128 : j == 31 ? 127 : 4 * j - 64)));
  std::vector<float> q8_want = {-32, -15, -14, -13, -12, -11, -10, -9, -8, -7, -6, -5, -4, -3, -2, -1,
                                0,   1,   2,   3,   4,   5,   6,   7,  8,  9,  10, 11, 12, 13, 14, 31.75};
  // mxfp4 block 0: e = 128 (2^1); byte j = j | j << 4, so elements j and j+16 are both E2M1(j) * 2:
  //   {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12} (code 8, E2M1 -0, is +0 as in ggml)
  // block 1: e = 0 (2^-127): byte j = 1 | 7 << 4 -> 0.5 * 2^-127 = 2^-128 and 6 * 2^-127 = 3 * 2^-126
  // block 2: e = 255 (ggml: 2^128 with no NaN): byte j = 1 | 2 << 4 -> 0.5 * 2^128 = 2^127, 1 * 2^128 = Inf
  // block 3: e = 1 (2^-126): byte j = 9 | 15 << 4 -> -0.5 * 2^-126 = -2^-127, -6 * 2^-126 = -3 * 2^-125
  std::vector<uint8_t> mx = {128};
  for (int j = 0; j < 16; ++j) mx.push_back(static_cast<uint8_t>(j | j << 4));
  mx.push_back(0);
  for (int j = 0; j < 16; ++j) mx.push_back(0x71);
  mx.push_back(255);
  for (int j = 0; j < 16; ++j) mx.push_back(0x21);
  mx.push_back(1);
  for (int j = 0; j < 16; ++j) mx.push_back(0xf9);
  std::vector<float> mx_want = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
                                0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  for (int j = 0; j < 16; ++j) mx_want.push_back(0x1p-128f);
  for (int j = 0; j < 16; ++j) mx_want.push_back(0x3p-126f);
  for (int j = 0; j < 16; ++j) mx_want.push_back(0x1p127f);
  for (int j = 0; j < 16; ++j) mx_want.push_back(INFINITY);
  for (int j = 0; j < 16; ++j) mx_want.push_back(-0x1p-127f);
  for (int j = 0; j < 16; ++j) mx_want.push_back(-0x3p-125f);

  gguf_writer w;
  w.add_tensor_deferred("q4", {32}, ggml_type::q4_0, [q4] { return q4; });
  w.add_tensor_deferred("q8", {32}, ggml_type::q8_0, [q8] { return q8; });
  w.add_tensor_deferred("mx", {4, 32}, ggml_type::mxfp4, [mx] { return mx; });
  w.write(s / "hand.gguf");
  gguf_file f(s / "hand.gguf");
  for (const auto& [name, want] : std::vector<std::pair<std::string, std::vector<float>>>{
           {"q4", q4_want}, {"q8", q8_want}, {"mx", mx_want}}) {
    const auto got = f.read_f32(name);
    ASSERT_EQ(got.size(), want.size()) << name;
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(bits_of(got[i]), bits_of(want[i])) << name << " " << i;
  }
  // The same blocks through lowbit's quantized_tensor: codes in lowbit's packing, scales as floats.
  const quantized_tensor q = decode_ggml_blocks(q4.data(), 1, 32, ggml_type::q4_0);
  EXPECT_EQ(q.scales, std::vector<float>{0.5f});
  EXPECT_EQ(q.zero_points, std::vector<int32_t>{8});
  EXPECT_EQ(q.code(0, 0), 0u);
  EXPECT_EQ(q.code(0, 1), 1u);
  EXPECT_EQ(q.code(0, 16), 15u);
  EXPECT_EQ(q.code(0, 31), 0u);
  std::vector<float> deq(32);
  dequantize(q, deq.data());
  for (int i = 0; i < 32; ++i) EXPECT_EQ(deq[i], q4_want[i]);
  const quantized_tensor m = decode_ggml_blocks(mx.data(), 4, 32, ggml_type::mxfp4);
  EXPECT_EQ(m.scales[0], 2.0f);
  EXPECT_EQ(m.scales[1], 0x1p-127f);
  EXPECT_TRUE(std::isnan(m.scales[2]));  // OCP: E8M0 0xFF is NaN
  EXPECT_EQ(m.scales[3], 0x1p-126f);
  EXPECT_EQ(encode_ggml_blocks(m, ggml_type::mxfp4), mx);
  EXPECT_EQ(encode_ggml_blocks(decode_ggml_blocks(q8.data(), 1, 32, ggml_type::q8_0), ggml_type::q8_0), q8);
}

TEST(GgufBlocks, EncodeDecodeRandomCodes) {
  std::mt19937 rng(99);
  const int64_t rows = 5, cols = 96;
  for (const auto& [fmt_name, type] : std::vector<std::pair<std::string, ggml_type>>{
           {"q8_0", ggml_type::q8_0}, {"q4_0", ggml_type::q4_0}, {"q4_1", ggml_type::q4_1}, {"q5_0", ggml_type::q5_0},
           {"q5_1", ggml_type::q5_1}, {"mxfp4", ggml_type::mxfp4}}) {
    const format fm = parse_format(fmt_name);
    // Random codes and scales -> blocks -> the same quantized tensor.
    quantized_tensor q = quantized_tensor::allocate(fm, rows, cols);
    for (auto& b : q.codes) b = static_cast<uint8_t>(rng());
    for (size_t g = 0; g < q.scales.size(); ++g) {
      if (type == ggml_type::mxfp4) {
        const int e = static_cast<int>(rng() % 256);
        q.scales[g] = e == 255 ? std::numeric_limits<float>::quiet_NaN() : std::ldexp(1.0f, e - 127);
      } else {
        uint16_t h;
        do h = static_cast<uint16_t>(rng());
        while ((h & 0x7c00) == 0x7c00 && (h & 0x3ff));  // any half but a NaN
        q.scales[g] = fp16_to_f32(h);
        if (type == ggml_type::q4_0) q.zero_points[g] = 8;
        if (type == ggml_type::q5_0) q.zero_points[g] = 16;
        if (type == ggml_type::q4_1 || type == ggml_type::q5_1) {  // the block's fp16 min
          do h = static_cast<uint16_t>(rng());
          while ((h & 0x7c00) == 0x7c00 && (h & 0x3ff));
          q.super_scales[g] = fp16_to_f32(h);
        }
      }
    }
    const std::vector<uint8_t> blocks = encode_ggml_blocks(q, type);
    ASSERT_EQ(blocks.size(), static_cast<size_t>(rows * cols / 32 * ggml_block_bytes(type)));
    EXPECT_TRUE(decode_ggml_blocks(blocks.data(), rows, cols, type) == q) << fmt_name;
    // Random blocks -> quantized tensor -> the same bytes; read_f32 == lowbit's dequantize.
    std::vector<uint8_t> raw(blocks.size());
    for (auto& b : raw) b = static_cast<uint8_t>(rng());
    const size_t bb = static_cast<size_t>(ggml_block_bytes(type));
    for (size_t off = 0; off < raw.size(); off += bb) {
      if (type == ggml_type::mxfp4) {
        if (raw[off] == 255) raw[off] = 254;  // ggml reads E8M0 0xFF as 2^128; lowbit as NaN
      } else {
        if ((raw[off + 1] & 0x7c) == 0x7c) raw[off + 1] &= 0x83;  // no Inf/NaN d
        if ((type == ggml_type::q4_1 || type == ggml_type::q5_1) && (raw[off + 3] & 0x7c) == 0x7c) raw[off + 3] &= 0x83;  // nor m
      }
    }
    const quantized_tensor d = decode_ggml_blocks(raw.data(), rows, cols, type);
    EXPECT_EQ(encode_ggml_blocks(d, type), raw) << fmt_name;
    scratch s("gguf_blocks");
    gguf_writer w;
    w.add_tensor_deferred("t", {rows, cols}, type, [raw] { return raw; });
    w.write(s / "b.gguf");
    gguf_file f(s / "b.gguf");
    const auto got = f.read_f32("t");
    std::vector<float> want(static_cast<size_t>(rows * cols));
    dequantize_ref(d, want.data());
    for (size_t i = 0; i < want.size(); ++i) {
      if (type == ggml_type::mxfp4) {
        ASSERT_TRUE(same_bits_but_zero_sign(got[i], want[i])) << fmt_name << " " << i;
      } else {
        ASSERT_EQ(bits_of(got[i]), bits_of(want[i])) << fmt_name << " " << i;
      }
    }
  }
  // Refusals: wrong layout, a scale the block cannot hold, rows that do not divide.
  const quantized_tensor q8 = quantize(std::vector<float>(64, 1.0f).data(), 1, 64, parse_format("q8_0"));
  EXPECT_THROW(encode_ggml_blocks(q8, ggml_type::q4_0), lowbit::error);
  EXPECT_THROW(encode_ggml_blocks(q8, ggml_type::f16), lowbit::error);
  quantized_tensor bad = q8;
  bad.scales[0] = 0.1f;  // not an fp16 value
  EXPECT_THROW(encode_ggml_blocks(bad, ggml_type::q8_0), lowbit::error);
  quantized_tensor mxq = quantize(std::vector<float>(32, 1.0f).data(), 1, 32, parse_format("mxfp4"));
  mxq.scales[0] = 3.0f;
  EXPECT_THROW(encode_ggml_blocks(mxq, ggml_type::mxfp4), lowbit::error);
  EXPECT_THROW(decode_ggml_blocks(nullptr, 1, 33, ggml_type::q8_0), lowbit::error);
  EXPECT_THROW(decode_ggml_blocks(nullptr, 1, 32, ggml_type::f32), lowbit::error);
}

// The K-quants' blocks: random bytes (finite fp16 super-scales) decode to a quantized tensor that
// encodes back to the same bytes, and read_f32 (ggml's dequantize_row_q*_K) is lowbit's
// dequantize of that tensor. The decode of each field against ggml's formulas is in
// tests/kernels/test_kquant.cpp.
TEST(GgufBlocks, KQuantRandomBlocksRoundTrip) {
  std::mt19937 rng(7);
  const int64_t rows = 3, cols = 512;
  for (const ggml_type type : {ggml_type::q2_k, ggml_type::q3_k, ggml_type::q4_k, ggml_type::q5_k, ggml_type::q6_k}) {
    const size_t bb = static_cast<size_t>(ggml_block_bytes(type));
    std::vector<uint8_t> raw(static_cast<size_t>(rows * cols / 256) * bb);
    for (auto& b : raw) b = static_cast<uint8_t>(rng());
    // The fp16 d (and dmin) of each block: where ggml_common.h puts them.
    const std::vector<size_t> halves = type == ggml_type::q2_k ? std::vector<size_t>{80, 82}
                                       : type == ggml_type::q3_k ? std::vector<size_t>{108}
                                       : type == ggml_type::q6_k ? std::vector<size_t>{208}
                                                                 : std::vector<size_t>{0, 2};
    for (size_t off = 0; off < raw.size(); off += bb)
      for (size_t h : halves)
        if ((raw[off + h + 1] & 0x7c) == 0x7c) raw[off + h + 1] &= 0x83;  // no Inf/NaN super-scale
    const quantized_tensor d = decode_ggml_blocks(raw.data(), rows, cols, type);
    EXPECT_EQ(d.fmt, ggml_type_format(type));
    EXPECT_EQ(encode_ggml_blocks(d, type), raw) << ggml_type_name(type);
    scratch s("gguf_kquant_blocks");
    gguf_writer w;
    w.add_tensor_deferred("t", {rows, cols}, type, [raw] { return raw; });
    w.write(s / "k.gguf");
    gguf_file f(s / "k.gguf");
    const auto got = f.read_f32("t");
    std::vector<float> want(static_cast<size_t>(rows * cols));
    dequantize_ref(d, want.data());
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(bits_of(got[i]), bits_of(want[i])) << ggml_type_name(type) << " " << i;
  }
}

// A file mixing types tensor by tensor, as llama.cpp's quantizer mixes them (Q4_K_M: Q4_K with
// Q6_K and Q5_0 / Q5_1 / Q8_0 where rows do not fit 256), written by lowbit's writer: every tensor
// reads back as lowbit's quantize-dequantize in that type's format, and its raw blocks decode to
// exactly the quantized tensor.
TEST(GgufBlocks, MixedTypesReadBack) {
  scratch s("gguf_mixed");
  struct entry {
    const char* name;
    ggml_type type;
    int64_t rows, cols;
    std::vector<float> x;
  };
  std::vector<entry> es = {{"blk.0.attn_q.weight", ggml_type::q4_k, 4, 512, {}},
                           {"blk.0.attn_v.weight", ggml_type::q6_k, 4, 256, {}},
                           {"blk.0.ffn_down.weight", ggml_type::q5_0, 3, 96, {}},
                           {"blk.1.ffn_down.weight", ggml_type::q5_1, 3, 96, {}},
                           {"blk.1.attn_k.weight", ggml_type::q8_0, 2, 64, {}},
                           {"blk.1.attn_q.weight", ggml_type::q2_k, 2, 256, {}},
                           {"blk.1.attn_output.weight", ggml_type::q3_k, 2, 256, {}},
                           {"blk.1.ffn_up.weight", ggml_type::q5_k, 2, 256, {}},
                           {"blk.1.ffn_gate.weight", ggml_type::q4_1, 2, 64, {}},
                           {"blk.1.attn_v.weight", ggml_type::q4_0, 2, 64, {}},
                           {"output_norm.weight", ggml_type::f32, 1, 64, {}}};
  gguf_writer w;
  uint32_t seed = 40;
  for (entry& e : es) {
    e.x = random_floats(static_cast<size_t>(e.rows * e.cols), seed++, 0.05f);
    w.add_tensor(e.name, {e.rows, e.cols}, e.x.data(), e.type);
  }
  w.write(s / "mixed.gguf");
  gguf_file f(s / "mixed.gguf");
  for (const entry& e : es) {
    const gguf_tensor_info& t = f.get(e.name);
    EXPECT_EQ(t.type, e.type) << e.name;
    EXPECT_EQ(t.bytes, static_cast<uint64_t>(e.rows * e.cols / ggml_block_size(e.type) * ggml_block_bytes(e.type))) << e.name;
    const auto got = f.read_f32(e.name);
    if (e.type == ggml_type::f32) {
      for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(bits_of(got[i]), bits_of(e.x[i])) << e.name;
      continue;
    }
    const quantized_tensor q = quantize(e.x.data(), e.rows, e.cols, ggml_type_format(e.type));
    std::vector<float> want(e.x.size());
    dequantize(q, want.data());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(bits_of(got[i]), bits_of(want[i])) << e.name << " " << i;
    EXPECT_TRUE(decode_ggml_blocks(f.raw(t), e.rows, e.cols, e.type) == q) << e.name;
  }
}

// ---- hostile files ----------------------------------------------------------------------------------
TEST(FilesCorruption, MissingEmptyAndNotAFile) {
  scratch s("corrupt_basic");
  EXPECT_THROW(safetensors_file(s / "missing.safetensors"), lowbit::error);
  EXPECT_THROW(gguf_file(s / "missing.gguf"), lowbit::error);
  write_bytes(s / "empty", std::vector<uint8_t>{});
  EXPECT_THROW(safetensors_file(s / "empty"), lowbit::error);
  EXPECT_THROW(gguf_file(s / "empty"), lowbit::error);
  EXPECT_THROW(safetensors_file(s.dir.string()), lowbit::error);  // a directory
  EXPECT_THROW(gguf_file(s.dir.string()), lowbit::error);
  try {
    gguf_file f(s / "missing.gguf");
  } catch (const lowbit::error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.gguf"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
  }
}

TEST(FilesCorruption, SafetensorsTruncatedFlippedAndLying) {
  scratch s("corrupt_st");
  const std::string good = s / "good.safetensors";
  const auto a = random_floats(4 * 8, 21), b = random_floats(16, 22);
  write_safetensors(good, {{"a", st_dtype::f32, {4, 8}, a.data()}, {"b", st_dtype::bf16, {2, 8}, b.data()},
                           {"c", st_dtype::f16, {16}, b.data()}},
                    {{"k", "v"}});
  const auto bytes = read_bytes(good);
  uint64_t hn = 0;
  std::memcpy(&hn, bytes.data(), 8);
  const std::string p = s / "v.safetensors";
  ASSERT_TRUE(st_loads(good, "good"));
  // Every truncation of the header region, then a stride through the data.
  for (size_t n = 0; n < bytes.size(); n += n < 8 + hn + 8 ? 1 : 7) {
    write_bytes(p, bytes.data(), n);
    EXPECT_FALSE(st_loads(p, "truncated at " + std::to_string(n))) << n;
  }
  // Seeded random byte flips (1-3 bytes), mostly in the header.
  std::mt19937 rng(2024);
  int loaded = 0;
  for (int i = 0; i < 1500; ++i) {
    auto v = bytes;
    const int k = 1 + static_cast<int>(rng() % 3);
    for (int j = 0; j < k; ++j) {
      const size_t at = rng() % 4 ? rng() % (8 + hn) : rng() % v.size();
      v[at] = rng() % 2 ? static_cast<uint8_t>(rng()) : static_cast<uint8_t>(v[at] ^ (1u << (rng() % 8)));
    }
    write_bytes(p, v);
    loaded += st_loads(p, "flip variant " + std::to_string(i));
  }
  EXPECT_GT(loaded, 0);  // flips in the data block (and padding) still load
  // Header lengths that lie.
  for (uint64_t n : {uint64_t{0}, hn + 1, uint64_t{bytes.size()}, ~uint64_t{0}, uint64_t{1} << 63}) {
    auto v = bytes;
    std::memcpy(v.data(), &n, 8);
    write_bytes(p, v);
    EXPECT_FALSE(st_loads(p, "header length " + std::to_string(n)));
  }
  {
    // One padding space less is still a valid header; the data block then starts a byte early.
    auto v = bytes;
    const uint64_t n = hn - 1;
    std::memcpy(v.data(), &n, 8);
    write_bytes(p, v);
    st_loads(p, "header length hn - 1");
  }
  // Headers that lie about the tensors (data block of 64 bytes).
  auto make = [&](const std::string& hdr, size_t data_bytes = 64) {
    std::vector<uint8_t> v(8);
    const uint64_t n = hdr.size();
    std::memcpy(v.data(), &n, 8);
    v.insert(v.end(), hdr.begin(), hdr.end());
    v.resize(v.size() + data_bytes, 0x3f);
    write_bytes(p, v);
    return p;
  };
  const std::vector<std::string> lies = {
      "", "[]", "\"x\"", "1", "{", "{\"a\":", "nul", "{\"a\":1}", "{\"a\":[]}",
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}})",        // 32 bytes for 4 x F32
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,65]}})",        // past the end
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[60,76]}})",       // past the end
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})",        // begin > end
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[-16,0]}})",       // negative
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16,32]}})",     // three offsets
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0.0,16]}})",      // float offset
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551616]}})",  // > u64
      R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})",       // negative dim
      R"({"a":{"dtype":"F32","shape":[4.0],"data_offsets":[0,16]}})",      // float dim
      R"({"a":{"dtype":"F32","shape":["4"],"data_offsets":[0,16]}})",
      R"({"a":{"dtype":"F32","shape":4,"data_offsets":[0,16]}})",
      R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})",  // numel 2^64 overflow
      R"({"a":{"dtype":"F32","shape":[9223372036854775807,2],"data_offsets":[0,0]}})",
      R"({"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}})",  // bytes 2^64 overflow
      R"({"a":{"dtype":"F32","shape":[1,0],"data_offsets":[0,4]}})",       // numel 0 with 4 bytes
      R"({"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})",     // unknown dtype
      R"({"a":{"dtype":7,"shape":[4],"data_offsets":[0,16]}})",
      R"({"a":{"shape":[4],"data_offsets":[0,16]}})",
      R"({"a":{"dtype":"F32","data_offsets":[0,16]}})",
      R"({"a":{"dtype":"F32","shape":[4]}})",
      R"({"__metadata__":{"k":1}})", R"({"__metadata__":[]})", R"({"__metadata__":{"k":{"x":"y"}}})",
      // The data block must be the tensors' bytes, each in exactly one tensor (64 bytes here).
      R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]},"a":{"dtype":"F32","shape":[8],"data_offsets":[32,64]}})",  // a name twice
      R"({"a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]},"b":{"dtype":"F32","shape":[8],"data_offsets":[32,64]}})",  // overlap
      R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]},"b":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})",    // aliases, hole after
      R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[32,64]}})",       // hole before
      R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})",        // hole after
  };
  for (const auto& h : lies) EXPECT_FALSE(st_loads(make(h), "header " + h)) << h;
  // Accepted: an empty header object, empty metadata, zero-size tensors, padding spaces.
  EXPECT_TRUE(st_loads(make("{}", 0), "{}"));
  EXPECT_TRUE(st_loads(make(R"({"__metadata__":{}, "z":{"dtype":"I8","shape":[0],"data_offsets":[0,0]}}   )", 0), "zero"));
  // Out of order in the header is fine when the bytes are tiled; a zero-size tensor anywhere.
  EXPECT_TRUE(st_loads(make(R"({"b":{"dtype":"F32","shape":[8],"data_offsets":[32,64]},"z":{"dtype":"I8","shape":[0],)"
                            R"("data_offsets":[32,32]},"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})"), "tiled"));
  // Deeply nested JSON (no recursion limit issues).
  EXPECT_FALSE(st_loads(make(std::string(200000, '[') + std::string(200000, ']')), "nested arrays"));
  EXPECT_FALSE(st_loads(make("{\"__metadata__\":{\"k\":" + std::string(200000, '[') + std::string(200000, ']') + "}}"),
                        "nested metadata"));
  // The error names the file, the tensor and the field.
  try {
    safetensors_file f(make(R"({"w.0":{"dtype":"F32","shape":[4],"data_offsets":[0,65]}})"));
    ADD_FAILURE();
  } catch (const lowbit::error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(p), std::string::npos) << m;
    EXPECT_NE(m.find("'w.0'"), std::string::npos) << m;
    EXPECT_NE(m.find("data_offsets"), std::string::npos) << m;
  }
}

namespace {

// Targeted corruption of the GGUF fields: counts, lengths, dims, types and offsets set to
// absurd values. Returns the number of variants tried.
// `light` (for the large shipped file, whose every full parse costs milliseconds) tries fewer
// values and the first and last tensors only.
int gguf_field_attacks(const std::vector<uint8_t>& bytes, const gguf_file& ok, const std::string& p, bool light = false) {
  int tried = 0;
  std::vector<uint64_t> huge64 = {~uint64_t{0}, uint64_t{1} << 63, (uint64_t{1} << 63) - 1, uint64_t{1} << 40,
                                  uint64_t{1} << 32, bytes.size(), bytes.size() + 1, 0, 1, 3};
  std::vector<uint32_t> huge32 = {~uint32_t{0}, 0x80000000u, 0, 1, 3, 5, 9, 12, 13, 39, 40, 1000};
  if (light) {
    huge64 = {~uint64_t{0}, uint64_t{1} << 62, bytes.size() + 1};
    huge32 = {~uint32_t{0}, 5, 40};
  }
  auto attempt64 = [&](size_t at, const std::string& what) {
    for (uint64_t v : huge64) {
      auto b = bytes;
      poke<uint64_t>(b, at, v);
      write_bytes(p, b);
      gguf_loads(p, what + " = " + std::to_string(v));
      ++tried;
    }
  };
  auto attempt32 = [&](size_t at, const std::string& what) {
    for (uint32_t v : huge32) {
      auto b = bytes;
      poke<uint32_t>(b, at, v);
      write_bytes(p, b);
      gguf_loads(p, what + " = " + std::to_string(v));
      ++tried;
    }
  };
  attempt32(4, "version");
  attempt64(8, "n_tensors");
  attempt64(16, "n_kv");
  for (const auto& kv : ok.metadata()) {
    const size_t at = find_lp_string(bytes, kv.key);
    if (at == std::string::npos) continue;
    attempt64(at, "key length of " + kv.key);
    const size_t type_at = at + 8 + kv.key.size();
    attempt32(type_at, "type of " + kv.key);
    if (kv.type == gguf_type::string) attempt64(type_at + 4, "string length of " + kv.key);
    if (kv.type == gguf_type::array) {
      attempt32(type_at + 4, "array type of " + kv.key);
      attempt64(type_at + 8, "array count of " + kv.key);
      if (kv.array_type == gguf_type::string && !kv.value.empty()) attempt64(type_at + 16, "first string of " + kv.key);
    }
  }
  for (size_t ti = 0; ti < ok.tensors().size(); ++ti) {
    if (light && ti > 1 && ti + 1 < ok.tensors().size()) continue;
    const gguf_tensor_info& t = ok.tensors()[ti];
    const size_t at = find_lp_string(bytes, t.name);
    if (at == std::string::npos) continue;
    const size_t nd = at + 8 + t.name.size();
    attempt64(at, "name length of " + t.name);
    attempt32(nd, "n_dims of " + t.name);
    for (size_t d = 0; d < t.ne.size(); ++d) attempt64(nd + 4 + 8 * d, "ne[" + std::to_string(d) + "] of " + t.name);
    const size_t type_at = nd + 4 + 8 * t.ne.size();
    attempt32(type_at, "type of " + t.name);
    attempt64(type_at + 4, "offset of " + t.name);
  }
  return tried;
}

}  // namespace

TEST(FilesCorruption, GgufWrittenTruncatedFlippedAndHugeFields) {
  scratch s("corrupt_gguf");
  const std::string good = s / "good.gguf";
  write_test_gguf(good);
  const auto bytes = read_bytes(good);
  gguf_file ok(good);
  size_t header_end = 0;  // end of the last tensor info
  for (const auto& t : ok.tensors())
    header_end = std::max(header_end, find_lp_string(bytes, t.name) + 8 + t.name.size() + 4 + 8 * t.ne.size() + 12);
  const size_t data_start = (header_end + 31) / 32 * 32;
  size_t needed = 0;  // the end of the last tensor's data (the file ends with its padding)
  for (const auto& t : ok.tensors()) needed = std::max<size_t>(needed, data_start + t.offset + t.bytes);
  ASSERT_LE(needed, bytes.size());
  const std::string p = s / "v.gguf";
  for (size_t n = 0; n < bytes.size(); n += n < header_end + 64 ? 1 : 5) {
    write_bytes(p, bytes.data(), n);
    EXPECT_EQ(gguf_loads(p, "truncated at " + std::to_string(n)), n >= needed) << n;
  }
  std::mt19937 rng(77);
  int loaded = 0;
  for (int i = 0; i < 2000; ++i) {
    auto v = bytes;
    const int k = 1 + static_cast<int>(rng() % 3);
    for (int j = 0; j < k; ++j) {
      const size_t at = rng() % 4 ? rng() % header_end : rng() % v.size();
      v[at] = rng() % 2 ? static_cast<uint8_t>(rng()) : static_cast<uint8_t>(v[at] ^ (1u << (rng() % 8)));
    }
    write_bytes(p, v);
    loaded += gguf_loads(p, "flip variant " + std::to_string(i));
  }
  EXPECT_GT(loaded, 0);
  EXPECT_GT(gguf_field_attacks(bytes, ok, p), 200);

  // Specific refusals with messages.
  auto expect_refused = [&](std::vector<uint8_t> b, const std::string& needle) {
    write_bytes(p, b);
    try {
      gguf_file f(p);
      ADD_FAILURE() << "loaded; expected an error containing " << needle;
    } catch (const lowbit::error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  };
  {
    auto b = bytes;
    b[0] = 'X';
    expect_refused(b, "magic");
  }
  {
    auto b = bytes;
    poke<uint32_t>(b, 4, 1);
    expect_refused(b, "version 1");
  }
  {
    auto b = bytes;
    poke<uint32_t>(b, 4, 0x03000000u);
    expect_refused(b, "big-endian");
  }
  const auto& tq = ok.get("t.q4_0");
  const size_t tq_at = find_lp_string(bytes, tq.name) + 8 + tq.name.size();
  {
    auto b = bytes;
    poke<uint32_t>(b, tq_at + 4 + 8 * tq.ne.size(), 16);  // IQ2_XXS, a type lowbit does not read
    expect_refused(b, "ggml type 16");
  }
  {
    auto b = bytes;
    poke<uint32_t>(b, tq_at, 5);
    expect_refused(b, "n_dims");
  }
  {
    auto b = bytes;
    poke<int64_t>(b, tq_at + 4, 48);  // ne[0] not a multiple of 32
    expect_refused(b, "block size");
  }
  {
    auto b = bytes;
    poke<int64_t>(b, tq_at + 4, 0);
    expect_refused(b, "ne[0]");
  }
  {
    auto b = bytes;
    poke<uint64_t>(b, tq_at + 4 + 8 * tq.ne.size() + 4, tq.offset + 8);  // unaligned
    expect_refused(b, "alignment");
  }
  {
    auto b = bytes;
    poke<uint64_t>(b, tq_at + 4 + 8 * tq.ne.size() + 4, uint64_t{1} << 20);  // past the end
    expect_refused(b, "past the end");
  }
  {
    auto b = bytes;
    b.resize(b.size() - 40);  // the last tensor's data cut
    expect_refused(b, "past the end");
  }
  {
    auto b = bytes;
    poke<uint64_t>(b, 16, uint64_t{1} << 60);
    expect_refused(b, "n_kv");
  }
  {
    const size_t at = find_lp_string(bytes, "k.strings") + 8 + 9;
    auto b = bytes;
    poke<uint32_t>(b, at + 4, 9);  // array of arrays
    expect_refused(b, "nested");
    b = bytes;
    poke<uint64_t>(b, at + 8, uint64_t{1} << 61);  // count
    expect_refused(b, "k.strings");
  }
}

TEST(FilesCorruption, GgufAlignmentKey) {
  scratch s("corrupt_align");
  for (const auto& [kv, ok] : std::vector<std::pair<gguf_kv, bool>>{
           {{"general.alignment", gguf_type::u32, gguf_type::u32, 0}, false},
           {{"general.alignment", gguf_type::u32, gguf_type::u32, 48}, false},
           {{"general.alignment", gguf_type::u64, gguf_type::u32, 64}, false},
           {{"general.alignment", gguf_type::u32, gguf_type::u32, 16}, true}}) {
    // Written by hand: the writer itself refuses these alignments.
    std::vector<uint8_t> b = {'G', 'G', 'U', 'F'};
    auto put = [&](auto v) {
      const size_t at = b.size();
      b.resize(at + sizeof v);
      std::memcpy(b.data() + at, &v, sizeof v);
    };
    put(uint32_t{3});
    put(uint64_t{1});
    put(uint64_t{1});
    put(uint64_t{kv.key.size()});
    b.insert(b.end(), kv.key.begin(), kv.key.end());
    put(static_cast<uint32_t>(kv.type));
    if (kv.type == gguf_type::u32) put(static_cast<uint32_t>(kv.value.get<uint64_t>()));
    else put(kv.value.get<uint64_t>());
    put(uint64_t{1});
    b.push_back('t');
    put(uint32_t{1});
    put(int64_t{4});
    put(uint32_t{0});
    put(uint64_t{0});
    b.resize((b.size() + 15) / 16 * 16, 0);
    for (float x : {1.0f, 2.0f, 3.0f, 4.0f}) put(x);
    write_bytes(s / "a.gguf", b);
    EXPECT_EQ(gguf_loads(s / "a.gguf", kv.value.dump()), ok) << kv.value.dump();
    if (ok) {
      EXPECT_EQ(gguf_file(s / "a.gguf").read_f32("t"), (std::vector<float>{1, 2, 3, 4}));
    }
  }
}

TEST(FilesCorruption, GgufShippedTruncatedFlippedAndHugeFields) {
  scratch s("corrupt_shipped");
  const auto bytes = read_bytes(kShippedGguf);
  gguf_file ok(kShippedGguf);
  const std::string p = s / "v.gguf";
  const size_t info_begin = find_lp_string(bytes, ok.tensors()[0].name);
  ASSERT_NE(info_begin, std::string::npos);
  // Truncation: every offset of the fixed header and the first key/values (up to the token
  // array's first strings), then strides through the arrays, the tensor infos and the data (a
  // cut past the arrays costs a full parse; the written GGUF above covers every offset).
  std::vector<size_t> cuts;
  for (size_t n = 0; n < 1024; ++n) cuts.push_back(n);
  for (size_t n = 1024; n < bytes.size(); n += 40009) cuts.push_back(n);
  for (size_t n = info_begin - 16; n < info_begin + 700 && n < bytes.size(); n += 23) cuts.push_back(n);
  cuts.push_back(bytes.size() - 1);
  for (size_t n : cuts) {
    write_bytes(p, bytes.data(), n);
    EXPECT_FALSE(gguf_loads(p, "shipped truncated at " + std::to_string(n))) << n;
  }
  // Seeded flips: in the fixed header and first keys, in the tensor infos, anywhere.
  std::mt19937 rng(4242);
  for (int i = 0; i < 90; ++i) {
    auto v = bytes;
    const int region = i % 3;
    const size_t at = region == 0 ? rng() % 1024 : region == 1 ? info_begin + rng() % 640 : rng() % v.size();
    v[at] = rng() % 2 ? static_cast<uint8_t>(rng()) : static_cast<uint8_t>(v[at] ^ (1u << (rng() % 8)));
    write_bytes(p, v);
    gguf_loads(p, "shipped flip at " + std::to_string(at));
  }
  EXPECT_GT(gguf_field_attacks(bytes, ok, p, /*light=*/true), 100);
}

// ---- atomic writes ----------------------------------------------------------------------------------
TEST(FilesAtomicWrite, MissingDirectoryThrowsAndOverwriteReplaces) {
  scratch s("atomic");
  const std::vector<float> x(64, 0.5f);
  const std::string bad = s / "no/such/dir/m.safetensors";
  try {
    write_safetensors(bad, {{"a", st_dtype::f32, {64}, x.data()}});
    ADD_FAILURE() << "expected an error";
  } catch (const lowbit::error& e) {
    EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  gguf_writer w;
  w.add_tensor("a", {64}, x.data(), ggml_type::q8_0);
  EXPECT_THROW(w.write(s / "no/such/dir/m.gguf"), lowbit::error);
  // A rename that fails (the target is a directory) leaves no temp file.
  fs::create_directories(s / "taken.gguf");
  EXPECT_THROW(w.write(s / "taken.gguf"), lowbit::error);
  EXPECT_THROW(write_safetensors(s / "taken.gguf", {{"a", st_dtype::f32, {64}, x.data()}}), lowbit::error);
  for (const auto& e : fs::directory_iterator(s.dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();

  // Overwrite: the second write replaces the first.
  const std::string path = s / "m.safetensors";
  write_safetensors(path, {{"a", st_dtype::f32, {64}, x.data()}}, {{"v", "1"}});
  const std::vector<float> y(8, -2.0f);
  write_safetensors(path, {{"b", st_dtype::f16, {2, 4}, y.data()}}, {{"v", "2"}});
  safetensors_file f(path);
  EXPECT_EQ(f.metadata().at("v"), "2");
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.read_f32("b"), y);
  const std::string gpath = s / "m.gguf";
  w.write(gpath);
  gguf_writer w2;
  w2.add_string("general.architecture", "gpt2");
  w2.write(gpath);
  gguf_file g(gpath);
  EXPECT_EQ(g.get_string("general.architecture"), "gpt2");
  EXPECT_TRUE(g.tensors().empty());
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(s.dir)) {
    ++files;
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  }
  EXPECT_EQ(files, 3u);  // taken.gguf/, m.safetensors, m.gguf
}

// A writer killed with SIGKILL between its first bytes and its commit leaves its temp file (no
// destructor runs); the next write of the same path removes it (the dead writer's lock went with
// it), and leaves alone a temp file that a writer still holds.
TEST(FilesAtomicWrite, TempFilesOfKilledWritersAreRemovedByTheNextWrite) {
  scratch s("stale");
  const std::string path = s / "out.json";
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    atomic_file_writer w(path);
    const std::string half(1 << 16, 'x');
    w.write(half.data(), half.size());
    const char c = 1;
    if (::write(ready[1], &c, 1) != 1) _exit(3);
    ::pause();  // killed here, before commit()
    _exit(0);
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ::close(ready[0]);
  ::close(ready[1]);
  auto temps = [&] {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(s.dir))
      if (e.path().filename().string().find(".tmp-") != std::string::npos) names.push_back(e.path().filename().string());
    return names;
  };
  ASSERT_EQ(temps().size(), 1u) << "the killed writer left no temp file to clean";
  // A temp file that a writer holds (locked, as atomic_file_writer holds its own) must survive.
  const std::string live = s / "out.json.tmp-abcdef";
  std::ofstream(live) << "in use";
  const exclusive_lock held(live, "test");
  write_text_file_atomic(path, "{}\n");
  const auto left = temps();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0], fs::path(live).filename().string());
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "{}\n");
}

// A model's config with a value that does not fit its field is refused, naming the field: before,
// hidden_size 4294967328 read as 32 and 1.5 or true as 1; a RoPE base of NaN, 0 or -1 was taken.
TEST(ModelConfig, ValuesThatDoNotFitAreRefused) {
  const fs::path dir = fs::temp_directory_path() / ("lowbit_cfg_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  model_config c;
  c.dim = 16, c.hidden_dim = 32, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 2, c.vocab_size = 258,
  c.max_seq_len = 16;
  const std::string good = (dir / "good.safetensors").string();
  save_safetensors_model(synthesize_model(c, 1), good);
  const safetensors_file f(good);
  const nlohmann::json cfg = nlohmann::json::parse(f.metadata().at("lowbit.config"));
  std::vector<std::vector<float>> data;
  std::vector<st_write_tensor> tensors;
  for (const st_tensor_info& t : f.tensors()) data.push_back(f.read_f32(t.name));
  size_t i = 0;
  for (const st_tensor_info& t : f.tensors()) tensors.push_back({t.name, st_dtype::f32, t.shape, data[i++].data()});
  auto with = [&](const char* key, const nlohmann::json& value) {
    nlohmann::json edited = cfg;
    edited[key] = value;
    const std::string path = (dir / (std::string(key) + ".safetensors")).string();
    auto meta = f.metadata();
    meta["lowbit.config"] = edited.dump();
    write_safetensors(path, tensors, meta);
    return path;
  };
  EXPECT_NO_THROW(load_model(with("hidden_size", 16)));  // the file as written loads
  for (const nlohmann::json& bad : {nlohmann::json(4294967328ull), nlohmann::json(1.5), nlohmann::json(true),
                                    nlohmann::json(-4294967280ll)}) {
    try {
      load_model(with("hidden_size", bad));
      ADD_FAILURE() << "hidden_size " << bad.dump() << " was accepted";
    } catch (const lowbit::error& e) {
      EXPECT_NE(std::string(e.what()).find("hidden_size"), std::string::npos) << e.what();
    }
  }
  for (const double theta : {0.0, -1.0})
    EXPECT_THROW(load_model(with("rope_theta", theta)), lowbit::error) << theta;
  // JSON has no NaN (it dumps as null, refused as missing): the config check itself refuses one.
  model_config nan_base = c;
  nan_base.rope_theta = std::nanf("");
  EXPECT_THROW(nan_base.validate(), lowbit::error);
  fs::remove_all(dir);
}

TEST(FileFingerprint, IsFnv1a64OfTheBytes) {
  // One fingerprint (base/files) names files in provenance and in the results store: FNV-1a 64
  // computed here byte by byte, independently of the chunked reader. lowbit's offset basis is
  // 1469598103934665603, not the published 14695981039346656037 (a digit lost when it was first
  // written); it stays, since every results store and shard in use names its files by it
  // (docs/conventions.md §39).
  const std::string path = lowbit_test::data_dir() + "/text/tinystories_val_sample.txt";
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  EXPECT_EQ(file_fingerprint(path), fmt::format("fnv1a64:{:016x}", h));
}

// Two tensors whose data overlap: the second's offset rewritten to the first's (bytes shared),
// then to inside the first (partial overlap). Before, both were read without a word.
TEST(GgufReader, RefusesOverlappingTensorData) {
  scratch s("gguf_overlap");
  const std::string path = s / "o.gguf";
  std::vector<float> a(64, 1.0f), b(64, 2.0f);
  gguf_writer w;
  w.add_string("general.architecture", "llama");
  w.add_tensor("first", {2, 32}, a.data(), ggml_type::f32);
  w.add_tensor("second", {2, 32}, b.data(), ggml_type::f32);
  w.write(path);
  const gguf_file ok(path);
  ASSERT_EQ(ok.tensors().size(), 2u);
  const auto bytes = read_bytes(path);
  // The second tensor's info: name (u64 length + bytes), n_dims u32, 2 x i64 ne, u32 type, u64 offset.
  const std::string name = "second";
  const auto at = std::search(bytes.begin(), bytes.end(), name.begin(), name.end()) - bytes.begin();
  const size_t offset_field = at + name.size() + 4 + 2 * 8 + 4;
  uint64_t stored = 0;
  std::memcpy(&stored, bytes.data() + offset_field, 8);
  ASSERT_EQ(stored, 256u);  // 64 floats after the first, aligned to 32
  for (uint64_t lie : {uint64_t{0}, uint64_t{128}}) {
    auto v = bytes;
    std::memcpy(v.data() + offset_field, &lie, 8);
    write_bytes(path, v);
    try {
      gguf_file f(path);
      ADD_FAILURE() << "offset " << lie << " accepted";
    } catch (const lowbit::error& e) {
      EXPECT_NE(std::string(e.what()).find("overlaps tensor 'first'"), std::string::npos) << e.what();
    }
  }
}
