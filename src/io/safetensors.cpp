// safetensors reader/writer, plus the file helpers the GGUF code shares: exact fp16/bf16
// conversions, a read-only memory map and an atomic (temp + fsync + rename) writer.
//
// The reader trusts nothing in the file: the header length is bounded by the file size, the JSON
// is parsed by nlohmann (iterative, no recursion on hostile nesting), and every tensor's dtype,
// shape and data_offsets are checked (numel and byte counts overflow-checked) before any data is
// touched. Data is read with memcpy, so unaligned tensors are fine.
#include "lowbit/io/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <unordered_set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/base/error.hpp"

static_assert(std::endian::native == std::endian::little, "lowbit's file readers assume a little-endian host");

namespace lowbit {

// ---- dtypes -----------------------------------------------------------------------------------------
namespace {

struct dtype_entry {
  st_dtype t;
  const char* name;
  size_t size;
};
constexpr dtype_entry kDtypes[] = {
    {st_dtype::f32, "F32", 4},  {st_dtype::f16, "F16", 2},  {st_dtype::bf16, "BF16", 2},
    {st_dtype::f64, "F64", 8},  {st_dtype::i8, "I8", 1},    {st_dtype::u8, "U8", 1},
    {st_dtype::i16, "I16", 2},  {st_dtype::i32, "I32", 4},  {st_dtype::i64, "I64", 8},
    {st_dtype::boolean, "BOOL", 1},
};

bool dtype_from_name(const std::string& s, st_dtype* t) {
  for (const auto& d : kDtypes)
    if (s == d.name) {
      *t = d.t;
      return true;
    }
  return false;
}

// float64 -> float32, round to nearest even; finite values beyond float's range saturate or go
// to Inf exactly as IEEE rounding says (no out-of-range cast).
float f64_to_f32(double d) {
  constexpr double kMax = std::numeric_limits<float>::max();
  if (std::isfinite(d) && std::fabs(d) > kMax) {
    // The midpoint between FLT_MAX and 2^128 rounds to 2^128 (even) = Inf.
    const bool inf = std::fabs(d) >= 0x1.ffffffp127;
    const float v = inf ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::max();
    return d < 0 ? -v : v;
  }
  return static_cast<float>(d);
}

std::string json_quote(const std::string& s, const std::string& what) {
  try {
    return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
  } catch (const nlohmann::json::exception& e) {
    throw error(fmt::format("{} is not valid UTF-8 (safetensors headers are JSON): {}", what, e.what()));
  }
}

}  // namespace

const char* st_dtype_name(st_dtype t) {
  for (const auto& d : kDtypes)
    if (d.t == t) return d.name;
  return "?";
}

size_t st_dtype_size(st_dtype t) {
  for (const auto& d : kDtypes)
    if (d.t == t) return d.size;
  return 0;
}

int64_t st_tensor_info::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---- reader -----------------------------------------------------------------------------------------
struct safetensors_file::mapping {
  explicit mapping(const std::string& path) : file(path) {}
  mapped_file file;
};

safetensors_file::safetensors_file(const std::string& path) : path_(path) {
  map_ = std::make_unique<mapping>(path);
  const uint8_t* base = map_->file.data();
  const uint64_t size = map_->file.size();
  auto fail = [&](const std::string& msg) -> void {
    throw error(fmt::format("safetensors file '{}': {}", path, msg));
  };
  if (size < 8)
    fail(fmt::format("the file has {} bytes; expected at least 8 (the little-endian header length)", size));
  uint64_t n = 0;
  std::memcpy(&n, base, 8);
  if (n > size - 8)
    fail(fmt::format("header length {} exceeds the {} bytes after the length field (truncated or not a "
                     "safetensors file)",
                     n, size - 8));
  const char* hdr = reinterpret_cast<const char*>(base + 8);
  nlohmann::ordered_json j;
  // JSON objects keep the last of two equal keys; the header's top-level keys are tensor names,
  // so the parser's callback sees every one (depth 1) and the first repeated one is refused.
  std::unordered_set<std::string> keys;
  std::string repeated;
  const auto note_keys = [&](int depth, nlohmann::ordered_json::parse_event_t event, nlohmann::ordered_json& parsed) {
    if (event == nlohmann::ordered_json::parse_event_t::key && depth == 1 && repeated.empty() &&
        !keys.insert(parsed.get<std::string>()).second)
      repeated = parsed.get<std::string>();
    return true;
  };
  try {
    j = nlohmann::ordered_json::parse(hdr, hdr + n, note_keys);
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("the {}-byte header is not valid JSON: {}", n, e.what()));
  }
  if (!repeated.empty()) fail(fmt::format("tensor '{}' appears twice in the header", repeated));
  if (!j.is_object()) fail(fmt::format("the header is a JSON {}; expected an object", j.type_name()));
  const uint64_t data_size = size - 8 - n;
  data_ = base + 8 + n;

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(fmt::format("field '__metadata__' is a JSON {}; expected an object of strings", v.type_name()));
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail(fmt::format("'__metadata__' entry '{}' is a JSON {}; expected a string", m.key(), m.value().type_name()));
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto tfail = [&](const std::string& field, const std::string& msg) {
      fail(fmt::format("tensor '{}' field '{}': {}", name, field, msg));
    };
    if (!v.is_object()) tfail("(entry)", fmt::format("is a JSON {}; expected an object with dtype, shape, data_offsets", v.type_name()));
    st_tensor_info t;
    t.name = name;

