// GGUF v3 reader/writer (v2 is read too: same layout) and the ggml block layouts of Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, the K-quants Q2_K ... Q6_K and MXFP4 <-> lowbit quantized tensors.
//
// File layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv key/values
// (string key, u32 type, value; strings are u64 length + bytes; arrays are u32 element type, u64
// count, elements; nested arrays are refused), n_tensors infos (name, u32 n_dims, i64 ne[n_dims],
// u32 ggml type, u64 offset), zero padding to general.alignment (u32, default 32), tensor data.
//
// The reader bounds every count and length by the bytes left in the file before it allocates or
// reads, and checks every tensor's dims, type, block divisibility, byte count (overflow-checked),
// alignment and extent before read_f32/raw can touch it.
#include "lowbit/io/gguf.hpp"

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <unordered_set>

#include <fmt/format.h>

#include "lowbit/io/safetensors.hpp"  // mapped_file, atomic_file_writer, fp16/bf16
#include "lowbit/base/error.hpp"
#include "lowbit/kernels/kquant.hpp"

namespace lowbit {

namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr int kQK = 32;  // elements per block of the types that are not K-quants

struct type_entry {
  ggml_type t;
  const char* name;
  int block;
  int bytes;
  const char* format;  // lowbit's format of a block-quantized type ("" for the float types)
};
// ggml's type_traits for the types lowbit handles: blck_size and type_size.
constexpr type_entry kTypes[] = {
    {ggml_type::f32, "f32", 1, 4, ""},
    {ggml_type::f16, "f16", 1, 2, ""},
    {ggml_type::q4_0, "q4_0", kQK, 2 + 16, "q4_0"},
    {ggml_type::q4_1, "q4_1", kQK, 2 + 2 + 16, "q4_1"},
    {ggml_type::q5_0, "q5_0", kQK, 2 + 4 + 16, "q5_0"},
    {ggml_type::q5_1, "q5_1", kQK, 2 + 2 + 4 + 16, "q5_1"},
    {ggml_type::q8_0, "q8_0", kQK, 2 + 32, "q8_0"},
    {ggml_type::q2_k, "q2_k", kSuperBlock, sizeof(block_q2_k), "q2_k"},
    {ggml_type::q3_k, "q3_k", kSuperBlock, sizeof(block_q3_k), "q3_k"},
    {ggml_type::q4_k, "q4_k", kSuperBlock, sizeof(block_q4_k), "q4_k"},
    {ggml_type::q5_k, "q5_k", kSuperBlock, sizeof(block_q5_k), "q5_k"},
    {ggml_type::q6_k, "q6_k", kSuperBlock, sizeof(block_q6_k), "q6_k"},
    {ggml_type::bf16, "bf16", 1, 2, ""},
    {ggml_type::mxfp4, "mxfp4", kQK, 1 + 16, "mxfp4"},
};
constexpr const char* kTypeList =
    "f32=0, f16=1, q4_0=2, q4_1=3, q5_0=6, q5_1=7, q8_0=8, q2_k=10, q3_k=11, q4_k=12, q5_k=13, q6_k=14, bf16=30, "
    "mxfp4=39";

const type_entry* type_of(uint32_t v) {
  for (const auto& e : kTypes)
    if (static_cast<uint32_t>(e.t) == v) return &e;
  return nullptr;
}

const type_entry& type_of(ggml_type t) {
  const type_entry* e = type_of(static_cast<uint32_t>(t));
  if (!e) throw error(fmt::format("ggml type {} is not supported (expected {})", static_cast<uint32_t>(t), kTypeList));
  return *e;
}

constexpr const char* kValueTypeNames[] = {"u8",  "i8",     "u16",   "i16", "u32", "i32", "f32",
                                           "bool", "string", "array", "u64", "i64", "f64"};

bool valid_value_type(uint32_t v) { return v <= static_cast<uint32_t>(gguf_type::f64); }

bool is_unsigned_type(gguf_type t) {
  return t == gguf_type::u8 || t == gguf_type::u16 || t == gguf_type::u32 || t == gguf_type::u64;
}
bool is_signed_type(gguf_type t) {
  return t == gguf_type::i8 || t == gguf_type::i16 || t == gguf_type::i32 || t == gguf_type::i64;
}
bool is_int_type(gguf_type t) { return is_unsigned_type(t) || is_signed_type(t); }
bool is_float_type(gguf_type t) { return t == gguf_type::f32 || t == gguf_type::f64; }

// Bytes a value of type t occupies at least (strings: their length field).
uint64_t min_value_bytes(gguf_type t) {
  switch (t) {
    case gguf_type::u8:
    case gguf_type::i8:
    case gguf_type::boolean: return 1;
    case gguf_type::u16:
    case gguf_type::i16: return 2;
    case gguf_type::u32:
    case gguf_type::i32:
    case gguf_type::f32: return 4;
    case gguf_type::u64:
    case gguf_type::i64:
    case gguf_type::f64:
    case gguf_type::string: return 8;
    case gguf_type::array: return 12;
  }
  return 1;
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }  // callers keep x + a in range

// The value 2^(e-128) that ggml multiplies its doubled E2M1 values by (GGML_E8M0_TO_FP32_HALF):
// e = 0 and 1 are the float32 subnormals 2^-128 and 2^-127; e = 255 is 2^127 (ggml has no NaN here).
float e8m0_to_f32_half(uint8_t e) {
  const uint32_t bits = e < 2 ? (0x00200000u << e) : (static_cast<uint32_t>(e - 1) << 23);
  return std::bit_cast<float>(bits);
}

// E2M1 codes doubled (ggml's kvalues_mxfp4): 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives.
constexpr int8_t kE2M1x2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// float -> f32 without an out-of-range cast: finite doubles beyond float's range are refused.
bool double_to_f32(double d, float* out) {
  if (std::isfinite(d) && std::fabs(d) > static_cast<double>(std::numeric_limits<float>::max())) {
    // Values that still round to FLT_MAX are accepted.
    if (std::fabs(d) >= 0x1.ffffffp127) return false;
    *out = d < 0 ? -std::numeric_limits<float>::max() : std::numeric_limits<float>::max();
    return true;
  }
  *out = static_cast<float>(d);
  return true;
}

// Reads the mapped bytes; every read is bounds-checked and failures name the field.
class cursor {
 public:
  cursor(const uint8_t* p, uint64_t n, const std::string& path) : p_(p), n_(n), path_(path) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return n_ - pos_; }

