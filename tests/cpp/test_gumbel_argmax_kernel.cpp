// The Gumbel noise generator against Random123's published Philox4x32-10 answers and its own
// bounds, and the CPU kernel of ot_flow::gumbel_argmax against a naive double loop that draws
// every element's noise (no pruning), including where pruning removes almost everything.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "ops/gumbel_argmax.h"
#include "ops/gumbel_noise.h"

namespace {

TEST(Philox4x32, KnownAnswers) {
  struct Case {
    ot_flow::Philox4x32 counter;
    uint32_t key0, key1;
    ot_flow::Philox4x32 expected;
  };
  const Case cases[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu,
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u,
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const Case& c : cases) {
    const ot_flow::Philox4x32 out = ot_flow::philox4x32_10(c.counter, c.key0, c.key1);
    for (int k = 0; k < 4; ++k) EXPECT_EQ(out.v[k], c.expected.v[k]) << "word " << k;
  }
}

TEST(GumbelNoise, BoundsHoldAtTheExtremeWords) {
  EXPECT_GE(ot_flow::gumbel_from_bits(0u), ot_flow::kGumbelMin);
  EXPECT_LE(ot_flow::gumbel_from_bits(0xffffffffu), ot_flow::kGumbelMax);
  EXPECT_GT(ot_flow::gumbel_from_bits(0xffffffffu), ot_flow::kGumbelMax - 0.01);  // and they are tight
  EXPECT_LT(ot_flow::gumbel_from_bits(0u), ot_flow::kGumbelMin + 0.02);
}

TEST(GumbelNoise, LogarithmToAboutOneUlp) {
  for (double x : {2.3283064365386963e-10, 1e-7, 0.1, 0.5, 0.70710678, 0.9999999, 1.0, 1.5, 2.0, 22.87, 1e300}) {
    EXPECT_NEAR(ot_flow::log_positive(x), std::log(x), 2e-16 * std::max(1.0, std::abs(std::log(x)))) << x;
  }
  for (uint32_t bits : {0u, 1u, 12345u, 0x80000000u, 0xfffffffeu, 0xffffffffu}) {
    const double u = (bits + 0.5) / 4294967296.0;
    EXPECT_NEAR(ot_flow::gumbel_from_bits(bits), -std::log(-std::log(u)), 1e-13) << bits;
  }
}

TEST(GumbelNoise, MomentsOfAGumbel) {
  // Mean: the Euler-Mascheroni constant; variance pi^2 / 6.
  ot_flow::GumbelRow row(ot_flow::noise_key(123, 0), 5);
  const int count = 400000;
  double sum = 0, sum_sq = 0;
  for (int j = 0; j < count; ++j) {
    const double g = row.at(j);
    sum += g;
    sum_sq += g * g;
  }
  const double mean = sum / count, var = sum_sq / count - mean * mean;
  EXPECT_NEAR(mean, 0.5772156649, 0.01);
  EXPECT_NEAR(var, M_PI * M_PI / 6, 0.03);
}

// (index, value, runner-up value) per row.
std::tuple<std::vector<int64_t>, std::vector<double>, std::vector<double>> naive_gumbel_argmax(const at::Tensor& x, const at::Tensor& y,
                                                                         const at::Tensor& h, double scale,
                                                                         const ot_flow::GumbelKey& key) {
  const auto xd = x.to(at::kDouble).contiguous();
  const auto yd = y.to(at::kDouble).contiguous();
  const auto hd = h.to(at::kDouble).contiguous();
  const int64_t n = xd.size(0), m = yd.size(0), d = xd.size(1);
  const double* xp = xd.const_data_ptr<double>();
  const double* yp = yd.const_data_ptr<double>();
  const double* hp = hd.const_data_ptr<double>();
  std::vector<int64_t> index(n, -1);
  std::vector<double> value(n, -std::numeric_limits<double>::infinity());
  std::vector<double> runner_up(n, -std::numeric_limits<double>::infinity());
  for (int64_t i = 0; i < n; ++i) {
    ot_flow::GumbelRow noise(ot_flow::noise_key(key.seed, key.offset), key.row_offset + i);
    for (int64_t j = 0; j < m; ++j) {
      double dot = 0;
      for (int64_t k = 0; k < d; ++k) dot += xp[i * d + k] * yp[j * d + k];
      const double v = scale * dot + hp[j] + noise.at(key.col_offset + j);
      if (v > value[i]) {
        runner_up[i] = value[i];
        value[i] = v;
        index[i] = j;
      } else {
        runner_up[i] = std::max(runner_up[i], v);
      }
    }
  }
  return {index, value, runner_up};
}

class GumbelArgmaxKernel : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, double>> {};

TEST_P(GumbelArgmaxKernel, MatchesNaiveLoop) {
  const auto [n, m, d, bias_spread] = GetParam();
  at::manual_seed(n * 7919 + m * 31 + d);
  const at::Tensor x = at::randn({n, d}, at::kDouble);
  const at::Tensor y = at::randn({m, d}, at::kDouble);
  const at::Tensor h = bias_spread * at::randn({m}, at::kDouble);
  const ot_flow::GumbelKey key{987654321, 4, 17, 3};
  const auto [index, value] = ot_flow::gumbel_argmax_cpu_kernel(x, y, h, 1.3, key);
  const auto [ref_index, ref_value, ref_runner_up] = naive_gumbel_argmax(x, y, h, 1.3, key);
  for (int64_t i = 0; i < n; ++i) {
    // The kernel's GEMM and the loop sum the dot products in different orders, so the winner is
    // the loop's unless the runner-up is within that rounding of it.
    const double tol = 1e-9 * (1 + std::abs(ref_value[i]));
    if (ref_value[i] - ref_runner_up[i] > tol) ASSERT_EQ(index[i].item<int64_t>(), ref_index[i]) << "row " << i;
    ASSERT_NEAR(value[i].item<double>(), ref_value[i], tol) << "row " << i;
  }
}

// A bias spread of 100 puts most columns far below the row's best: the pruned path.
INSTANTIATE_TEST_SUITE_P(Sizes, GumbelArgmaxKernel,
                         ::testing::Combine(::testing::Values<int64_t>(1, 129), ::testing::Values<int64_t>(1, 13, 2100),
                                            ::testing::Values<int64_t>(1, 16), ::testing::Values(1.0, 100.0)));

TEST(GumbelArgmaxKernel, SameDrawForAnyThreadCount) {
  const at::Tensor x = at::randn({300, 17});
  const at::Tensor y = at::randn({5000, 17});
  const at::Tensor h = at::randn({5000});
  const ot_flow::GumbelKey key{1, 0, 0, 0};
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = ot_flow::gumbel_argmax_cpu_kernel(x, y, h, 0.5, key);
  at::set_num_threads(std::max(2, threads));
  const auto many = ot_flow::gumbel_argmax_cpu_kernel(x, y, h, 0.5, key);
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(std::get<0>(one), std::get<0>(many)));
  EXPECT_TRUE(at::equal(std::get<1>(one), std::get<1>(many)));
}

}  // namespace
