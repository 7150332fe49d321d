// The stochastic-rounding stream on SIMD lanes (docs/formats.md §0.5, docs/conventions.md §10):
// Philox4x32-10 blocks, a counter per 64-bit lane: random_blocks, the blocks themselves, and
// random_words, the words of elements [first, first + count) of a tensor's stream. Equals random_words_ref word for word
// (tests/kernels/test_differential.cpp).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/philox_fast.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <algorithm>
#include <bit>
#include <cstdint>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"

#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "src/kernels/simd_common-inl.hpp"


HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

#if HWY_TARGET != HWY_SCALAR
// The round keys of one stream as vectors (round r: key + r (0x9E3779B9, 0xBB67AE85)), made once
// per PhiloxBlocks call: made in each step's rounds they cost a scalar add and a move into a
// vector register per key, next to 8 vector ops a round per chain on AVX2.
template <class D64>
struct philox_keys {
  hn::Vec<D64> k0[10], k1[10];
};

template <class D64>
HWY_INLINE philox_keys<D64> PhiloxKeys(D64 d64, const philox_stream& ps) {
  philox_keys<D64> keys;
  uint32_t k0 = ps.key[0], k1 = ps.key[1];
  for (int round = 0; round < 10; ++round) {
    keys.k0[round] = hn::Set(d64, k0);
    keys.k1[round] = hn::Set(d64, k1);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return keys;
}

// Philox4x32-10 on kChains x N64 consecutive counter blocks [first, first + kChains N64), one
// block per 64-bit lane, into dst (4 words per block); false where the counter's low word would
// carry into c1 inside them (the lanes add 32-bit counters). vpmuludq multiplies each lane's low
// 32 bits into the full 64-bit product, so hi = product >> 32 and lo = product (its upper half is
// never read: every later multiply uses low halves only, and the output keeps low halves) — 6
// ops a round per chain. Independent chains keep enough multiplies in flight to cover their
// latency.
template <size_t kChains, class D64>
HWY_INLINE bool PhiloxChains(uint64_t first, const philox_stream& ps, const philox_keys<D64>& keys,
                             uint32_t* HWY_RESTRICT dst) {
  const DU du;
  const D64 d64;
  const size_t N64 = hn::Lanes(d64);
  if ((first >> 32) != ((first + kChains * N64) >> 32)) return false;
  const auto m0 = hn::Set(du, 0xD2511F53u), m1 = hn::Set(du, 0xCD9E8D57u);
  hn::Vec<decltype(d64)> x0[kChains], x1[kChains], x2[kChains], x3[kChains];
  for (size_t v = 0; v < kChains; ++v) {
    x0[v] = hn::Add(hn::Iota(d64, 0), hn::Set(d64, uint64_t{static_cast<uint32_t>(first)} + v * N64));
    x1[v] = hn::Set(d64, first >> 32);
    x2[v] = hn::Set(d64, ps.c2);
    x3[v] = hn::Set(d64, ps.c3);
  }
  // The ten rounds unrolled (the round keys then are constant offsets into `keys`): rolled, the
  // loop's copies between registers and the stack were a third of its instructions on AVX2
  // (Zen 3, ~sr8: 2.4 -> 1.9 instructions per element for the draws).
#pragma GCC unroll 10
  for (int round = 0; round < 10; ++round) {
    for (size_t v = 0; v < kChains; ++v) {
      const auto p0 = hn::MulEven(hn::BitCast(du, x0[v]), m0);
      const auto p1 = hn::MulEven(hn::BitCast(du, x2[v]), m1);
      // One vpternlog on AVX-512; on AVX2 x1 ^ key first, off the chain from multiply to multiply.
      x0[v] = hn::Xor3(hn::ShiftRight<32>(p1), x1[v], keys.k0[round]);
      x1[v] = p1;
      x2[v] = hn::Xor3(hn::ShiftRight<32>(p0), x3[v], keys.k1[round]);
      x3[v] = p0;
    }
  }
  // Block i's words (x0, x1, x2, x3)[i] go to dst[4i .. 4i+3]: pairs of words as 64-bit lanes
  // (word 1 and 3 shifted into the odd 32-bit lanes, one blend each).
  for (size_t v = 0; v < kChains; ++v) {
    const auto w01 = hn::BitCast(d64, hn::OddEven(hn::BitCast(du, hn::ShiftLeft<32>(x1[v])), hn::BitCast(du, x0[v])));
    const auto w23 = hn::BitCast(d64, hn::OddEven(hn::BitCast(du, hn::ShiftLeft<32>(x3[v])), hn::BitCast(du, x2[v])));
    hn::StoreInterleaved2(w01, w23, d64, reinterpret_cast<uint64_t*>(dst + 4 * v * N64));
  }
  return true;
}
#endif

// Philox4x32-10 for N consecutive counter blocks at once; writes 4 words per block, in element
// order (block b's word w is element 4b + w), for blocks [block0, block0 + count).
void PhiloxBlocks(uint64_t block0, size_t count, const philox_stream& ps, uint32_t* HWY_RESTRICT out) {
#if HWY_TARGET == HWY_SCALAR
  for (size_t k = 0; k < count; ++k) ps.block(block0 + k, out + 4 * k);  // one lane: no 64-bit lanes
#else
  const hn::Repartition<uint64_t, DU> d64;
  const size_t N64 = hn::Lanes(d64);
  // 4 chains on 256-bit and wider vectors (4 ran 8% faster than 2 on Zen 4's AVX-512, 12% on
  // Zen 3's AVX2, whose 16 registers then spill a few constants: loads beside the multiplies);
  // 2 on 128-bit vectors (SSE4, NEON).
  constexpr size_t kChains = HWY_MAX_BYTES >= 32 ? 4 : 2;
  const auto keys = PhiloxKeys(d64, ps);
  size_t b = 0;
  // Whole steps of kChains x N64 blocks, then of N64 blocks (short calls: a column's group), then
  // the last partial vector through a buffer; a step whose counter carries into c1 stops the
  // vector loops, and the rest goes one block at a time.
  bool vector = true;
  while (vector && b + kChains * N64 <= count)
    if ((vector = PhiloxChains<kChains>(block0 + b, ps, keys, out + 4 * b))) b += kChains * N64;
  while (vector && b + N64 <= count)
    if ((vector = PhiloxChains<1>(block0 + b, ps, keys, out + 4 * b))) b += N64;
  if (vector && b < count) {
    HWY_ALIGN uint32_t tail[4 * hn::MaxLanes(d64)];
    if (PhiloxChains<1>(block0 + b, ps, keys, tail)) {
      std::copy_n(tail, 4 * (count - b), out + 4 * b);
      b = count;
    }
  }
  for (; b < count; ++b) ps.block(block0 + b, out + 4 * b);  // counter carries, one at a time
#endif
}

// R = 1, 2, 4 on SIMD lanes, from the first element e = skip + i with e a multiple of N (one
// vector's R N <= 64 bits then starts at bit `off` = R e mod 32 of word R e / 32 and spans at most
// two words): lane j takes word w0 or w1 (bit off + R j past 32), shifts its R bits to the top
// (srlv by (off + R j) mod 32, then << 32 - R drops the bits above them) and sets the half bit.
// Returns how many elements it wrote (the rest, and the first ones before the alignment, are the
// caller's scalar loop); the first elements are written here too, one at a time.
HWY_INLINE size_t ExpandSubByteDraws(const uint32_t* HWY_RESTRICT blocks, size_t skip, size_t count, int bits,
                                     uint32_t* HWY_RESTRICT out) {
  const uint32_t mask = (1u << bits) - 1u;
  auto scalar = [&](size_t i) {
    const size_t offset = static_cast<size_t>(bits) * (skip + i);
    const uint32_t k = (blocks[offset / 32] >> (offset % 32)) & mask;
    out[i] = (2 * k + 1) << (31 - bits);
  };
#if HWY_TARGET == HWY_SCALAR
  (void)scalar;
  return 0;
#else
  const DU du;
  const size_t N = hn::Lanes(du);
  if (static_cast<size_t>(bits) * N > 64) return 0;  // (vectors over 512 bits)
  size_t i = 0;
  for (; i < count && (skip + i) % N != 0; ++i) scalar(i);
  const auto lane_bits = hn::Mul(hn::Iota(du, 0), hn::Set(du, static_cast<uint32_t>(bits)));
  const auto half = hn::Set(du, 1u << (31 - bits));
  const auto thirty_one = hn::Set(du, 31u);
  const int top = 32 - bits;
  const bool two_words = static_cast<size_t>(bits) * N > 32;
  for (; i + N <= count; i += N) {
    const size_t bit0 = static_cast<size_t>(bits) * (skip + i);
    const uint32_t* w = blocks + bit0 / 32;
    const auto at = hn::Add(lane_bits, hn::Set(du, static_cast<uint32_t>(bit0 % 32)));
    auto v = hn::Set(du, w[0]);
    if (two_words) v = hn::IfThenElse(hn::Gt(at, thirty_one), hn::Set(du, w[1]), v);
    const auto k_top = hn::ShiftLeftSame(v >> hn::And(at, thirty_one), top);
    hn::StoreU(hn::Or(k_top, half), du, out + i);
  }
  return i;
#endif
}

// The words of R-bit draws (docs/conventions.md §43): out[i] = (2k + 1) << (31 - R) with k the R
// bits of element skip + i of the Philox outputs `blocks` (4 words a block, read as one little-endian
// bit string, element e at bits [R e, R e + R)). R = 8 and 16 widen bytes / halfwords on SIMD lanes;
// R = 1, 2, 4 shift words on SIMD lanes (below).
void ExpandDraws(const uint32_t* HWY_RESTRICT blocks, size_t skip, size_t count, int bits, uint32_t* HWY_RESTRICT out) {
  size_t i = 0;
  if (bits < 8) {
    i = ExpandSubByteDraws(blocks, skip, count, bits, out);
  } else if constexpr (std::endian::native == std::endian::little) {
    const DU du;
    const size_t N = hn::Lanes(du);
    if (bits == 8) {
      const hn::Rebind<uint8_t, DU> d8;
      const auto* bytes = reinterpret_cast<const uint8_t*>(blocks) + skip;
      for (; i + N <= count; i += N)
        hn::StoreU(hn::Or(hn::ShiftLeft<24>(hn::PromoteTo(du, hn::LoadU(d8, bytes + i))), hn::Set(du, 1u << 23)), du,
                   out + i);
    } else if (bits == 16) {
      const hn::Rebind<uint16_t, DU> d16;
      const auto* halves = reinterpret_cast<const uint16_t*>(blocks) + skip;
      for (; i + N <= count; i += N)
        hn::StoreU(hn::Or(hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, halves + i))), hn::Set(du, 1u << 15)),
                   du, out + i);
    }
  }
  const uint32_t mask = (1u << bits) - 1u;
  for (; i < count; ++i) {
    const size_t offset = static_cast<size_t>(bits) * (skip + i);
    const uint32_t k = (blocks[offset / 32] >> (offset % 32)) & mask;
    out[i] = (2 * k + 1) << (31 - bits);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(PhiloxBlocks);
HWY_EXPORT(ExpandDraws);

namespace {

// The R-bit draws of docs/conventions.md §43: Philox block b serves elements [b P, (b + 1) P),
// P = 128 / R; up to 64 blocks at a time into a stack buffer, then widened to words.
void random_words_of_bits(const philox_stream& ps, uint64_t first, size_t count, uint32_t* out, int bits) {
  const uint64_t per_block = 128 / static_cast<uint64_t>(bits);
  constexpr uint64_t kBlocks = 64;
  HWY_ALIGN uint32_t blocks[4 * kBlocks];
  const uint64_t end = first + count;
  for (uint64_t i = first; i < end;) {
    const uint64_t b0 = i / per_block, last = (end - 1) / per_block;
    const uint64_t nb = std::min(kBlocks, last - b0 + 1);
    HWY_DYNAMIC_DISPATCH(PhiloxBlocks)(b0, static_cast<size_t>(nb), ps, blocks);
    const uint64_t skip = i - b0 * per_block, n = std::min(end - i, nb * per_block - skip);
    HWY_DYNAMIC_DISPATCH(ExpandDraws)(blocks, static_cast<size_t>(skip), static_cast<size_t>(n), bits, out + (i - first));
    i += n;
  }
}

}  // namespace

void random_blocks(uint64_t seed, uint64_t tensor_id, uint64_t block0, size_t count, uint32_t* out) {
  if (use_ref()) return random_blocks_ref(seed, tensor_id, block0, count, out);
  HWY_DYNAMIC_DISPATCH(PhiloxBlocks)(block0, count, philox_stream_of(seed, tensor_id), out);
}

void random_words(uint64_t seed, uint64_t tensor_id, uint64_t first, size_t count, uint32_t* out, int draw_bits) {
  if (draw_bits != 0 && !valid_sr_bits(draw_bits))
    throw error(fmt::format("random_words: {} random bits per element (1, 2, 4, 8 or 16)", draw_bits));
  if (use_ref()) return random_words_ref(seed, tensor_id, first, count, out, draw_bits);
  const philox_stream ps = philox_stream_of(seed, tensor_id);
  if (draw_bits != 0) return random_words_of_bits(ps, first, count, out, draw_bits);
  // Whole blocks go straight to out (block b holds elements 4b .. 4b+3); a partial block at
  // either end is made once and the words it covers copied.
  auto partial = [&](uint64_t block, uint64_t from, uint64_t to) {
    uint32_t words[4];
    ps.block(block, words);
    for (uint64_t i = from; i < to; ++i) out[i - first] = words[i & 3];
  };
  const uint64_t end = first + count;
  uint64_t i = first;
  if (count > 0 && (i & 3) != 0) {
    const uint64_t stop = std::min(end, (i | 3) + 1);
    partial(i >> 2, i, stop);
    i = stop;
  }
  const uint64_t whole = (end - i) >> 2;
  if (whole > 0) {
    HWY_DYNAMIC_DISPATCH(PhiloxBlocks)(i >> 2, static_cast<size_t>(whole), ps, out + (i - first));
    i += 4 * whole;
  }
  if (i < end) partial(i >> 2, i, end);
}

}  // namespace lowbit
#endif  // HWY_ONCE