  template <typename Desc>
  void need(uint64_t k, const Desc& desc) const {
    if (k > left())
      throw error(fmt::format("GGUF file '{}': truncated: {} needs {} bytes at offset {}, the file has {} left",
                              path_, desc(), k, pos_, left()));
  }
  template <typename T, typename Desc>
  T get(const Desc& desc) {
    need(sizeof(T), desc);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  template <typename Desc>
  std::string str(const Desc& desc) {
    const uint64_t len = get<uint64_t>(desc);
    need(len, desc);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

 private:
  const uint8_t* p_;
  uint64_t n_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

template <typename Desc>
nlohmann::json read_scalar(cursor& c, gguf_type t, const Desc& desc) {
  switch (t) {
    case gguf_type::u8: return nlohmann::json(static_cast<uint64_t>(c.get<uint8_t>(desc)));
    case gguf_type::i8: return nlohmann::json(static_cast<int64_t>(c.get<int8_t>(desc)));
    case gguf_type::u16: return nlohmann::json(static_cast<uint64_t>(c.get<uint16_t>(desc)));
    case gguf_type::i16: return nlohmann::json(static_cast<int64_t>(c.get<int16_t>(desc)));
    case gguf_type::u32: return nlohmann::json(static_cast<uint64_t>(c.get<uint32_t>(desc)));
    case gguf_type::i32: return nlohmann::json(static_cast<int64_t>(c.get<int32_t>(desc)));
    case gguf_type::f32: return nlohmann::json(static_cast<double>(c.get<float>(desc)));
    case gguf_type::boolean: return nlohmann::json(c.get<uint8_t>(desc) != 0);
    case gguf_type::string: return nlohmann::json(c.str(desc));
    case gguf_type::u64: return nlohmann::json(c.get<uint64_t>(desc));
    case gguf_type::i64: return nlohmann::json(c.get<int64_t>(desc));
    case gguf_type::f64: return nlohmann::json(c.get<double>(desc));
    case gguf_type::array: break;
  }
  throw error("internal: read_scalar on an array");
}

// The json value of a kv checked against its declared type and normalised (unsigned integers as
// number_unsigned, signed as number_integer, f32 rounded to float). Throws naming `what`.
nlohmann::json normalize_scalar(gguf_type t, const nlohmann::json& v, const std::string& what) {
  auto bad = [&](const char* expected) -> void {
    throw error(fmt::format("{}: value {} is not {}", what, v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                            expected));
  };
  auto umax = [](gguf_type t) -> uint64_t {
    switch (t) {
      case gguf_type::u8: return 0xff;
      case gguf_type::u16: return 0xffff;
      case gguf_type::u32: return 0xffffffffu;
      default: return std::numeric_limits<uint64_t>::max();
    }
  };
  auto smin = [](gguf_type t) -> int64_t {
    switch (t) {
      case gguf_type::i8: return -128;
      case gguf_type::i16: return -32768;
      case gguf_type::i32: return std::numeric_limits<int32_t>::min();
      default: return std::numeric_limits<int64_t>::min();
    }
  };
  if (is_unsigned_type(t)) {
    if (v.is_number_unsigned() && v.get<uint64_t>() <= umax(t)) return nlohmann::json(v.get<uint64_t>());
    if (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() >= 0 &&
        static_cast<uint64_t>(v.get<int64_t>()) <= umax(t))
      return nlohmann::json(static_cast<uint64_t>(v.get<int64_t>()));
    bad(fmt::format("an integer in the range of {}", kValueTypeNames[static_cast<int>(t)]).c_str());
  }
  if (is_signed_type(t)) {
    const int64_t lo = smin(t), hi = -(lo + 1);
    if (v.is_number_unsigned() && v.get<uint64_t>() <= static_cast<uint64_t>(hi)) return nlohmann::json(static_cast<int64_t>(v.get<uint64_t>()));
    if (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() >= lo && v.get<int64_t>() <= hi)
      return nlohmann::json(v.get<int64_t>());
    bad(fmt::format("an integer in the range of {}", kValueTypeNames[static_cast<int>(t)]).c_str());
  }
  switch (t) {
    case gguf_type::f32: {
      float f = 0;
      if (!v.is_number() || !double_to_f32(v.get<double>(), &f)) bad("a number in the range of f32");
      return nlohmann::json(static_cast<double>(f));
    }
    case gguf_type::f64:
      if (!v.is_number()) bad("a number");
      return nlohmann::json(v.get<double>());
    case gguf_type::boolean:
      if (!v.is_boolean()) bad("a bool");
      return v;
    case gguf_type::string:
      if (!v.is_string()) bad("a string");
      return v;
    default: break;
  }
  bad("a scalar");
  return {};
}

// ---- little-endian byte sink for the writer ----
struct sink {
  std::vector<uint8_t> b;
  template <typename T>
  void put(T v) {
    const size_t at = b.size();
    b.resize(at + sizeof(T));
    std::memcpy(b.data() + at, &v, sizeof(T));
  }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
};

void put_scalar(sink& s, gguf_type t, const nlohmann::json& v) {
  switch (t) {
    case gguf_type::u8: s.put<uint8_t>(static_cast<uint8_t>(v.get<uint64_t>())); break;
    case gguf_type::i8: s.put<int8_t>(static_cast<int8_t>(v.get<int64_t>())); break;
    case gguf_type::u16: s.put<uint16_t>(static_cast<uint16_t>(v.get<uint64_t>())); break;
    case gguf_type::i16: s.put<int16_t>(static_cast<int16_t>(v.get<int64_t>())); break;
    case gguf_type::u32: s.put<uint32_t>(static_cast<uint32_t>(v.get<uint64_t>())); break;
    case gguf_type::i32: s.put<int32_t>(static_cast<int32_t>(v.get<int64_t>())); break;
    case gguf_type::f32: s.put<float>(static_cast<float>(v.get<double>())); break;  // exact: normalised
    case gguf_type::boolean: s.put<uint8_t>(v.get<bool>() ? 1 : 0); break;
    case gguf_type::string: s.str(v.get_ref<const std::string&>()); break;
    case gguf_type::u64: s.put<uint64_t>(v.get<uint64_t>()); break;
    case gguf_type::i64: s.put<int64_t>(v.get<int64_t>()); break;
    case gguf_type::f64: s.put<double>(v.get<double>()); break;
    case gguf_type::array: break;
  }
}

}  // namespace

// Formats lowbit uses for the quantized ggml types.
format ggml_type_format(ggml_type t) {
  const type_entry* e = type_of(static_cast<uint32_t>(t));
  if (e && e->format[0] != '\0') return parse_format(e->format);
  throw error(fmt::format("ggml type {} is not a block-quantized type (expected q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, "
                          "q3_k, q4_k, q5_k, q6_k or mxfp4)", ggml_type_name(t)));
}

namespace {

// The fp16 bits of a block scale that must be an fp16 value (NaN: a NaN group or super-block).
uint16_t exact_fp16(float s, int64_t block, int64_t row) {
  const uint16_t d = f32_to_fp16(s);
  if (std::bit_cast<uint32_t>(fp16_to_f32(d)) != std::bit_cast<uint32_t>(s) && !std::isnan(s))
    throw error(fmt::format("encode_ggml_blocks: block {} of row {} has scale {}, not an fp16 value", block, row, s));
  return d;
}

// ---- K-quants: ggml's block_q2_K ... block_q6_K <-> quantized_tensor (kernels/kquant.hpp) ----
// One super-block as its parts: the fp16 super-scales, the sub-block scale (and min) codes, and
// ggml's 256 codes q (0..2^bits - 1; the symmetric types' values are q - z).
struct kquant_parts {
  float d = 0, dmin = 0;
  int32_t sc[16] = {}, m[16] = {};
  uint8_t L[kSuperBlock] = {};
};

// block_q4_K / block_q5_K .scales[12] hold the 6-bit scale sc_j and min m_j of the 8 sub-blocks
// (get_scale_min_k4): for j < 4, sc_j = scales[j] & 63 and m_j = scales[j + 4] & 63; for j >= 4,
// the low 4 bits of sc_j / m_j are the low / high nibble of scales[j + 4] and their top 2 bits
// are the top 2 bits of scales[j - 4] / scales[j].
void pack_k4_scales(const int32_t* sc, const int32_t* m, uint8_t* scales) {
  for (int j = 0; j < 4; ++j) {
    scales[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    scales[j + 4] = static_cast<uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
    scales[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4));
  }
}
void unpack_k4_scales(const uint8_t* scales, int32_t* sc, int32_t* m) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      sc[j] = scales[j] & 63;
      m[j] = scales[j + 4] & 63;
    } else {
      sc[j] = (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4);
      m[j] = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
  }
}

// block_q3_K.scales[12] hold the 16 6-bit codes sc_j + 32: the low 4 bits in the low (j < 8) or
// high (j >= 8, byte j - 8) nibble of scales[0..7], the top 2 bits at bits 2 (j / 4) of
// scales[8 + j % 4].
void pack_q3_k_scales(const int32_t* sc, uint8_t* scales) {
  std::memset(scales, 0, 12);
  for (int j = 0; j < 16; ++j) {
    const int l = sc[j] + 32;
    scales[j % 8] |= static_cast<uint8_t>((l & 0x0f) << (j < 8 ? 0 : 4));
    scales[8 + j % 4] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
  }
}
void unpack_q3_k_scales(const uint8_t* scales, int32_t* sc) {
  for (int j = 0; j < 16; ++j) {
    const int lo = (scales[j % 8] >> (j < 8 ? 0 : 4)) & 0x0f, hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    sc[j] = (lo | (hi << 4)) - 32;
  }
}

// 2 bits of each of 256 codes in 64 bytes (block_q2_K.qs, block_q3_K.qs): per 128 values, byte l
// holds values l, l + 32, l + 64, l + 96 at bits 0, 2, 4, 6.
void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int n = 0; n < kSuperBlock; n += 128)
    for (int l = 0; l < 32; ++l)
      qs[n / 4 + l] = static_cast<uint8_t>((L[n + l] & 3) | ((L[n + l + 32] & 3) << 2) | ((L[n + l + 64] & 3) << 4) |
                                           ((L[n + l + 96] & 3) << 6));
}
void unpack_2bit(const uint8_t* qs, uint8_t* L) {
  for (int n = 0; n < kSuperBlock; n += 128)
    for (int l = 0; l < 32; ++l)
      for (int k = 0; k < 4; ++k) L[n + l + 32 * k] = static_cast<uint8_t>((qs[n / 4 + l] >> (2 * k)) & 3);
}
// The low 4 bits of 256 codes in 128 bytes (block_q4_K.qs, block_q5_K.qs): per 64 values, byte
// l holds value l (low nibble) and value l + 32 (high nibble).
void pack_4bit(const uint8_t* L, uint8_t* qs) {
  for (int c = 0; c < kSuperBlock; c += 64)
    for (int l = 0; l < 32; ++l) qs[c / 2 + l] = static_cast<uint8_t>((L[c + l] & 0x0f) | ((L[c + l + 32] & 0x0f) << 4));
}
void unpack_4bit(const uint8_t* qs, uint8_t* L) {
  for (int c = 0; c < kSuperBlock; c += 64)
    for (int l = 0; l < 32; ++l) {
      L[c + l] = qs[c / 2 + l] & 0x0f;
      L[c + l + 32] = qs[c / 2 + l] >> 4;
    }
}