    const auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) tfail("dtype", "missing or not a string; expected F32, F16, BF16, F64, I8, U8, I16, I32, I64 or BOOL");
    if (!dtype_from_name(dt->get<std::string>(), &t.dtype))
      tfail("dtype", fmt::format("unsupported dtype '{}'; expected F32, F16, BF16, F64, I8, U8, I16, I32, I64 or BOOL",
                                 dt->get<std::string>()));

    const auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) tfail("shape", "missing or not an array; expected an array of non-negative integers");
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned())
        tfail("shape", fmt::format("has the element {}; expected non-negative integers", d.dump()));
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) || __builtin_mul_overflow(numel, dim, &numel) ||
          numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        tfail("shape", fmt::format("{} has more elements than 2^63 (overflow)", sh->dump()));
      t.shape.push_back(static_cast<int64_t>(dim));
    }

    const auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      tfail("data_offsets", "missing or malformed; expected [begin, end] (non-negative integers)");
    t.begin = (*off)[0].get<uint64_t>();
    t.end = (*off)[1].get<uint64_t>();
    if (t.begin > t.end || t.end > data_size)
      tfail("data_offsets", fmt::format("[{}, {}] is not a range inside the {}-byte data block", t.begin, t.end, data_size));
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(st_dtype_size(t.dtype)), &nbytes) || nbytes != t.end - t.begin)
      tfail("data_offsets", fmt::format("[{}, {}] holds {} bytes; shape {} of {} needs {} x {} bytes", t.begin, t.end,
                                        t.end - t.begin, sh->dump(), st_dtype_name(t.dtype), numel,
                                        st_dtype_size(t.dtype)));
    tensors_.push_back(std::move(t));
  }
  // The data block is the tensors' bytes, each byte in exactly one tensor (the safetensors format
  // allows no holes and no sharing): in offset order every tensor starts where the previous ended
  // and the last ends at the end of the file. Overlapping tensors would alias each other's bytes;
  // a hole is data no tensor owns (room for a second, hidden payload).
  std::vector<const st_tensor_info*> order;
  for (const auto& t : tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const st_tensor_info* a, const st_tensor_info* b) {
    return std::tie(a->begin, a->end) < std::tie(b->begin, b->end);
  });
  uint64_t covered = 0;
  const st_tensor_info* previous = nullptr;
  for (const st_tensor_info* t : order) {
    if (t->begin < covered)
      fail(fmt::format("tensor '{}' (bytes [{}, {}]) overlaps tensor '{}' (bytes [{}, {}])", t->name, t->begin, t->end,
                       previous->name, previous->begin, previous->end));
    if (t->begin > covered)
      fail(fmt::format("bytes [{}, {}] of the data block belong to no tensor (before tensor '{}'); the format "
                       "allows no holes",
                       covered, t->begin, t->name));
    covered = t->end;
    previous = t;
  }
  if (covered != data_size)
    fail(fmt::format("bytes [{}, {}] at the end of the data block belong to no tensor; the format allows no holes",
                     covered, data_size));
}

safetensors_file::~safetensors_file() = default;

const st_tensor_info* safetensors_file::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const st_tensor_info& safetensors_file::get(const std::string& name) const {
  const st_tensor_info* t = find(name);
  if (!t) throw error(fmt::format("safetensors file '{}': no tensor named '{}' ({} tensors in the file)", path_, name, tensors_.size()));
  return *t;
}

const uint8_t* safetensors_file::raw(const st_tensor_info& t) const { return data_ + t.begin; }

std::vector<float> safetensors_file::read_f32(const std::string& name) const {
  const st_tensor_info& t = get(name);
  const uint8_t* p = raw(t);
  const size_t n = static_cast<size_t>(t.numel());  // validated: n * dtype size bytes are in the file
  std::vector<float> out(n);
  if (t.dtype != st_dtype::f32 && t.dtype != st_dtype::f16 && t.dtype != st_dtype::bf16 && t.dtype != st_dtype::f64)
    throw error(fmt::format("safetensors file '{}': tensor '{}' has dtype {}; read_f32 expects F32, F16, BF16 or F64",
                            path_, name, st_dtype_name(t.dtype)));
  // Chunk by chunk, each chunk's pages released once converted: the process holds the tensor,
  // not the tensor and its file pages (which matters when a model is streamed through).
  const size_t size = st_dtype_size(t.dtype);
  read_mapped(p, uint64_t(n) * size, [&](const uint8_t* chunk, uint64_t bytes) {
    const size_t i0 = size_t(chunk - p) / size, i1 = i0 + size_t(bytes) / size;
    if (t.dtype == st_dtype::f32) std::memcpy(out.data() + i0, chunk, bytes);
    else for (size_t i = i0; i < i1; ++i) {
      const uint8_t* x = p + size * i;
      switch (t.dtype) {
        case st_dtype::f16: {
          uint16_t h;
          std::memcpy(&h, x, 2);
          out[i] = fp16_to_f32(h);
          break;
        }
        case st_dtype::bf16: {
          uint16_t h;
          std::memcpy(&h, x, 2);
          out[i] = bf16_to_f32(h);
          break;
        }
        default: {
          double d;
          std::memcpy(&d, x, 8);
          out[i] = f64_to_f32(d);
        }
      }
    }
  }, size);
  return out;
}

