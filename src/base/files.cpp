// Memory maps and atomic writes. Every step of a write is checked (a full disk is an error naming
// the file, never a truncated output), and a failed write leaves no partial file behind.
#include "lowbit/base/files.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/base/hash.hpp"

namespace lowbit {

// ---- mapped_file ------------------------------------------------------------------------------------
mapped_file::mapped_file(const std::string& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer (the fstat below
  // refuses it); it changes nothing for a regular file's mapping.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
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
namespace {
// Temp files "NAME.tmp-XXXXXX" of `path` that no writer holds are removed before a new write of
// `path`. Each writer holds an flock on its temp file from creation until commit closes it, so a
// temp file that can be locked at once was left by a writer that died before its commit or its
// destructor ran (kill -9, power loss): its lock went with its process, whatever PID namespace or
// host it ran on. A temp file being written, by this process or another, stays.
void remove_stale_temps(const std::string& path) {
  const std::filesystem::path p(path);
  const std::filesystem::path dir = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
  const std::string prefix = p.filename().string() + ".tmp-";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) continue;
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) std::filesystem::remove(entry.path(), ec);
    ::close(fd);
  }
}
}  // namespace

atomic_file_writer::atomic_file_writer(const std::string& path) : path_(path) {
  remove_stale_temps(path);
  std::string templ = path + ".tmp-XXXXXX";
  const int fd = ::mkstemp(templ.data());
  if (fd < 0) {
    const int err = errno;
    throw error(fmt::format("cannot write '{}': creating the temp file '{}' failed: {}", path, templ,
                            std::strerror(err)));
  }
  ::flock(fd, LOCK_EX);  // held until commit closes it: remove_stale_temps leaves a held temp alone
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

exclusive_lock::exclusive_lock(const std::string& path, const std::string& what) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd_ < 0) throw error(fmt::format("{}: cannot open {} to lock it: {}", what, path, std::strerror(errno)));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    if (err == EWOULDBLOCK)
      throw error(fmt::format("{}: another lowbit process is working on it ({} is locked); wait for it or "
                              "choose another output", what, path));
    throw error(fmt::format("{}: cannot lock {}: {}", what, path, std::strerror(err)));
  }
}

exclusive_lock::~exclusive_lock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the lock
}

namespace {
// stat() of a file that must be regular (a FIFO, directory or device is refused without opening it).
struct stat regular_file_stat(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw error(fmt::format("{}: cannot open {}: {}", path, what, std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) throw error(fmt::format("{}: cannot read {}: not a regular file", path, what));
  return st;
}
}  // namespace

void require_regular_file(const std::string& path, const std::string& what) { regular_file_stat(path, what); }

std::string read_file(const std::string& path, const std::string& what) {
  const struct stat st = regular_file_stat(path, what);
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

std::string resolve_config_path(const std::string& s, const std::string& base_dir, const std::string& data_dir,
                                const std::string& where) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, 2, "${") != 0) {
      out += s[i++];
      continue;
    }
    const size_t end = s.find('}', i);
    if (end == std::string::npos) throw error(fmt::format("{}: '{}': unclosed '${{'", where, s));
    const std::string name = s.substr(i + 2, end - i - 2);
    const char* v = std::getenv(name.c_str());
    if (v && *v) out += v;
    else if (name == "LOWBIT_DATA_DIR") out += data_dir;
    else throw error(fmt::format("{}: '{}': environment variable {} is not set", where, s, name));
    i = end + 1;
  }
  const std::filesystem::path p(out);
  return (p.is_absolute() || base_dir.empty() ? p : std::filesystem::path(base_dir) / p).lexically_normal().string();
}

}  // namespace lowbit
