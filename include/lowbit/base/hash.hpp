// Hashes: FNV-1a 64, lowbit's content hash (file fingerprints, shard checksums), and SHA-256,
// the results store's run identity.
#pragma once

#include <cstdint>
#include <string>

namespace lowbit {

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

// FIPS 180-4 SHA-256 of bytes, as 64 lowercase hex digits.
std::string sha256_hex(const std::string& bytes);

}  // namespace lowbit