// The parts of super-block s of row r of a stored K-quant tensor, checked against what the block holds.
kquant_parts kquant_parts_of(const quantized_tensor& q, int64_t r, int64_t s) {
  const format& f = q.fmt;
  const bool with_min = kquant_has_min(f);
  const int64_t nsb = q.cols / kSuperBlock, sub = f.group_size, subs = kSuperBlock / sub, gpr = q.cols / sub;
  const float* ss = q.super_scales.data() + (r * nsb + s) * kquant_super_scale_count(f);
  kquant_parts p;
  p.d = ss[0];
  p.dmin = with_min ? ss[1] : 0.0f;
  const bool nan_block = std::isnan(ss[0]);
  // The scale (min) codes each type holds.
  const int sc_lo = f.named == preset::q3_k ? -32 : f.named == preset::q6_k ? -128 : 0;
  const int sc_hi = f.named == preset::q3_k ? 31 : f.named == preset::q6_k ? 127 : f.named == preset::q2_k ? 15 : 63;
  const int m_hi = f.named == preset::q2_k ? 15 : 63;
  for (int64_t j = 0; j < subs; ++j) {
    const size_t gi = static_cast<size_t>(r * gpr + s * subs + j);
    const float v = q.scales[gi];
    if (!(v >= sc_lo && v <= sc_hi && v == std::floor(v)) && !nan_block)
      throw error(fmt::format("encode_ggml_blocks: sub-block {} of super-block {} of row {} has scale code {}; {} "
                              "holds integers {}..{}", j, s, r, v, format_name(f), sc_lo, sc_hi));
    p.sc[j] = nan_block ? 0 : static_cast<int32_t>(v);
    if (with_min) {
      p.m[j] = nan_block ? 0 : q.zero_points[gi];
      if (p.m[j] < 0 || p.m[j] > m_hi)
        throw error(fmt::format("encode_ggml_blocks: sub-block {} of super-block {} of row {} has min code {}; {} "
                                "holds 0..{}", j, s, r, p.m[j], format_name(f), m_hi));
    }
  }
  uint32_t codes[kSuperBlock];
  const int bits = f.element.bits;
  unpack_codes(q.codes.data() + r * q.row_bytes + s * kSuperBlock * bits / 8, kSuperBlock, bits, codes);
  const uint32_t mask = (1u << bits) - 1u, z = with_min ? 0u : 1u << (bits - 1);
  for (int i = 0; i < kSuperBlock; ++i) p.L[i] = static_cast<uint8_t>((codes[i] + z) & mask);  // two's complement of q - z
  return p;
}

void set_kquant_parts(const kquant_parts& p, int64_t r, int64_t s, quantized_tensor& q) {
  const format& f = q.fmt;
  const bool with_min = kquant_has_min(f);
  const int64_t nsb = q.cols / kSuperBlock, sub = f.group_size, subs = kSuperBlock / sub, gpr = q.cols / sub;
  float* ss = q.super_scales.data() + (r * nsb + s) * kquant_super_scale_count(f);
  ss[0] = p.d;
  if (with_min) ss[1] = p.dmin;
  for (int64_t j = 0; j < subs; ++j) {
    const size_t gi = static_cast<size_t>(r * gpr + s * subs + j);
    q.scales[gi] = static_cast<float>(p.sc[j]);
    if (with_min) q.zero_points[gi] = p.m[j];
  }
  const int bits = f.element.bits;
  const uint32_t mask = (1u << bits) - 1u, z = with_min ? 0u : 1u << (bits - 1);
  uint32_t codes[kSuperBlock];
  for (int i = 0; i < kSuperBlock; ++i) codes[i] = (p.L[i] - z) & mask;
  pack_codes(codes, kSuperBlock, bits, q.codes.data() + r * q.row_bytes + s * kSuperBlock * bits / 8);
}

void encode_kquant_block(const quantized_tensor& q, int64_t r, int64_t s, uint8_t* out) {
  const kquant_parts p = kquant_parts_of(q, r, s);
  switch (q.fmt.named) {
    case preset::q2_k: {
      block_q2_k b{};
      for (int j = 0; j < 16; ++j) b.scales[j] = static_cast<uint8_t>(p.sc[j] | (p.m[j] << 4));
      pack_2bit(p.L, b.qs);
      b.d = exact_fp16(p.d, s, r);
      b.dmin = exact_fp16(p.dmin, s, r);
      std::memcpy(out, &b, sizeof b);
      return;
    }
    case preset::q3_k: {
      block_q3_k b{};
      uint8_t low[kSuperBlock];
      for (int i = 0; i < kSuperBlock; ++i) {
        if (p.L[i] > 3) b.hmask[i % 32] |= static_cast<uint8_t>(1u << (i / 32));
        low[i] = p.L[i] & 3;
      }
      pack_2bit(low, b.qs);
      pack_q3_k_scales(p.sc, b.scales);
      b.d = exact_fp16(p.d, s, r);
      std::memcpy(out, &b, sizeof b);
      return;
    }
    case preset::q4_k:
    case preset::q5_k: {
      const bool five = q.fmt.named == preset::q5_k;
      uint8_t scales[12], qs[kSuperBlock / 2], qh[kSuperBlock / 8] = {};
      pack_k4_scales(p.sc, p.m, scales);
      pack_4bit(p.L, qs);
      for (int c = 0; c < kSuperBlock; c += 64)  // q5_k's bit 4: chunk k at bits 2k (value l), 2k + 1 (l + 32) of qh[l]
        for (int l = 0; l < 32; ++l)
          qh[l] |= static_cast<uint8_t>(((p.L[c + l] >> 4) << (c / 32)) | ((p.L[c + l + 32] >> 4) << (c / 32 + 1)));
      const uint16_t d = exact_fp16(p.d, s, r), dmin = exact_fp16(p.dmin, s, r);
      if (five) {
        block_q5_k b{d, dmin, {}, {}, {}};
        std::memcpy(b.scales, scales, sizeof scales);
        std::memcpy(b.qh, qh, sizeof qh);
        std::memcpy(b.qs, qs, sizeof qs);
        std::memcpy(out, &b, sizeof b);
      } else {
        block_q4_k b{d, dmin, {}, {}};
        std::memcpy(b.scales, scales, sizeof scales);
        std::memcpy(b.qs, qs, sizeof qs);
        std::memcpy(out, &b, sizeof b);
      }
      return;
    }
    default: {  // q6_k
      block_q6_k b{};
      for (int n = 0; n < kSuperBlock; n += 128)
        for (int l = 0; l < 32; ++l) {
          const uint8_t* x = p.L + n + l;
          b.ql[n / 2 + l] = static_cast<uint8_t>((x[0] & 0x0f) | ((x[64] & 0x0f) << 4));
          b.ql[n / 2 + l + 32] = static_cast<uint8_t>((x[32] & 0x0f) | ((x[96] & 0x0f) << 4));
          b.qh[n / 4 + l] = static_cast<uint8_t>((x[0] >> 4) | ((x[32] >> 4) << 2) | ((x[64] >> 4) << 4) | ((x[96] >> 4) << 6));
        }
      for (int j = 0; j < 16; ++j) b.scales[j] = static_cast<int8_t>(p.sc[j]);
      b.d = exact_fp16(p.d, s, r);
      std::memcpy(out, &b, sizeof b);
      return;
    }
  }
}