// ---- writer -----------------------------------------------------------------------------------------
void write_safetensors(const std::string& path, const std::vector<st_write_tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  auto fail = [&](const std::string& msg) -> void {
    throw error(fmt::format("cannot write safetensors '{}': {}", path, msg));
  };
  // Header: __metadata__ first, then the tensors in the given order with contiguous offsets.
  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) h += ',';
      first = false;
      h += json_quote(k, fmt::format("metadata key '{}'", k)) + ':' + json_quote(v, fmt::format("metadata value of '{}'", k));
    }
    h += '}';
  }
  std::unordered_set<std::string> names;
  std::vector<uint64_t> counts;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__") fail("a tensor cannot be named '__metadata__'");
    if (!names.insert(t.name).second) fail(fmt::format("tensor '{}' is given twice", t.name));
    const bool as_bytes = t.raw || t.load_bytes;
    if (!as_bytes && t.dtype != st_dtype::f32 && t.dtype != st_dtype::f16 && t.dtype != st_dtype::bf16 && t.dtype != st_dtype::f64)
      fail(fmt::format("tensor '{}' has dtype {}; the writer converts float32 data to F32, F16, BF16 or F64 only",
                       t.name, st_dtype_name(t.dtype)));
    uint64_t n = 1;
    std::string shape = "[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (t.shape[i] < 0) fail(fmt::format("tensor '{}' has a negative dimension {}", t.name, t.shape[i]));
      if (__builtin_mul_overflow(n, static_cast<uint64_t>(t.shape[i]), &n) || n > (uint64_t{1} << 60))
        fail(fmt::format("tensor '{}' has too many elements", t.name));
      shape += (i ? "," : "") + std::to_string(t.shape[i]);
    }
    shape += ']';
    if (n > 0 && !t.data && !as_bytes && !t.load_values) fail(fmt::format("tensor '{}' has {} elements but no data", t.name, n));
    const uint64_t bytes = n * st_dtype_size(t.dtype);
    if (h.size() > 1) h += ',';
    h += json_quote(t.name, fmt::format("tensor name '{}'", t.name)) + ":{\"dtype\":\"" + st_dtype_name(t.dtype) +
         "\",\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(offset) + "," +
         std::to_string(offset + bytes) + "]}";
    offset += bytes;
    counts.push_back(n);
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');  // 8 + header length is a multiple of 8: data stays aligned

  atomic_file_writer w(path);
  const uint64_t hn = h.size();
  w.write(&hn, 8);
  w.write(h.data(), h.size());
  std::vector<uint8_t> buf;
  constexpr size_t kChunk = 1 << 16;  // elements converted per write
  for (size_t ti = 0; ti < tensors.size(); ++ti) {
    const st_write_tensor& t = tensors[ti];
    const uint64_t n = counts[ti];
    if (t.raw || t.load_bytes) {
      std::vector<uint8_t> loaded;
      if (t.load_bytes) {
        loaded = t.load_bytes();
        if (loaded.size() != n * st_dtype_size(t.dtype))
          fail(fmt::format("tensor '{}': {} bytes loaded, its header says {}", t.name, loaded.size(),
                           n * st_dtype_size(t.dtype)));
      }
      w.write(t.load_bytes ? loaded.data() : t.raw, static_cast<size_t>(n) * st_dtype_size(t.dtype));
      continue;
    }
    std::vector<float> loaded;
    if (t.load_values) {
      loaded = t.load_values();
      if (loaded.size() != n)
        fail(fmt::format("tensor '{}': {} values loaded, its header says {}", t.name, loaded.size(), n));
    }
    const float* values = t.load_values ? loaded.data() : t.data;
    if (t.dtype == st_dtype::f32) {
      w.write(values, static_cast<size_t>(n) * 4);
      continue;
    }
    for (uint64_t i0 = 0; i0 < n; i0 += kChunk) {
      const size_t k = static_cast<size_t>(std::min<uint64_t>(kChunk, n - i0));
      const float* x = values + i0;
      if (t.dtype == st_dtype::f64) {
        buf.resize(k * 8);
        for (size_t i = 0; i < k; ++i) {
          const double d = x[i];
          std::memcpy(buf.data() + 8 * i, &d, 8);
        }
      } else {
        buf.resize(k * 2);
        for (size_t i = 0; i < k; ++i) {
          const uint16_t v = t.dtype == st_dtype::f16 ? f32_to_fp16(x[i]) : f32_to_bf16(x[i]);
          std::memcpy(buf.data() + 2 * i, &v, 2);
        }
      }
      w.write(buf.data(), buf.size());
    }
  }
  w.commit();
}


}  // namespace lowbit
