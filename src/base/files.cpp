// Memory maps and atomic writes. Every step of a write is checked (a full disk is an error naming
// the file, never a truncated output), and a failed write leaves no partial file behind.
#include "lowbit/base/files.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <vector>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/base/hash.hpp"

namespace lowbit {

// ---- mapped_file ------------------------------------------------------------------------------------
mapped_file::mapped_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    throw error(fmt::format("cannot open '{}': {}", path, std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw error(fmt::format("cannot stat '{}': {}", path, std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw error(fmt::format("'{}' is not a regular file (expected a model file)", path));
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, static_cast<size_t>(size_), PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw error(fmt::format("cannot memory-map '{}' ({} bytes): {}", path, size_, std::strerror(err)));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

mapped_file::~mapped_file() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), static_cast<size_t>(size_));
}

namespace {
void release_mapped_pages(const void* p, uint64_t n) {
  if (!p || n == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + n;
  // Advice only: a failure leaves the pages mapped, which costs memory, not correctness.
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}
}  // namespace

void read_mapped(const uint8_t* p, uint64_t n, const std::function<void(const uint8_t*, uint64_t)>& chunk,
                 uint64_t unit) {
  const uint64_t piece = std::max<uint64_t>(1, (uint64_t(4) << 20) / unit) * unit;
  for (uint64_t i0 = 0; i0 < n; i0 += piece) {
    const uint64_t m = std::min(piece, n - i0);
    if (chunk) chunk(p + i0, m);
    release_mapped_pages(p + i0, m);
  }
}

// ---- atomic_file_writer -----------------------------------------------------------------------------
atomic_file_writer::atomic_file_writer(const std::string& path) : path_(path) {
  std::string templ = path + ".tmp-XXXXXX";
  const int fd = ::mkstemp(templ.data());
  if (fd < 0) {
    const int err = errno;
    throw error(fmt::format("cannot write '{}': creating the temp file '{}' failed: {}", path, templ,
                            std::strerror(err)));
  }
  tmp_ = templ;
  ::fchmod(fd, 0644);  // mkstemp makes 0600; a model file is readable like any other output
  f_ = ::fdopen(fd, "wb");
  if (!f_) {
    const int err = errno;
    ::close(fd);
    fail("opening the temp file", err);
  }
}

atomic_file_writer::~atomic_file_writer() {
  if (f_) std::fclose(f_);
  if (!done_ && !tmp_.empty()) ::unlink(tmp_.c_str());
}

void atomic_file_writer::fail(const char* step, int err) {
  if (f_) {
    std::fclose(f_);
    f_ = nullptr;
  }
  if (!tmp_.empty()) ::unlink(tmp_.c_str());
  tmp_.clear();
  done_ = true;
  throw error(fmt::format("cannot write '{}': {} failed: {}", path_, step, std::strerror(err)));
}

void atomic_file_writer::write(const void* bytes, size_t n) {
  if (done_ || !f_) throw error(fmt::format("cannot write '{}': the file is already closed", path_));
  if (n == 0) return;
  errno = 0;
  if (std::fwrite(bytes, 1, n, f_) != n) fail("fwrite", errno ? errno : EIO);
  written_ += n;
}

void atomic_file_writer::write_zeros(size_t n) {
  static const uint8_t zeros[256] = {};
  while (n > 0) {
    const size_t k = std::min(n, sizeof zeros);
    write(zeros, k);
    n -= k;
  }
}

void atomic_file_writer::commit() {
  if (done_ || !f_) throw error(fmt::format("cannot write '{}': the file is already closed", path_));
  errno = 0;
  if (std::fflush(f_) != 0) fail("fflush", errno ? errno : EIO);
  if (::fsync(::fileno(f_)) != 0) fail("fsync", errno);
  std::FILE* f = f_;
  f_ = nullptr;
  errno = 0;
  if (std::fclose(f) != 0) fail("fclose", errno ? errno : EIO);
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    fail(fmt::format("renaming '{}' over it", tmp_).c_str(), err);
  }
  done_ = true;
  // Make the rename durable (best effort: a directory that cannot be opened is not an error).
  const size_t slash = path_.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path_.substr(0, slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_text_file_atomic(const std::string& path, const std::string& text) {
  atomic_file_writer w(path);
  w.write(text.data(), text.size());
  w.commit();
}

std::string read_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw error(fmt::format("{}: cannot open {}: {}", path, what, std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) throw error(fmt::format("{}: cannot read {}: not a regular file", path, what));
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw error(fmt::format("{}: cannot open {}: {}", path, what, std::strerror(errno)));
  std::string data(static_cast<size_t>(st.st_size), '\0');
  const size_t got = std::fread(data.data(), 1, data.size(), f);
  const bool bad = std::ferror(f) != 0;
  std::fclose(f);
  if (bad) throw error(fmt::format("{}: read error in {}", path, what));
  data.resize(got);  // a file that shrank while read
  return data;
}
std::string file_fingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(fmt::format("{}: cannot open file to fingerprint it", path));
  fnv1a64 h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h.add(buf.data(), static_cast<uint64_t>(in.gcount()));
  }
  return "fnv1a64:" + h.hex();
}
std::string shipped_data_dir(const std::string& built_in) {
  // LOWBIT_DATA is what make and the tests read; LOWBIT_DATA_DIR is the CLI's older name.
  for (const char* name : {"LOWBIT_DATA_DIR", "LOWBIT_DATA"})
    if (const char* d = std::getenv(name); d && *d) return d;
  return built_in;
}

}  // namespace lowbit
