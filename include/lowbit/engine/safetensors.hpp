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

// ---- file helpers shared by the safetensors and GGUF readers/writers ---------------------------

// FNV-1a 64 (Fowler-Noll-Vo), byte by byte: lowbit's one content hash (the results store's file
// fingerprints, PTQ's run fingerprint, the shards' checksums). Not cryptographic: it detects
// changes, not tampering.
class fnv1a64 {
 public:
  void add(const void* bytes, uint64_t n);
  void add(const std::string& s) { add(s.data(), s.size()); }
  uint64_t value() const { return h_; }
  std::string hex() const;  // 16 lowercase hex digits

 private:
  uint64_t h_ = 1469598103934665603ull;  // the 64-bit offset basis
};

// IEEE binary16 and bfloat16 <-> float32. The decoders are exact (NaN payloads kept); the
// encoders round to nearest even, overflow to Inf, and write every NaN as the canonical quiet
// NaN (0x7e00 / 0x7fc0).
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float x);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float x);

// A whole file memory-mapped read-only (an empty file maps to data() == nullptr, size() == 0).
// Throws lowbit::error naming the file when it cannot be opened, is not a regular file, or
// cannot be mapped.
class mapped_file {
 public:
  explicit mapped_file(const std::string& path);
  ~mapped_file();
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// The one place lowbit drops pages of a read-only file mapping: streams [p, p + n) through
// `chunk` (when given) in pieces of about 4 MiB (a multiple of `unit` bytes, so no element is
// split), dropping each piece's pages from this process once `chunk` has seen it (they stay in the
// page cache). Every reader that goes through a mapping (tensor reads, conversions, checksums,
// fingerprints) reads this way, so the process's resident set holds about the tensor it returns,
// not every one it has read. Without `chunk` it only drops the pages (after a read that needs the
// region whole, as a GGUF block decode).
void read_mapped(const uint8_t* p, uint64_t n, const std::function<void(const uint8_t*, uint64_t)>& chunk,
                 uint64_t unit = 1);

// Atomic file replacement: bytes go to a temp file "path.tmp-XXXXXX" in the same directory;
// commit() flushes, fsyncs, closes and renames it over `path`. Every step is checked and throws
// lowbit::error (naming the file and strerror); the destructor deletes the temp file unless
// commit() succeeded, so a failure never leaves a partial file behind.
class atomic_file_writer {
 public:
  explicit atomic_file_writer(const std::string& path);
  ~atomic_file_writer();
  atomic_file_writer(const atomic_file_writer&) = delete;
  atomic_file_writer& operator=(const atomic_file_writer&) = delete;
  void write(const void* bytes, size_t n);
  void write_zeros(size_t n);
  uint64_t written() const { return written_; }
  void commit();

 private:
  [[noreturn]] void fail(const char* step, int err);
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  uint64_t written_ = 0;
  bool done_ = false;
};

// A whole text file written atomically (atomic_file_writer): config.json, CSV, JSON reports.
void write_text_file_atomic(const std::string& path, const std::string& text);

}  // namespace lowbit