void decode_kquant_block(const uint8_t* in, int64_t r, int64_t s, quantized_tensor& q) {
  kquant_parts p;
  switch (q.fmt.named) {
    case preset::q2_k: {
      block_q2_k b;
      std::memcpy(&b, in, sizeof b);
      for (int j = 0; j < 16; ++j) {
        p.sc[j] = b.scales[j] & 0x0f;
        p.m[j] = b.scales[j] >> 4;
      }
      unpack_2bit(b.qs, p.L);
      p.d = fp16_to_f32(b.d);
      p.dmin = fp16_to_f32(b.dmin);
      break;
    }
    case preset::q3_k: {
      block_q3_k b;
      std::memcpy(&b, in, sizeof b);
      unpack_2bit(b.qs, p.L);
      for (int i = 0; i < kSuperBlock; ++i) p.L[i] = static_cast<uint8_t>(p.L[i] | (((b.hmask[i % 32] >> (i / 32)) & 1) << 2));
      unpack_q3_k_scales(b.scales, p.sc);
      p.d = fp16_to_f32(b.d);
      break;
    }
    case preset::q4_k:
    case preset::q5_k: {
      const bool five = q.fmt.named == preset::q5_k;
      uint16_t d, dmin;
      const uint8_t *scales, *qs, *qh = nullptr;
      if (five) {
        static_assert(offsetof(block_q5_k, qs) == 48, "block_q5_K: d, dmin, scales[12], qh[32], qs");
        qh = in + offsetof(block_q5_k, qh);
        qs = in + offsetof(block_q5_k, qs);
      } else {
        qs = in + offsetof(block_q4_k, qs);
      }
      std::memcpy(&d, in, 2);
      std::memcpy(&dmin, in + 2, 2);
      scales = in + 4;
      unpack_k4_scales(scales, p.sc, p.m);
      unpack_4bit(qs, p.L);
      if (five)
        for (int c = 0; c < kSuperBlock; c += 64)
          for (int l = 0; l < 32; ++l) {
            p.L[c + l] = static_cast<uint8_t>(p.L[c + l] | (((qh[l] >> (c / 32)) & 1) << 4));
            p.L[c + l + 32] = static_cast<uint8_t>(p.L[c + l + 32] | (((qh[l] >> (c / 32 + 1)) & 1) << 4));
          }
      p.d = fp16_to_f32(d);
      p.dmin = fp16_to_f32(dmin);
      break;
    }
    default: {  // q6_k
      block_q6_k b;
      std::memcpy(&b, in, sizeof b);
      for (int n = 0; n < kSuperBlock; n += 128)
        for (int l = 0; l < 32; ++l) {
          const uint8_t lo = b.ql[n / 2 + l], hi = b.ql[n / 2 + l + 32], h = b.qh[n / 4 + l];
          p.L[n + l] = static_cast<uint8_t>((lo & 0x0f) | ((h & 3) << 4));
          p.L[n + l + 32] = static_cast<uint8_t>((hi & 0x0f) | (((h >> 2) & 3) << 4));
          p.L[n + l + 64] = static_cast<uint8_t>((lo >> 4) | (((h >> 4) & 3) << 4));
          p.L[n + l + 96] = static_cast<uint8_t>((hi >> 4) | (((h >> 6) & 3) << 4));
        }
      for (int j = 0; j < 16; ++j) p.sc[j] = b.scales[j];
      p.d = fp16_to_f32(b.d);
      break;
    }
  }
  set_kquant_parts(p, r, s, q);
}

// Whether q's layout is the one ggml's block type stores (mxfp4: any rule/rounding of E2M1/g32:e8m0).
bool layout_matches(const format& f, ggml_type t) {
  if (t == ggml_type::mxfp4) {
    const format mx = parse_format("mxfp4");
    return f.named == preset::none && f.power == 0 && f.element == mx.element && f.gran == granularity::group &&
           f.group_size == kQK && f.scale.kind == scale_kind::e8m0;
  }
  const type_entry* e = type_of(static_cast<uint32_t>(t));
  return e && e->format[0] != '\0' && f.named != preset::none && f.named == parse_format(e->format).named;
}

}  // namespace

// ---- names and sizes ------------------------------------------------------------------------------
const char* ggml_type_name(ggml_type t) {
  const type_entry* e = type_of(static_cast<uint32_t>(t));
  return e ? e->name : "unknown";
}
const char* gguf_type_name(gguf_type t) {
  const uint32_t v = static_cast<uint32_t>(t);
  return valid_value_type(v) ? kValueTypeNames[v] : "unknown";
}
int ggml_block_size(ggml_type t) { return type_of(t).block; }
int ggml_block_bytes(ggml_type t) { return type_of(t).bytes; }

int64_t gguf_tensor_info::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::vector<int64_t> gguf_tensor_info::shape() const { return std::vector<int64_t>(ne.rbegin(), ne.rend()); }

// ---- reader ---------------------------------------------------------------------------------------
struct gguf_file::mapping {
  explicit mapping(const std::string& path) : file(path) {}
  mapped_file file;
};

