// Files: read-only memory maps that release their pages as they are read, and atomic writes
// (temp file + fsync + rename), shared by every reader and writer of lowbit.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace lowbit {

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

// Atomic file replacement: bytes go to a temp file "path.tmp-XXXXXX" in the same directory, locked
// (flock) while it is written (temp files of `path` that no writer holds, left by a process that
// died, are removed first);
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

// An exclusive advisory lock (flock) on a file or directory, held for the object's life: a second
// process asking for the same path is refused at once with lowbit::error("<what>: ... pid"), not
// made to wait (two `quantize` runs with one -o share its checkpoint directory).
class exclusive_lock {
 public:
  exclusive_lock(const std::string& path, const std::string& what);
  ~exclusive_lock();
  exclusive_lock(const exclusive_lock&) = delete;
  exclusive_lock& operator=(const exclusive_lock&) = delete;

 private:
  int fd_ = -1;
};

// The whole of a regular file (`what` names it in messages: "data file", "GPT-2 vocab.bpe").
// A directory, FIFO or device is refused before it is opened, so a pipe never blocks the caller;
// throws lowbit::error naming the file and the reason.
std::string read_file(const std::string& path, const std::string& what);
// The check read_file makes, for readers that open the file themselves (streams, memory maps):
// stat() only, so a FIFO is refused without blocking.
void require_regular_file(const std::string& path, const std::string& what);

// A content fingerprint of a file, "fnv1a64:<16 hex>" over its bytes (read in chunks): what a
// run's config or a model's provenance names instead of a path, so the same model or data found
// elsewhere hashes the same. Throws lowbit::error naming the file when it cannot be read.
std::string file_fingerprint(const std::string& path);

// A whole text file written atomically (atomic_file_writer): config.json, CSV, JSON reports.
void write_text_file_atomic(const std::string& path, const std::string& text);

// The shipped data directory (models, tokenizers, texts) as every front end finds it:
// $LOWBIT_DATA_DIR, else $LOWBIT_DATA, else `built_in` (the build's LOWBIT_DATA_DIR).
// A path in a configuration file (sweep.json, a study's train section): ${NAME} replaced from the
// environment (LOWBIT_DATA_DIR falling back to data_dir), a relative path taken from base_dir
// (when not empty), lexically normal. Errors name `where`.
std::string resolve_config_path(const std::string& s, const std::string& base_dir, const std::string& data_dir,
                                const std::string& where);
std::string shipped_data_dir(const std::string& built_in);

}  // namespace lowbit
