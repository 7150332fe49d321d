// GGUF v3 (ggml's model file): magic "GGUF", u32 version, u64 tensor count, u64 kv count, the
// key/values (typed: u8..i64, f32, f64, bool, string, array), the tensor infos (name, n_dims,
// dims ne[0..n) with ne[0] the fastest-varying, ggml type, offset), padding to
// general.alignment (default 32), then the tensor data. All little-endian.
// The reader validates counts, lengths, types, dims and offsets against the file size before use.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/kernels/quantize.hpp"

namespace lowbit {

// Value types of GGUF metadata (the numbers are the file's).
enum class gguf_type : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8,
  array = 9, u64 = 10, i64 = 11, f64 = 12
};

// Tensor types lowbit reads and writes (the numbers are ggml's).
enum class ggml_type : uint32_t {
  f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8,
  q2_k = 10, q3_k = 11, q4_k = 12, q5_k = 13, q6_k = 14, bf16 = 30, mxfp4 = 39
};
const char* ggml_type_name(ggml_type t);
const char* gguf_type_name(gguf_type t);
int ggml_block_size(ggml_type t);    // elements per block (1 for f32/f16/bf16)
int ggml_block_bytes(ggml_type t);   // bytes per block

struct gguf_kv {
  std::string key;
  gguf_type type = gguf_type::u32;
  gguf_type array_type = gguf_type::u32;  // type == array
  nlohmann::json value;                   // number, bool, string or array of them
};

struct gguf_tensor_info {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the row length (fastest)
  ggml_type type = ggml_type::f32;
  uint64_t offset = 0;      // relative to the data section
  uint64_t bytes = 0;
  int64_t numel() const;
  std::vector<int64_t> shape() const;  // lowbit order (outermost first): ne reversed
};

class gguf_file {
 public:
  explicit gguf_file(const std::string& path);  // throws lowbit::error (file, field, expected)
  ~gguf_file();
  gguf_file(const gguf_file&) = delete;
  gguf_file& operator=(const gguf_file&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  const std::vector<gguf_kv>& metadata() const { return kv_; }
  const gguf_kv* find_kv(const std::string& key) const;
  // Typed getters; throw naming the key when it is missing or of another kind (get_int: any
  // integer type that fits int64; get_float: f32, f64 or an integer).
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  // Arrays: of strings, of any integer type, of f32/f64 (throw naming the key otherwise).
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<float> get_float_array(const std::string& key) const;
  const std::vector<gguf_tensor_info>& tensors() const { return tensors_; }
  const gguf_tensor_info* find(const std::string& name) const;
  const gguf_tensor_info& get(const std::string& name) const;
  // Decodes every type above to float32 (exactly as ggml's dequantize_row_*). For
  // MXFP4 that means ggml's doubled-integer table: the E2M1 code -0 (8) reads +0, and the E8M0
  // exponent 0xFF reads as 2^128 (Inf for |q| >= 1), not NaN; decode_ggml_blocks keeps OCP's NaN.
  std::vector<float> read_f32(const std::string& name) const;
  const uint8_t* raw(const gguf_tensor_info& t) const;
  uint64_t alignment() const { return alignment_; }

 private:
  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<gguf_kv> kv_;
  std::vector<gguf_tensor_info> tensors_;
  struct mapping;
  std::unique_ptr<mapping> map_;
  const uint8_t* data_ = nullptr;
};

// Builds a GGUF v3 file; write() is atomic (temp + rename) and throws lowbit::error on failure.
class gguf_writer {
 public:
  void add_kv(gguf_kv kv);
  void add_u32(const std::string& key, uint32_t v);
  void add_f32(const std::string& key, float v);
  void add_string(const std::string& key, const std::string& v);
  void add_bool(const std::string& key, bool v);
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_f32_array(const std::string& key, const std::vector<float>& v);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& v);
  // A float32 tensor of `shape` (outermost first, as lowbit::tensor) stored as `type`; the rows
  // (last dimension) must divide the type's block. Quantized types encode exactly as ggml's
  // quantize_row_*_ref (q4_0 ... q6_k via lowbit's presets of the same names, mxfp4 via OCP MXFP4).
  void add_tensor(const std::string& name, const std::vector<int64_t>& shape, const float* data,
                  ggml_type type);
  // Encoded blocks (the bytes ggml expects for `type`) made by `bytes` when write() reaches the
  // tensor, so a model larger than memory is written one tensor at a time (streaming
  // quantization); write() refuses bytes of another size.
  void add_tensor_deferred(const std::string& name, const std::vector<int64_t>& shape, ggml_type type,
                           std::function<std::vector<uint8_t>()> bytes);
  void write(const std::string& path, uint32_t alignment = 32) const;

 private:
  struct pending {
    std::string name;
    std::vector<int64_t> shape;
    ggml_type type;
    std::vector<uint8_t> bytes;
    std::function<std::vector<uint8_t>()> deferred;  // makes `bytes` at write time when set
    uint64_t size = 0;
  };
  std::vector<gguf_kv> kv_;
  std::vector<pending> tensors_;
};

// n float32 values as a float GGUF tensor's bytes: F32 as they are, F16 / BF16 rounded to nearest
// even; throws for another type.
std::vector<uint8_t> encode_ggml_floats(const float* data, size_t n, ggml_type type);

// ggml block layouts <-> lowbit quantized tensors (rows of `cols` elements, cols % 32 == 0;
// cols % 256 == 0 for the K-quants). Blocks of 32 pair value j (low nibble) with j + 16 (high):
//   q4_0 : fp16 d, u8 qs[16]                                x = (q - 8) * d
//   q4_1 : fp16 d, fp16 m, u8 qs[16]                        x = q * d + m
//   q5_0 : fp16 d, u32 qh (bit j: bit 4 of q_j), u8 qs[16]  x = (q - 16) * d
//   q5_1 : fp16 d, fp16 m, u32 qh, u8 qs[16]                x = q * d + m
//   q8_0 : fp16 d, int8 q[32]                               x = q * d
//   mxfp4: u8 e (E8M0), u8 qs[16]                           x = e2m1(q) * 2^(e-127)
// The K-quants (kernels/kquant.hpp has each block_q*_K's byte layout), per 256 values:
//   q2_k : 84 bytes, 16 sub-blocks of 16, 4-bit sc_j and m_j   x = d * sc_j * q - dmin * m_j
//   q3_k : 110 bytes, 16 sub-blocks of 16, 6-bit sc_j          x = d * sc_j * (q - 4)
//   q4_k : 144 bytes, 8 sub-blocks of 32, 6-bit sc_j and m_j   x = d * sc_j * q - dmin * m_j
//   q5_k : 176 bytes, 8 sub-blocks of 32, 6-bit sc_j and m_j   x = d * sc_j * q - dmin * m_j
//   q6_k : 210 bytes, 16 sub-blocks of 16, int8 sc_j           x = d * sc_j * (q - 32)
// The scales are the float values (fp16 d; 2^(e-127), NaN for e = 0xFF); q4_0/q5_0 zero points
// are 8/16 (0 for a NaN group, as lowbit's quantize stores it); q4_1/q5_1's m is in super_scales.
// encode refuses a tensor of another layout or a scale the block cannot hold exactly.
std::vector<uint8_t> encode_ggml_blocks(const quantized_tensor& q, ggml_type type);
quantized_tensor decode_ggml_blocks(const uint8_t* bytes, int64_t rows, int64_t cols, ggml_type type);

// lowbit's format of a block-quantized ggml type (q4_0 ... q6_k of the same names, mxfp4); throws
// for the float types.
format ggml_type_format(ggml_type t);

}  // namespace lowbit