gguf_file::gguf_file(const std::string& path) : path_(path) {
  map_ = std::make_unique<mapping>(path);
  const uint8_t* base = map_->file.data();
  const uint64_t size = map_->file.size();
  auto fail = [&](const std::string& msg) -> void { throw error(fmt::format("GGUF file '{}': {}", path, msg)); };
  if (size == 0) fail("the file is empty; expected the magic 'GGUF'");
  cursor c(base, size, path_);

  // Header.
  if (size < 4 || std::memcmp(base, kMagic, 4) != 0) {
    std::string found;
    for (uint64_t i = 0; i < std::min<uint64_t>(4, size); ++i) found += fmt::format("{:02x}", base[i]);
    fail(fmt::format("bad magic 0x{}; expected 'GGUF' (47 47 55 46)", found));
  }
  c.get<uint32_t>([] { return "the magic"; });
  version_ = c.get<uint32_t>([] { return "the version"; });
  if (version_ == 1) fail("GGUF version 1 is not supported (expected version 2 or 3; re-convert the model)");
  if (version_ != 2 && version_ != 3)
    fail(fmt::format("unsupported GGUF version {}{}; expected 3 (or 2)", version_,
                     __builtin_bswap32(version_) <= 3 ? " (a big-endian file?)" : ""));
  const uint64_t n_tensors = c.get<uint64_t>([] { return "the tensor count"; });
  const uint64_t n_kv = c.get<uint64_t>([] { return "the key/value count"; });
  // Each kv needs >= 13 bytes (key length, type, 1-byte value); each tensor info >= 32.
  if (n_kv > c.left() / 13)
    fail(fmt::format("field 'n_kv' = {} key/values cannot fit in the {} bytes left (expected at most {})", n_kv, c.left(),
                     c.left() / 13));
  if (n_tensors > c.left() / 32)
    fail(fmt::format("field 'n_tensors' = {} tensor infos cannot fit in the {} bytes left (expected at most {})", n_tensors,
                     c.left(), c.left() / 32));

  // Key/values.
  std::unordered_set<std::string> keys;
  kv_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    gguf_kv kv;
    kv.key = c.str([&] { return fmt::format("the key of key/value {}", i); });
    if (!keys.insert(kv.key).second) fail(fmt::format("key '{}' appears twice", kv.key));
    const auto kdesc = [&] { return fmt::format("key '{}'", kv.key); };
    const uint32_t t = c.get<uint32_t>(kdesc);
    if (!valid_value_type(t)) fail(fmt::format("key '{}' has value type {}; expected 0..12", kv.key, t));
    kv.type = static_cast<gguf_type>(t);
    if (kv.type != gguf_type::array) {
      kv.value = read_scalar(c, kv.type, kdesc);
    } else {
      const uint32_t at = c.get<uint32_t>(kdesc);
      if (!valid_value_type(at)) fail(fmt::format("key '{}' is an array of type {}; expected 0..12", kv.key, at));
      kv.array_type = static_cast<gguf_type>(at);
      if (kv.array_type == gguf_type::array) fail(fmt::format("key '{}' is an array of arrays (nested arrays are not supported)", kv.key));
      const uint64_t count = c.get<uint64_t>(kdesc);
      if (count > c.left() / min_value_bytes(kv.array_type))
        fail(fmt::format("key '{}' claims {} elements of {}; the {} bytes left hold at most {}", kv.key, count,
                         gguf_type_name(kv.array_type), c.left(), c.left() / min_value_bytes(kv.array_type)));
      kv.value = nlohmann::json::array();
      auto& arr = kv.value.get_ref<nlohmann::json::array_t&>();
      arr.reserve(static_cast<size_t>(count));
      for (uint64_t k = 0; k < count; ++k)
        arr.push_back(read_scalar(c, kv.array_type, [&] { return fmt::format("key '{}' element {}", kv.key, k); }));
    }
    kv_.push_back(std::move(kv));
  }
  if (const gguf_kv* a = find_kv("general.alignment")) {
    if (a->type != gguf_type::u32)
      fail(fmt::format("key 'general.alignment' is a {}; expected u32", gguf_type_name(a->type)));
    const uint64_t v = a->value.get<uint64_t>();
    if (v == 0 || (v & (v - 1)) != 0) fail(fmt::format("key 'general.alignment' = {}; expected a power of two", v));
    alignment_ = v;
  }

  // Tensor infos.
  std::unordered_set<std::string> names;
  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    gguf_tensor_info t;
    t.name = c.str([&] { return fmt::format("the name of tensor {}", i); });
    if (!names.insert(t.name).second) fail(fmt::format("tensor '{}' appears twice", t.name));
    const auto tdesc = [&] { return fmt::format("tensor '{}'", t.name); };
    auto tfail = [&](const std::string& field, const std::string& msg) {
      fail(fmt::format("tensor '{}' field '{}': {}", t.name, field, msg));
    };
    const uint32_t n_dims = c.get<uint32_t>(tdesc);
    if (n_dims < 1 || n_dims > 4) tfail("n_dims", fmt::format("{}; expected 1..4", n_dims));
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const int64_t ne = c.get<int64_t>(tdesc);
      if (ne <= 0) tfail(fmt::format("ne[{}]", d), fmt::format("{}; expected a positive size", ne));
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(ne), &numel) ||
          numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        tfail("ne", "the element count overflows 2^63");
      t.ne.push_back(ne);
    }
    const uint32_t type = c.get<uint32_t>(tdesc);
    const type_entry* te = type_of(type);
    if (!te)
      tfail("type", fmt::format("ggml type {} is not supported (expected {})", type, kTypeList));
    t.type = te->t;
    t.offset = c.get<uint64_t>(tdesc);
    if (t.ne[0] % te->block != 0)
      tfail("ne[0]", fmt::format("{} is not a multiple of the {} block size {}", t.ne[0], te->name, te->block));
    if (__builtin_mul_overflow(numel / static_cast<uint64_t>(te->block), static_cast<uint64_t>(te->bytes), &t.bytes))
      tfail("ne", "the byte count overflows 2^64");
    tensors_.push_back(std::move(t));
  }

  // Data: starts at the next multiple of the alignment; every tensor aligned and inside the file.
  const uint64_t data_start = align_up(c.pos(), alignment_);  // pos <= size < 2^63, alignment <= 2^31
  for (const gguf_tensor_info& t : tensors_) {
    if (t.offset % alignment_ != 0)
      fail(fmt::format("tensor '{}' field 'offset': {} is not a multiple of the alignment {}", t.name, t.offset, alignment_));
    if (data_start > size || t.offset > size - data_start || t.bytes > size - data_start - t.offset)
      fail(fmt::format("tensor '{}' field 'offset': data [{}, {}) of the data section at byte {} runs past the end of "
                       "the {}-byte file (truncated?)",
                       t.name, t.offset, t.offset + t.bytes, data_start, size));
  }
  // No two tensors share bytes (a write to one would change the other; ggml lays them out one
  // after another). Gaps are allowed: alignment padding, and writers may order tensors freely.
  std::vector<const gguf_tensor_info*> order;
  for (const auto& t : tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const gguf_tensor_info* a, const gguf_tensor_info* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    const gguf_tensor_info& a = *order[i - 1];
    const gguf_tensor_info& b = *order[i];
    if (b.offset < a.offset + a.bytes)
      fail(fmt::format("tensor '{}' (data [{}, {})) overlaps tensor '{}' (data [{}, {}))", b.name, b.offset,
                       b.offset + b.bytes, a.name, a.offset, a.offset + a.bytes));
  }
  data_ = data_start <= size ? base + data_start : nullptr;
}

gguf_file::~gguf_file() = default;

const gguf_kv* gguf_file::find_kv(const std::string& key) const {
  for (const auto& kv : kv_)
    if (kv.key == key) return &kv;
  return nullptr;
}

namespace {
const gguf_kv& require_kv(const gguf_file& f, const std::string& key) {
  const gguf_kv* kv = f.find_kv(key);
  if (!kv) throw error(fmt::format("GGUF file '{}': no key '{}'", f.path(), key));
  return *kv;
}

[[noreturn]] void wrong_kind(const gguf_file& f, const gguf_kv& kv, const char* expected) {
  std::string found = gguf_type_name(kv.type);
  if (kv.type == gguf_type::array) found = fmt::format("array of {}", gguf_type_name(kv.array_type));
  throw error(fmt::format("GGUF file '{}': key '{}' is a {}; expected {}", f.path(), kv.key, found, expected));
}

int64_t json_to_int(const gguf_file& f, const std::string& key, gguf_type t, const nlohmann::json& v) {
  if (is_unsigned_type(t)) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw error(fmt::format("GGUF file '{}': key '{}' = {} does not fit in int64", f.path(), key, u));
    return static_cast<int64_t>(u);
  }
  return v.get<int64_t>();
}
}  // namespace

