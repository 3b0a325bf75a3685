// The tensor-core engine's bound on the error of one dot product (dot_error_bound in
// csrc/ops/cuda/engine/kernel_traits.cuh), on which exact MIPS rests: a column is rescored in
// float64 when its computed score lies within twice the bound of the row's best. Checked here,
// where no GPU runs, against a model of the engine's arithmetic: the operands rounded as
// mma_tile.cuh rounds them (cvt.rna.tf32: nearest, ties away from zero; split TF32 as hi + lo;
// cvt.rn.bf16x2: nearest even), every product exact (TF32 x TF32 and BF16 x BF16 fit a float),
// and every addition into the float32 accumulator rounded toward zero (truncation, the worst the
// tensor cores do), one MMA k-step after another in the kernels' order (lo*hi, hi*lo, hi*hi).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "ops/cuda/engine/kernel_traits.cuh"

namespace {

using ot_flow::cuda::engine::dot_error_bound;
using ot_flow::cuda::engine::DotMode;

uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

float float_of(uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// cvt.rna.tf32.f32: 10 explicit mantissa bits, to nearest, ties away from zero (sign-magnitude:
// adding half of the dropped unit and truncating rounds the magnitude half away).
float tf32(float v) { return float_of((bits_of(v) + 0x1000u) & ~0x1FFFu); }

// cvt.rn.bf16x2.f32: 7 explicit mantissa bits, to nearest, ties to even.
float bf16(float v) {
  const uint32_t b = bits_of(v);
  return float_of((b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u);
}

// s as a float32, rounded toward zero.
float toward_zero(long double s) {
  float f = static_cast<float>(s);
  if (std::fabs(static_cast<long double>(f)) > std::fabs(s)) f = std::nextafter(f, 0.0f);
  return f;
}

// One MMA k-step into the accumulator: each product exact, each addition truncated.
float mma_step(float acc, const float* a, const float* b, int len) {
  for (int k = 0; k < len; ++k) {
    acc = toward_zero(static_cast<long double>(acc) + static_cast<long double>(a[k]) * static_cast<long double>(b[k]));
  }
  return acc;
}

// <x, y> as the engine forms it in `mode`: k-steps of 8 (TF32) or 16 (BF16) terms; past d the
// staged slices hold zeros, which add nothing.
float engine_dot(DotMode mode, const std::vector<float>& x, const std::vector<float>& y) {
  const int d = static_cast<int>(x.size()), step = mode == DotMode::kBF16 ? 16 : 8;
  float acc = 0.0f;
  for (int k0 = 0; k0 < d; k0 += step) {
    const int len = std::min(step, d - k0);
    float a_hi[16], a_lo[16], b_hi[16], b_lo[16];
    for (int k = 0; k < len; ++k) {
      const float a = x[k0 + k], b = y[k0 + k];
      a_hi[k] = mode == DotMode::kBF16 ? bf16(a) : tf32(a);
      b_hi[k] = mode == DotMode::kBF16 ? bf16(b) : tf32(b);
      a_lo[k] = tf32(a - a_hi[k]);
      b_lo[k] = tf32(b - b_hi[k]);
    }
    if (mode == DotMode::kSplitTF32) {
      acc = mma_step(acc, a_lo, b_hi, len);
      acc = mma_step(acc, a_hi, b_lo, len);
    }
    acc = mma_step(acc, a_hi, b_hi, len);
  }
  return acc;
}

// <x, y> as the lse and barycentric kernels form it in split TF32 (stream_loop.cuh's
// RoundedSlices): each slice of 16 (8 where d <= 8) summed from zero as above, then added to
// the running sum in float32, rounded to nearest.
float engine_dot_in_slices(const std::vector<float>& x, const std::vector<float>& y) {
  const int d = static_cast<int>(x.size()), slice = d <= 8 ? 8 : 16;
  float acc = 0.0f;
  for (int k0 = 0; k0 < d; k0 += slice) {
    const int len = std::min(slice, d - k0);
    acc += engine_dot(DotMode::kSplitTF32, std::vector<float>(x.begin() + k0, x.begin() + k0 + len),
                      std::vector<float>(y.begin() + k0, y.begin() + k0 + len));
  }
  return acc;
}

// The largest |computed - exact| / (bound |x| |y|) over `trials` pairs drawn by `draw`.
template <class Draw>
double worst_ratio(DotMode mode, int d, int trials, Draw&& draw) {
  double worst = 0.0;
  std::vector<float> x(d), y(d);
  for (int t = 0; t < trials; ++t) {
    draw(x, y);
    long double exact = 0.0L, xx = 0.0L, yy = 0.0L;
    for (int k = 0; k < d; ++k) {
      exact += static_cast<long double>(x[k]) * y[k];
      xx += static_cast<long double>(x[k]) * x[k];
      yy += static_cast<long double>(y[k]) * y[k];
    }
    const long double scale = std::sqrt(xx * yy);
    if (scale == 0.0L) continue;
    const long double error = std::fabs(static_cast<long double>(engine_dot(mode, x, y)) - exact);
    worst = std::max(worst, static_cast<double>(error / (dot_error_bound(mode, d) * scale)));
  }
  return worst;
}

const DotMode kModes[] = {DotMode::kSplitTF32, DotMode::kTF32, DotMode::kBF16};
const int kDims[] = {1, 2, 3, 7, 8, 9, 16, 17, 64, 100, 512, 1000, 3072};

TEST(EngineErrorBound, HoldsOnRandomSameSignCancellingAndWideRangeVectors) {
  std::mt19937 gen(20261130);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> unit(0.0f, 1.0f), exponent(-20.0f, 20.0f);
  const auto gaussian = [&](std::vector<float>& x, std::vector<float>& y) {
    for (size_t k = 0; k < x.size(); ++k) x[k] = normal(gen), y[k] = normal(gen);
  };
  // Every partial sum grows one way: the accumulator's truncations never cancel.
  const auto same_sign = [&](std::vector<float>& x, std::vector<float>& y) {
    for (size_t k = 0; k < x.size(); ++k) x[k] = unit(gen), y[k] = unit(gen);
  };
  // <x, y> near 0 against |x| |y|: y is x with every other sign flipped.
  const auto cancelling = [&](std::vector<float>& x, std::vector<float>& y) {
    for (size_t k = 0; k < x.size(); ++k) x[k] = normal(gen), y[k] = (k % 2 ? -1.0f : 1.0f) * x[k] * (1.0f + 1e-3f * normal(gen));
  };
  // Entries from 2^-20 to 2^20: the large ones set |x| |y|, the small ones test the lo parts.
  const auto wide = [&](std::vector<float>& x, std::vector<float>& y) {
    for (size_t k = 0; k < x.size(); ++k) {
      x[k] = std::exp2(exponent(gen)) * (normal(gen) < 0 ? -1.0f : 1.0f);
      y[k] = std::exp2(exponent(gen)) * (normal(gen) < 0 ? -1.0f : 1.0f);
    }
  };
  for (const DotMode mode : kModes) {
    double worst = 0.0;
    for (const int d : kDims) {
      const int trials = d >= 1000 ? 60 : 400;
      for (const double ratio : {worst_ratio(mode, d, trials, gaussian), worst_ratio(mode, d, trials, same_sign),
                                 worst_ratio(mode, d, trials, cancelling), worst_ratio(mode, d, trials, wide)}) {
        EXPECT_LE(ratio, 1.0) << "mode " << static_cast<int>(mode) << ", d = " << d;
        worst = std::max(worst, ratio);
      }
    }
    // The model is not trivially inside the bound: its errors reach a sizeable part of it.
    EXPECT_GT(worst, 0.05) << "mode " << static_cast<int>(mode);
    std::printf("mode %d: worst error %.3f of the bound\n", static_cast<int>(mode), worst);
  }
}

// "highest" promises float32-accurate logits scale <x, y> + h (tests/test_cuda_engine.py: lse
// within 2e-6 of the row's largest |logit|, plus 1e-6). With one accumulator across d, every
// truncation is an ulp of the whole running dot product, all in one direction, and at d in the
// hundreds they add up past that; summed slice by slice they stay inside, even in this model
// that truncates every addition (checked per logit, against its own size: stricter than the
// GPU test's row-wise bound). Gaussian points, scale 1 / sqrt(d), h ~ N(0, 1), as the GPU test
// draws them.
TEST(EngineErrorBound, SliceSumsKeepHighestLogitsFloat32Accurate) {
  std::mt19937 gen(20261130);
  std::normal_distribution<float> normal;
  for (const int d : {3, 17, 64, 100, 512, 1000, 3072}) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    double worst_sliced = 0.0, worst_one = 0.0;
    std::vector<float> x(d), y(d);
    for (int t = 0; t < (d >= 1000 ? 100 : 400); ++t) {
      for (int k = 0; k < d; ++k) x[k] = normal(gen), y[k] = normal(gen);
      long double exact = 0.0L;
      for (int k = 0; k < d; ++k) exact += static_cast<long double>(x[k]) * y[k];
      const double logit = scale * static_cast<double>(exact) + normal(gen);
      const double allowed = 2e-6 * std::max(std::fabs(logit), 1.0) + 1e-6;
      const auto ratio = [&](float computed) {
        return scale * static_cast<double>(std::fabs(static_cast<long double>(computed) - exact)) / allowed;
      };
      worst_sliced = std::max(worst_sliced, ratio(engine_dot_in_slices(x, y)));
      worst_one = std::max(worst_one, ratio(engine_dot(DotMode::kSplitTF32, x, y)));
    }
    EXPECT_LE(worst_sliced, 1.0) << "d = " << d;
    std::printf("d = %d: worst logit error %.3f of the allowed in slices, %.3f in one accumulator\n", d,
                worst_sliced, worst_one);
    if (d == 1000) EXPECT_GT(worst_one, 1.0);  // what the slices are for (the GPU test's d)
  }
}

// The barycentric epilogue's weighted sum runs over every column tile of a chunk (1,024 tiles
// for 65,536 columns). Its MMAs into one running sum would truncate an ulp of that sum per
// addition (~4e-3 in this model, which truncates every addition); each tile summed from zero and
// added round-to-nearest stays within a few float32 ulps (~3.5e-6: each tile's own truncations,
// a relative bias that does not grow with the tiles, and the rounding of 1,024 additions; the GPU
// test allows 2e-5). Weights in (0, 1] (exps relative to the max), values of mean 1.
TEST(EngineErrorBound, TileSumsKeepTheBarycentricWeightedSumFloat32Accurate) {
  std::mt19937 gen(5);
  std::normal_distribution<float> normal;
  constexpr int kTile = 64, kTiles = 1024;
  std::vector<float> w(kTile * kTiles), v(kTile * kTiles);
  for (size_t c = 0; c < w.size(); ++c) w[c] = std::exp(-std::fabs(normal(gen))), v[c] = 1.0f + 0.1f * normal(gen);
  long double exact = 0.0L;
  for (size_t c = 0; c < w.size(); ++c) exact += static_cast<long double>(w[c]) * v[c];
  float tiles = 0.0f;
  for (int t = 0; t < kTiles; ++t) {
    tiles += engine_dot(DotMode::kSplitTF32, std::vector<float>(w.begin() + t * kTile, w.begin() + (t + 1) * kTile),
                        std::vector<float>(v.begin() + t * kTile, v.begin() + (t + 1) * kTile));
  }
  const double sliced = static_cast<double>(std::fabs((tiles - exact) / exact));
  const double one = static_cast<double>(std::fabs((engine_dot(DotMode::kSplitTF32, w, v) - exact) / exact));
  std::printf("weighted sum over %d tiles: relative error %.2e in tile sums, %.2e in one accumulator\n", kTiles,
              sliced, one);
  EXPECT_LE(sliced, 1e-5);
  EXPECT_GT(one, 1e-4);  // what the tile sums are for
}

}  // namespace
