// safetensors: an 8-byte little-endian header length N, a JSON header of N bytes
//   {"name": {"dtype": "F32"|"F16"|"BF16"|..., "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "string value"}}
// then the data block; offsets are relative to the data block. The reader memory-maps the file
// and validates every field before it touches data (a header that lies is refused).
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/base/files.hpp"
#include "lowbit/base/hash.hpp"
#include "lowbit/formats/half.hpp"

namespace lowbit {

enum class st_dtype { f32, f16, bf16, f64, i8, u8, i16, i32, i64, boolean };
const char* st_dtype_name(st_dtype t);
size_t st_dtype_size(st_dtype t);

struct st_tensor_info {
  std::string name;
  st_dtype dtype = st_dtype::f32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets in the data block
  int64_t numel() const;
};

class safetensors_file {
 public:
  explicit safetensors_file(const std::string& path);  // throws lowbit::error (file, field, expected)
  ~safetensors_file();
  safetensors_file(const safetensors_file&) = delete;
  safetensors_file& operator=(const safetensors_file&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<st_tensor_info>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const st_tensor_info* find(const std::string& name) const;
  const st_tensor_info& get(const std::string& name) const;  // throws naming the tensor
  // The tensor as float32 (F32, F16, BF16, F64 converted exactly where representable).
  std::vector<float> read_f32(const std::string& name) const;
  const uint8_t* raw(const st_tensor_info& t) const;

 private:
  std::string path_;
  std::vector<st_tensor_info> tensors_;
  std::map<std::string, std::string> metadata_;
  struct mapping;
  std::unique_ptr<mapping> map_;
  const uint8_t* data_ = nullptr;
};

// One tensor to write; data holds numel elements of `dtype` (f32 source converted by the writer
// when dtype is f16/bf16: round to nearest even).
struct st_write_tensor {
  std::string name;
  st_dtype dtype = st_dtype::f32;
  std::vector<int64_t> shape;
  const float* data = nullptr;
  const void* raw = nullptr;  // instead of data: numel elements of dtype, written as they are
  // Instead of data / raw, for writing a model larger than memory one tensor at a time: called
  // when the writer reaches the tensor (numel float32 values, or numel elements of dtype as bytes).
  std::function<std::vector<float>()> load_values = nullptr;
  std::function<std::vector<uint8_t>()> load_bytes = nullptr;
};

// Atomic: writes path.tmp-XXXX then renames; throws lowbit::error on any I/O failure (full
// disk included) and leaves no partial file behind.
void write_safetensors(const std::string& path, const std::vector<st_write_tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});


}  // namespace lowbit