int64_t gguf_file::get_int(const std::string& key) const {
  const gguf_kv& kv = require_kv(*this, key);
  if (!is_int_type(kv.type)) wrong_kind(*this, kv, "an integer");
  return json_to_int(*this, key, kv.type, kv.value);
}

double gguf_file::get_float(const std::string& key) const {
  const gguf_kv& kv = require_kv(*this, key);
  if (is_float_type(kv.type)) return kv.value.get<double>();
  if (is_int_type(kv.type)) return static_cast<double>(json_to_int(*this, key, kv.type, kv.value));
  wrong_kind(*this, kv, "a number");
}

std::string gguf_file::get_string(const std::string& key) const {
  const gguf_kv& kv = require_kv(*this, key);
  if (kv.type != gguf_type::string) wrong_kind(*this, kv, "a string");
  return kv.value.get<std::string>();
}

std::vector<std::string> gguf_file::get_string_array(const std::string& key) const {
  const gguf_kv& kv = require_kv(*this, key);
  if (kv.type != gguf_type::array || kv.array_type != gguf_type::string) wrong_kind(*this, kv, "an array of strings");
  std::vector<std::string> out;
  out.reserve(kv.value.size());
  for (const auto& v : kv.value) out.push_back(v.get<std::string>());
  return out;
}

std::vector<int64_t> gguf_file::get_int_array(const std::string& key) const {
  const gguf_kv& kv = require_kv(*this, key);
  if (kv.type != gguf_type::array || !is_int_type(kv.array_type)) wrong_kind(*this, kv, "an array of integers");
  std::vector<int64_t> out;
  out.reserve(kv.value.size());
  for (const auto& v : kv.value) out.push_back(json_to_int(*this, key, kv.array_type, v));
  return out;
}

std::vector<float> gguf_file::get_float_array(const std::string& key) const {
  const gguf_kv& kv = require_kv(*this, key);
  if (kv.type != gguf_type::array || !(is_float_type(kv.array_type) || is_int_type(kv.array_type)))
    wrong_kind(*this, kv, "an array of numbers");
  std::vector<float> out;
  out.reserve(kv.value.size());
  for (const auto& v : kv.value) {
    float x = 0;
    const double d = is_int_type(kv.array_type) ? static_cast<double>(json_to_int(*this, key, kv.array_type, v)) : v.get<double>();
    if (!double_to_f32(d, &x))
      throw error(fmt::format("GGUF file '{}': key '{}' holds {}, beyond float32's range", path_, key, d));
    out.push_back(x);
  }
  return out;
}

const gguf_tensor_info* gguf_file::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const gguf_tensor_info& gguf_file::get(const std::string& name) const {
  const gguf_tensor_info* t = find(name);
  if (!t) throw error(fmt::format("GGUF file '{}': no tensor named '{}' ({} tensors in the file)", path_, name, tensors_.size()));
  return *t;
}

const uint8_t* gguf_file::raw(const gguf_tensor_info& t) const { return data_ + t.offset; }

std::vector<float> gguf_file::read_f32(const std::string& name) const {
  const gguf_tensor_info& t = get(name);
  const uint8_t* p = raw(t);  // validated: t.bytes bytes from here are in the file
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<float> y(n);
  switch (t.type) {
    case ggml_type::f32:
      std::memcpy(y.data(), p, n * 4);
      break;
    case ggml_type::f16:
    case ggml_type::bf16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        y[i] = t.type == ggml_type::f16 ? fp16_to_f32(h) : bf16_to_f32(h);
      }
      break;
    case ggml_type::q8_0:  // ggml dequantize_row_q8_0: y = qs[j] * d
      for (size_t b = 0; b < n / kQK; ++b) {
        const uint8_t* blk = p + b * 34;
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        const float d = fp16_to_f32(dh);
        for (int j = 0; j < kQK; ++j) y[b * kQK + j] = static_cast<float>(static_cast<int8_t>(blk[2 + j])) * d;
      }
      break;
    case ggml_type::q4_0:  // ggml dequantize_row_q4_0: y[j] = (lo - 8) * d, y[j + 16] = (hi - 8) * d
      for (size_t b = 0; b < n / kQK; ++b) {
        const uint8_t* blk = p + b * 18;
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        const float d = fp16_to_f32(dh);
        for (int j = 0; j < kQK / 2; ++j) {
          y[b * kQK + j] = static_cast<float>((blk[2 + j] & 0x0f) - 8) * d;
          y[b * kQK + j + kQK / 2] = static_cast<float>((blk[2 + j] >> 4) - 8) * d;
        }
      }
      break;
    case ggml_type::q4_1:  // dequantize_row_*: lowbit's dequantize is their arithmetic
    case ggml_type::q5_0:
    case ggml_type::q5_1:
    case ggml_type::q2_k:
    case ggml_type::q3_k:
    case ggml_type::q4_k:
    case ggml_type::q5_k:
    case ggml_type::q6_k:
      dequantize(decode_ggml_blocks(p, static_cast<int64_t>(n) / t.ne[0], t.ne[0], t.type), y.data());
      break;
    case ggml_type::mxfp4:  // ggml dequantize_row_mxfp4: y = kvalues_mxfp4[q] * E8M0_TO_FP32_HALF(e)
      for (size_t b = 0; b < n / kQK; ++b) {
        const uint8_t* blk = p + b * 17;
        const float d = e8m0_to_f32_half(blk[0]);
        for (int j = 0; j < kQK / 2; ++j) {
          y[b * kQK + j] = static_cast<float>(kE2M1x2[blk[1 + j] & 0x0f]) * d;
          y[b * kQK + j + kQK / 2] = static_cast<float>(kE2M1x2[blk[1 + j] >> 4]) * d;
        }
      }
      break;
  }
  return y;
}

