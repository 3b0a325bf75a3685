// The Gumbel noise of ot_flow::gumbel_argmax: G(seed, offset, i, j), a pure function of its
// four integers, so a draw does not depend on how the (i, j) plane is tiled, which thread or
// device computes a tile, or how rows and columns are sharded over processes.
//
// The bits come from Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3", SC 2011), a counter-based generator: the key is a hash of (seed, offset), the
// 128-bit counter is (j / 4, i), and one call gives the 32-bit words of columns 4q..4q+3.
// A word r becomes u = (r + 1/2) / 2^32 in (0, 1), exactly, in double, and G = -log(-log u);
// so G is bounded, kGumbelMin <= G <= kGumbelMax, which is what makes pruning exact: an
// element whose logit is more than kGumbelMax - kGumbelMin below the best logit of its row
// cannot win and never needs its noise.
//
// The logarithm is our own (log_positive), made of IEEE additions, multiplications, fused
// multiply-adds and one division, so the CPU and the GPU compute the same bits, and the CPU
// loops over candidates vectorise.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace ot_flow {

// u in [2^-33, 1 - 2^-33] gives G in [-log(33 log 2), 33 log 2] = [-3.1299, 22.8739];
// the constants round outwards.
constexpr double kGumbelMin = -3.14;
constexpr double kGumbelMax = 22.88;

struct Philox4x32 {
  uint32_t v[4];
};

OT_FLOW_HOST_DEVICE Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t c0 = ctr.v[0], c1 = ctr.v[1], c2 = ctr.v[2], c3 = ctr.v[3];
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2;
    c0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ key0;
    c1 = static_cast<uint32_t>(p1);
    c2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ key1;
    c3 = static_cast<uint32_t>(p0);
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// SplitMix64's finaliser: spreads (seed, offset) over the 64 key bits, so that nearby seeds
// and offsets give unrelated streams.
OT_FLOW_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct NoiseKey {
  uint32_t lo, hi;
};

OT_FLOW_HOST_DEVICE NoiseKey noise_key(uint64_t seed, uint64_t offset) {
  const uint64_t key = mix64(seed ^ mix64(offset + 0x9E3779B97F4A7C15ull));
  return {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32)};
}

// The Philox words of row `row`, columns 4 * block .. 4 * block + 3.
OT_FLOW_HOST_DEVICE Philox4x32 philox_block(NoiseKey key, uint64_t row, uint64_t block) {
  return philox4x32_10(Philox4x32{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                                   static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32)}},
                       key.lo, key.hi);
}

// Word `col % 4` of a block: selects rather than w.v[lane], since a dynamic index would keep
// the CPU loop from vectorising.
OT_FLOW_HOST_DEVICE uint32_t word_of(const Philox4x32& w, uint64_t col) {
  const uint32_t lane = static_cast<uint32_t>(col & 3);
  return lane == 0 ? w.v[0] : lane == 1 ? w.v[1] : lane == 2 ? w.v[2] : w.v[3];
}

OT_FLOW_HOST_DEVICE uint32_t philox_word(NoiseKey key, uint64_t row, uint64_t col) {
  return word_of(philox_block(key, row, col >> 2), col);
}

OT_FLOW_HOST_DEVICE uint64_t bits_of(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  return __builtin_bit_cast(uint64_t, x);  // not memcpy: a bit cast keeps the loops vectorisable
#endif
}

OT_FLOW_HOST_DEVICE double double_of(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  return __builtin_bit_cast(double, bits);
#endif
}

// An integer below 2^52 as a double, through its bits: AVX2 has no vector conversion from
// 64-bit or unsigned integers, and this keeps the loops vectorised.
OT_FLOW_HOST_DEVICE double exact_double(uint64_t small) {
  return double_of(0x4330000000000000ull | small) - 4503599627370496.0;  // 2^52
}

// log(x) for a normal, finite x > 0, to about 1 ulp: x = 2^e m with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.172, by its odd series to s^23
// (the next term is below 1e-19).
OT_FLOW_HOST_DEVICE double log_positive(double x) {
  const uint64_t bits = bits_of(x);
  double e = exact_double((bits >> 52) & 0x7ff) - 1023.0;
  double m = double_of((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);  // [1, 2)
  const bool high = m > 1.4142135623730951;
  m = high ? 0.5 * m : m;
  e = high ? e + 1.0 : e;
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  double p = 1.0 / 23;
  p = fma(p, s2, 1.0 / 21);
  p = fma(p, s2, 1.0 / 19);
  p = fma(p, s2, 1.0 / 17);
  p = fma(p, s2, 1.0 / 15);
  p = fma(p, s2, 1.0 / 13);
  p = fma(p, s2, 1.0 / 11);
  p = fma(p, s2, 1.0 / 9);
  p = fma(p, s2, 1.0 / 7);
  p = fma(p, s2, 1.0 / 5);
  p = fma(p, s2, 1.0 / 3);
  p = fma(p, s2, 1.0);
  return fma(e, 0.6931471805599453, 2.0 * s * p);
}

OT_FLOW_HOST_DEVICE double gumbel_from_bits(uint32_t bits) {
  const double u = (exact_double(bits) + 0.5) * 2.3283064365386963e-10;  // 2^-32
  return -log_positive(-log_positive(u));
}

OT_FLOW_HOST_DEVICE double gumbel_noise(NoiseKey key, uint64_t row, uint64_t col) {
  return gumbel_from_bits(philox_word(key, row, col));
}

// The noise of one row for a key; `at(col)` for increasing or repeated columns reuses the
// Philox block of four columns it computed last (the GPU threads own four columns each).
class GumbelRow {
 public:
  OT_FLOW_HOST_DEVICE GumbelRow(NoiseKey key, uint64_t row) : key_(key), row_(row) {}

  OT_FLOW_HOST_DEVICE double at(uint64_t col) {
    const uint64_t block = col >> 2;
    if (block != block_ || !valid_) {
      words_ = philox_block(key_, row_, block);
      block_ = block;
      valid_ = true;
    }
    return gumbel_from_bits(word_of(words_, col));
  }

 private:
  NoiseKey key_;
  uint64_t row_;
  uint64_t block_ = 0;
  bool valid_ = false;
  Philox4x32 words_{};
};

}  // namespace ot_flow
