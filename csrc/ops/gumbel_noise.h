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
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * ctr.v[0];
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * ctr.v[2];
    ctr = Philox4x32{{static_cast<uint32_t>(p1 >> 32) ^ ctr.v[1] ^ key0, static_cast<uint32_t>(p1),
                      static_cast<uint32_t>(p0 >> 32) ^ ctr.v[3] ^ key1, static_cast<uint32_t>(p0)}};
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return ctr;
}

// SplitMix64's finaliser: spreads (seed, offset) over the 64 key bits, so that nearby seeds
// and offsets give unrelated streams.
OT_FLOW_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

OT_FLOW_HOST_DEVICE double gumbel_from_bits(uint32_t bits) {
  const double u = (static_cast<double>(bits) + 0.5) * 2.3283064365386963e-10;  // 2^-32
  return -log(-log(u));
}

// The noise of one row, i (global index), for a key; `at(j)` for increasing or repeated j
// reuses the Philox block of four columns it computed last.
class GumbelRow {
 public:
  OT_FLOW_HOST_DEVICE GumbelRow(uint64_t seed, uint64_t offset, uint64_t row) : row_(row) {
    const uint64_t key = mix64(seed ^ mix64(offset + 0x9E3779B97F4A7C15ull));
    key0_ = static_cast<uint32_t>(key);
    key1_ = static_cast<uint32_t>(key >> 32);
  }

  OT_FLOW_HOST_DEVICE double at(uint64_t col) {
    const uint64_t block = col >> 2;
    if (block != block_ || !valid_) {
      words_ = philox4x32_10(Philox4x32{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                                         static_cast<uint32_t>(row_), static_cast<uint32_t>(row_ >> 32)}},
                             key0_, key1_);
      block_ = block;
      valid_ = true;
    }
    return gumbel_from_bits(words_.v[col & 3]);
  }

 private:
  uint64_t row_;
  uint32_t key0_ = 0, key1_ = 0;
  uint64_t block_ = 0;
  bool valid_ = false;
  Philox4x32 words_{};
};

}  // namespace ot_flow