// ---- ggml blocks <-> quantized_tensor ----------------------------------------------------------------
namespace {

// The blocks of 32 (q4_0, q4_1, q5_0, q5_1, q8_0, mxfp4): a header (fp16 d, then q4_1/q5_1's fp16
// m; mxfp4's E8M0 byte), q5_0/q5_1's u32 qh (bit j: bit 4 of value j), then the codes: q8_0's 32
// bytes, or 16 bytes of low nibbles pairing value j (low) with value j + 16 (high).
struct block32_layout {
  bool e8m0 = false, min = false, qh = false, bytes8 = false;
  int header() const { return e8m0 ? 1 : min ? 4 : 2; }
  int codes_at() const { return header() + (qh ? 4 : 0); }
};
block32_layout block32_layout_of(ggml_type t) {
  block32_layout l;
  l.e8m0 = t == ggml_type::mxfp4;
  l.min = t == ggml_type::q4_1 || t == ggml_type::q5_1;
  l.qh = t == ggml_type::q5_0 || t == ggml_type::q5_1;
  l.bytes8 = t == ggml_type::q8_0;
  return l;
}

void encode_block32(const quantized_tensor& q, ggml_type type, int64_t r, int64_t b, uint8_t* blk) {
  const block32_layout l = block32_layout_of(type);
  const size_t gi = static_cast<size_t>(r * (q.cols / kQK) + b);
  const float s = q.scales[gi];
  if (l.e8m0) {
    uint8_t e = 0xff;  // NaN scale
    if (!std::isnan(s)) {
      int ex = 0;
      const float m = std::frexp(s, &ex);  // s = m * 2^ex, m in [0.5, 1)
      if (m != 0.5f || ex - 1 < -127 || ex - 1 > 127)
        throw error(fmt::format("encode_ggml_blocks: block {} of row {} has scale {}; E8M0 holds 2^-127..2^127 or NaN", b,
                                r, s));
      e = static_cast<uint8_t>(ex - 1 + 127);
    }
    blk[0] = e;
  } else {
    const uint16_t d = exact_fp16(s, b, r);
    std::memcpy(blk, &d, 2);
    if (l.min) {
      const uint16_t m = exact_fp16(q.super_scales[gi], b, r);
      std::memcpy(blk + 2, &m, 2);
    }
    if (has_fixed_zero_point(q.fmt)) {
      const int32_t z = int32_t{1} << (q.fmt.element.bits - 1);
      if (q.zero_points[gi] != z && !std::isnan(s))
        throw error(fmt::format("encode_ggml_blocks: block {} of row {} has zero point {}; {} fixes it at {}", b, r,
                                q.zero_points[gi], ggml_type_name(type), z));
    }
  }
  const int bits = q.fmt.element.bits;
  uint32_t codes[kQK];
  unpack_codes(q.codes.data() + r * q.row_bytes + b * kQK * bits / 8, kQK, bits, codes);
  uint8_t* qs = blk + l.codes_at();
  if (l.bytes8) {
    for (int j = 0; j < kQK; ++j) qs[j] = static_cast<uint8_t>(codes[j]);
    return;
  }
  for (int j = 0; j < kQK / 2; ++j) qs[j] = static_cast<uint8_t>((codes[j] & 0x0f) | ((codes[j + kQK / 2] & 0x0f) << 4));
  if (l.qh) {
    uint32_t qh = 0;
    for (int j = 0; j < kQK; ++j) qh |= ((codes[j] >> 4) & 1u) << j;
    std::memcpy(blk + l.header(), &qh, 4);
  }
}

void decode_block32(const uint8_t* blk, ggml_type type, int64_t r, int64_t b, quantized_tensor& q) {
  const block32_layout l = block32_layout_of(type);
  const size_t gi = static_cast<size_t>(r * (q.cols / kQK) + b);
  if (l.e8m0) {
    // E8M0: 2^(e-127); e = 255 is NaN (OCP), which lowbit's e8m0 scale stores as NaN.
    q.scales[gi] = blk[0] == 0xff ? std::numeric_limits<float>::quiet_NaN() : std::ldexp(1.0f, blk[0] - 127);
  } else {
    uint16_t d;
    std::memcpy(&d, blk, 2);
    q.scales[gi] = fp16_to_f32(d);
    if (l.min) {
      uint16_t m;
      std::memcpy(&m, blk + 2, 2);
      q.super_scales[gi] = fp16_to_f32(m);
    }
    // q4_0's / q5_0's zero point is 8 / 16; a NaN group carries 0, as lowbit's quantize stores it.
    if (has_fixed_zero_point(q.fmt))
      q.zero_points[gi] = std::isnan(q.scales[gi]) ? 0 : int32_t{1} << (q.fmt.element.bits - 1);
  }
  const uint8_t* qs = blk + l.codes_at();
  uint32_t codes[kQK];
  if (l.bytes8) {
    for (int j = 0; j < kQK; ++j) codes[j] = qs[j];
  } else {
    uint32_t qh = 0;
    if (l.qh) std::memcpy(&qh, blk + l.header(), 4);
    for (int j = 0; j < kQK / 2; ++j) {  // elements j and j + 16
      codes[j] = (qs[j] & 0x0fu) | (((qh >> j) & 1u) << 4);
      codes[j + kQK / 2] = (qs[j] >> 4) | (((qh >> (j + kQK / 2)) & 1u) << 4);
    }
  }
  const int bits = q.fmt.element.bits;
  pack_codes(codes, kQK, bits, q.codes.data() + r * q.row_bytes + b * kQK * bits / 8);
}

}  // namespace

std::vector<uint8_t> encode_ggml_blocks(const quantized_tensor& q, ggml_type type) {
  const int bb = type_of(type).bytes;
  ggml_type_format(type);  // throws for a non-block type
  if (!layout_matches(q.fmt, type))
    throw error(fmt::format("encode_ggml_blocks: the tensor is in {}; ggml {} expects {}", format_name(q.fmt),
                            ggml_type_name(type), type == ggml_type::mxfp4 ? "mxfp4 (e2m1/g32:e8m0)" : ggml_type_name(type)));
  const int block = type_of(type).block;
  if (q.rows < 0 || q.cols < 0 || q.cols % block != 0)
    throw shape_error(fmt::format("encode_ggml_blocks: shape [{}, {}]; {} needs rows of a multiple of {}", q.rows, q.cols,
                                  ggml_type_name(type), block));
  const quantized_tensor shape = quantized_tensor::allocate(q.fmt, q.rows, q.cols);
  if (q.row_bytes != shape.row_bytes || q.codes.size() != shape.codes.size() || q.scales.size() != shape.scales.size() ||
      q.zero_points.size() != shape.zero_points.size() || q.super_scales.size() != shape.super_scales.size())
    throw shape_error(fmt::format("encode_ggml_blocks: codes/scales sizes do not match shape [{}, {}]", q.rows, q.cols));
  const int64_t nb_row = q.cols / block;
  std::vector<uint8_t> out(static_cast<size_t>(q.rows * nb_row * bb));
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t b = 0; b < nb_row; ++b) {
      uint8_t* blk = out.data() + (r * nb_row + b) * bb;
      if (is_kquant(q.fmt)) encode_kquant_block(q, r, b, blk);
      else encode_block32(q, type, r, b, blk);
    }
  return out;
}

quantized_tensor decode_ggml_blocks(const uint8_t* bytes, int64_t rows, int64_t cols, ggml_type type) {
  const format f = ggml_type_format(type);
  const int bb = type_of(type).bytes, block = type_of(type).block;
  if (rows < 0 || cols < 0 || cols % block != 0)
    throw shape_error(fmt::format("decode_ggml_blocks: shape [{}, {}]; {} needs rows of a multiple of {}", rows, cols,
                                  ggml_type_name(type), block));
  int64_t numel = 0;
  if (__builtin_mul_overflow(rows, cols, &numel) || numel > (int64_t{1} << 48))
    throw shape_error(fmt::format("decode_ggml_blocks: shape [{}, {}] is too large", rows, cols));
  if (numel > 0 && !bytes) throw error("decode_ggml_blocks: no data");
  quantized_tensor q = quantized_tensor::allocate(f, rows, cols);
  const int64_t nb_row = cols / block;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < nb_row; ++b) {
      const uint8_t* blk = bytes + (r * nb_row + b) * bb;
      if (is_kquant(f)) decode_kquant_block(blk, r, b, q);
      else decode_block32(blk, type, r, b, q);
    }
  return q;
}

// ---- writer ---------------------------------------------------------------------------------------
void gguf_writer::add_kv(gguf_kv kv) {
  if (kv.key.empty()) throw error("gguf_writer: a key must not be empty");
  for (const auto& k : kv_)
    if (k.key == kv.key) throw error(fmt::format("gguf_writer: key '{}' is added twice", kv.key));
  if (!valid_value_type(static_cast<uint32_t>(kv.type)))
    throw error(fmt::format("gguf_writer: key '{}' has value type {}; expected 0..12", kv.key, static_cast<uint32_t>(kv.type)));
  if (kv.type == gguf_type::array) {
    if (!valid_value_type(static_cast<uint32_t>(kv.array_type)) || kv.array_type == gguf_type::array)
      throw error(fmt::format("gguf_writer: key '{}': arrays hold scalars or strings (nested arrays are not supported)", kv.key));
    if (!kv.value.is_array()) throw error(fmt::format("gguf_writer: key '{}' is declared an array; its value is not", kv.key));
    nlohmann::json arr = nlohmann::json::array();
    auto& a = arr.get_ref<nlohmann::json::array_t&>();
    a.reserve(kv.value.size());
    size_t i = 0;
    for (const auto& v : kv.value) {
      a.push_back(normalize_scalar(kv.array_type, v, fmt::format("gguf_writer: key '{}' element {}", kv.key, i)));
      ++i;
    }
    kv.value = std::move(arr);
  } else {
    kv.value = normalize_scalar(kv.type, kv.value, fmt::format("gguf_writer: key '{}'", kv.key));
  }
  kv_.push_back(std::move(kv));
}

