// The CPU kernel of ot_flow::lse against a naive double-precision loop, and its determinism
// across thread counts (the work split depends only on the sizes).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "ops/lse.h"

namespace {

std::vector<double> naive_lse(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double scale) {
  const auto xd = x.to(at::kDouble).contiguous();
  const auto yd = y.to(at::kDouble).contiguous();
  const auto hd = h.to(at::kDouble).contiguous();
  const int64_t n = xd.size(0), m = yd.size(0), d = xd.size(1);
  const double* xp = xd.const_data_ptr<double>();
  const double* yp = yd.const_data_ptr<double>();
  const double* hp = hd.const_data_ptr<double>();
  std::vector<double> out(n);
  std::vector<double> row(m);
  for (int64_t i = 0; i < n; ++i) {
    double best = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < m; ++j) {
      double dot = 0;
      for (int64_t k = 0; k < d; ++k) dot += xp[i * d + k] * yp[j * d + k];
      row[j] = scale * dot + hp[j];
      best = std::max(best, row[j]);
    }
    double total = 0;
    for (int64_t j = 0; j < m; ++j) total += std::exp(row[j] - best);
    out[i] = best + std::log(total);
  }
  return out;
}

class LseKernel : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, at::ScalarType>> {};

TEST_P(LseKernel, MatchesNaiveLoop) {
  const auto [n, m, d, dtype] = GetParam();
  at::manual_seed(n * 7919 + m * 31 + d);
  const auto opts = at::TensorOptions().dtype(dtype);
  const at::Tensor x = at::randn({n, d}, opts);
  const at::Tensor y = at::randn({m, d}, opts);
  const at::Tensor h = at::randn({m}, opts);
  const double scale = 0.7;
  const at::Tensor out = ot_flow::lse_cpu_kernel(x, y, h, scale).to(at::kDouble);
  const std::vector<double> ref = naive_lse(x, y, h, scale);
  const double tol = dtype == at::kFloat ? 2e-5 : 1e-12;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_NEAR(out[i].item<double>(), ref[i], tol * (1 + std::abs(ref[i]))) << "row " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, LseKernel,
    ::testing::Combine(::testing::Values<int64_t>(1, 7, 129, 1000), ::testing::Values<int64_t>(1, 13, 513, 2100),
                       ::testing::Values<int64_t>(1, 3, 64), ::testing::Values(at::kFloat, at::kDouble)));

TEST(LseKernel, NegativeInfinityBiasDropsColumns) {
  const at::Tensor x = at::randn({5, 3}, at::kDouble);
  const at::Tensor y = at::randn({700, 3}, at::kDouble);
  at::Tensor h = at::full({700}, -std::numeric_limits<double>::infinity(), at::kDouble);
  const at::Tensor all_dropped = ot_flow::lse_cpu_kernel(x, y, h, 1.0);
  EXPECT_TRUE(at::isneginf(all_dropped).all().item<bool>());
  h[650] = 0.25;  // one live column, in the second tile
  const at::Tensor one_left = ot_flow::lse_cpu_kernel(x, y, h, 1.0);
  const at::Tensor expected = at::mv(x, y[650]) + 0.25;
  EXPECT_TRUE(at::allclose(one_left, expected, 1e-12, 1e-12));
}

TEST(LseKernel, SameBitsForAnyThreadCount) {
  const at::Tensor x = at::randn({300, 17});
  const at::Tensor y = at::randn({5000, 17});
  const at::Tensor h = at::randn({5000});
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const at::Tensor one = ot_flow::lse_cpu_kernel(x, y, h, 0.5);
  at::set_num_threads(std::max(2, threads));
  const at::Tensor many = ot_flow::lse_cpu_kernel(x, y, h, 0.5);
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(one, many));
}

}  // namespace

// Batched kernel (the problems as the outer task dimension): problem b gets the bits of the 2-D
// kernel on (x[b], y[b], h[b], scales[b]) -- the same tiles and GEMMs on the same memory.
TEST(LseKernel, BatchedEqualsTwoDimensionalPerProblem) {
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    const auto opts = at::TensorOptions().dtype(dtype);
    const at::Tensor x = at::randn({3, 131, 5}, opts);
    const at::Tensor y = at::randn({3, 1031, 5}, opts);
    const at::Tensor h = at::randn({3, 1031}, opts);
    const std::vector<double> scales = {0.5, 1.0, 2.5};
    const at::Tensor out = ot_flow::lse_cpu_batched_kernel(x, y, h, scales);
    ASSERT_EQ(out.dim(), 2);
    for (int64_t b = 0; b < 3; ++b) {
      EXPECT_TRUE(at::equal(out[b], ot_flow::lse_cpu_kernel(x[b], y[b], h[b], scales[b]))) << "problem " << b;
    }
  }
}