void gguf_writer::add_u32(const std::string& key, uint32_t v) { add_kv({key, gguf_type::u32, gguf_type::u32, v}); }
void gguf_writer::add_f32(const std::string& key, float v) {
  add_kv({key, gguf_type::f32, gguf_type::u32, static_cast<double>(v)});
}
void gguf_writer::add_string(const std::string& key, const std::string& v) {
  add_kv({key, gguf_type::string, gguf_type::u32, v});
}
void gguf_writer::add_bool(const std::string& key, bool v) { add_kv({key, gguf_type::boolean, gguf_type::u32, v}); }
void gguf_writer::add_string_array(const std::string& key, const std::vector<std::string>& v) {
  add_kv({key, gguf_type::array, gguf_type::string, v});
}
void gguf_writer::add_f32_array(const std::string& key, const std::vector<float>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (float x : v) a.push_back(static_cast<double>(x));
  add_kv({key, gguf_type::array, gguf_type::f32, std::move(a)});
}
void gguf_writer::add_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (int32_t x : v) a.push_back(static_cast<int64_t>(x));
  add_kv({key, gguf_type::array, gguf_type::i32, std::move(a)});
}

namespace {
// Checks a tensor to add and returns its byte count; rows/cols as lowbit sees it.
uint64_t check_tensor(const std::vector<std::string>& names, const std::string& name, const std::vector<int64_t>& shape,
                      ggml_type type, int64_t* rows, int64_t* cols) {
  const type_entry& te = type_of(type);
  if (name.empty() || name.size() > 63)
    throw error(fmt::format("gguf_writer: tensor name '{}' must have 1..63 bytes (ggml's GGML_MAX_NAME)", name));
  for (const auto& n : names)
    if (n == name) throw error(fmt::format("gguf_writer: tensor '{}' is added twice", name));
  if (shape.empty() || shape.size() > 4)
    throw shape_error(fmt::format("gguf_writer: tensor '{}' has {} dimensions; GGUF takes 1..4", name, shape.size()));
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d <= 0) throw shape_error(fmt::format("gguf_writer: tensor '{}' has a dimension {}; expected positive sizes", name, d));
    if (__builtin_mul_overflow(n, d, &n) || n > (int64_t{1} << 48))
      throw shape_error(fmt::format("gguf_writer: tensor '{}' is too large", name));
  }
  *cols = shape.back();
  *rows = n / *cols;
  if (*cols % te.block != 0)
    throw shape_error(fmt::format("gguf_writer: tensor '{}' has rows of {} elements; {} needs a multiple of {}", name, *cols,
                                  te.name, te.block));
  return static_cast<uint64_t>(n / te.block * te.bytes);
}
}  // namespace

std::vector<uint8_t> encode_ggml_floats(const float* data, size_t n, ggml_type type) {
  std::vector<uint8_t> bytes;
  if (type == ggml_type::f32) {
    bytes.resize(n * 4);
    std::memcpy(bytes.data(), data, n * 4);
  } else if (type == ggml_type::f16 || type == ggml_type::bf16) {
    bytes.resize(n * 2);
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = type == ggml_type::f16 ? f32_to_fp16(data[i]) : f32_to_bf16(data[i]);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  } else {
    throw error(fmt::format("encode_ggml_floats: {} is not a float type", ggml_type_name(type)));
  }
  return bytes;
}

void gguf_writer::add_tensor(const std::string& name, const std::vector<int64_t>& shape, const float* data, ggml_type type) {
  std::vector<std::string> names;
  for (const auto& t : tensors_) names.push_back(t.name);
  int64_t rows = 0, cols = 0;
  const uint64_t nbytes = check_tensor(names, name, shape, type, &rows, &cols);
  if (!data) throw error(fmt::format("gguf_writer: tensor '{}' has no data", name));
  const size_t n = static_cast<size_t>(rows * cols);
  std::vector<uint8_t> bytes;
  switch (type) {
    case ggml_type::f32:
    case ggml_type::f16:
    case ggml_type::bf16:
      bytes = encode_ggml_floats(data, n, type);
      break;
    default:  // the block-quantized types
      bytes = encode_ggml_blocks(quantize(data, rows, cols, ggml_type_format(type)), type);
      break;
  }
  if (bytes.size() != nbytes) throw error(fmt::format("gguf_writer: internal: tensor '{}' encoded to {} bytes, expected {}", name, bytes.size(), nbytes));
  tensors_.push_back({name, shape, type, std::move(bytes), {}, nbytes});
}

void gguf_writer::add_tensor_deferred(const std::string& name, const std::vector<int64_t>& shape, ggml_type type,
                                      std::function<std::vector<uint8_t>()> bytes) {
  std::vector<std::string> names;
  for (const auto& t : tensors_) names.push_back(t.name);
  int64_t rows = 0, cols = 0;
  const uint64_t nbytes = check_tensor(names, name, shape, type, &rows, &cols);
  tensors_.push_back({name, shape, type, {}, std::move(bytes), nbytes});
}

void gguf_writer::write(const std::string& path, uint32_t alignment) const {
  // general.alignment given as a key wins over the default argument; a conflict is an error.
  uint64_t align = alignment;
  bool have_key = false;
  for (const auto& kv : kv_)
    if (kv.key == "general.alignment") {
      if (kv.type != gguf_type::u32) throw error(fmt::format("cannot write GGUF '{}': key 'general.alignment' must be u32", path));
      const uint64_t v = kv.value.get<uint64_t>();
      if (alignment != 32 && v != alignment)
        throw error(fmt::format("cannot write GGUF '{}': key 'general.alignment' = {} but write() was asked for {}", path, v,
                                alignment));
      align = v;
      have_key = true;
    }
  if (align == 0 || (align & (align - 1)) != 0)
    throw error(fmt::format("cannot write GGUF '{}': alignment {} is not a power of two", path, align));

  sink s;
  s.b.insert(s.b.end(), kMagic, kMagic + 4);
  s.put<uint32_t>(3);
  s.put<uint64_t>(tensors_.size());
  const bool extra_kv = !have_key && align != 32;
  s.put<uint64_t>(kv_.size() + (extra_kv ? 1 : 0));
  for (const auto& kv : kv_) {
    s.str(kv.key);
    s.put<uint32_t>(static_cast<uint32_t>(kv.type));
    if (kv.type == gguf_type::array) {
      s.put<uint32_t>(static_cast<uint32_t>(kv.array_type));
      s.put<uint64_t>(kv.value.size());
      for (const auto& v : kv.value) put_scalar(s, kv.array_type, v);
    } else {
      put_scalar(s, kv.type, kv.value);
    }
  }
  if (extra_kv) {
    s.str("general.alignment");
    s.put<uint32_t>(static_cast<uint32_t>(gguf_type::u32));
    s.put<uint32_t>(static_cast<uint32_t>(align));
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    s.str(t.name);
    s.put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) s.put<int64_t>(*it);  // ne[0] = row length
    s.put<uint32_t>(static_cast<uint32_t>(t.type));
    s.put<uint64_t>(offset);
    offset += align_up(t.size, align);
  }
  s.b.resize(align_up(s.b.size(), align), 0);

  atomic_file_writer w(path);
  w.write(s.b.data(), s.b.size());
  for (const auto& t : tensors_) {
    const std::vector<uint8_t> made = t.deferred ? t.deferred() : std::vector<uint8_t>{};
    const std::vector<uint8_t>& bytes = t.deferred ? made : t.bytes;
    if (bytes.size() != t.size)
      throw error(fmt::format("cannot write GGUF '{}': tensor '{}' made {} bytes, expected {}", path, t.name,
                              bytes.size(), t.size));
    w.write(bytes.data(), bytes.size());
    w.write_zeros(static_cast<size_t>(align_up(t.size, align) - t.size));
  }
  w.commit();
}

}  // namespace lowbit
