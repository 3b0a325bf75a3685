// The top-k list and the CPU kernel of ot_flow::mips against a naive double loop with a
// stable sort (values descending, ties to the lowest index), ties included.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

#include "ops/mips.h"
#include "ops/top_k_list.h"

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

TEST(TopKList, KeepsTheBestSortedAndBreaksTiesByIndex) {
  std::vector<double> values(3, -kInf);
  std::vector<int64_t> indices(3, -1);
  const std::vector<std::pair<double, int64_t>> stream = {{1.0, 7}, {2.0, 3}, {1.0, 2}, {-kInf, 0}, {0.5, 1}, {2.0, 9}};
  for (const auto& [v, j] : stream) ot_flow::top_k_insert(values.data(), indices.data(), 3, v, j);
  EXPECT_EQ(values, (std::vector<double>{2.0, 2.0, 1.0}));
  EXPECT_EQ(indices, (std::vector<int64_t>{3, 9, 2}));
}

std::pair<std::vector<double>, std::vector<int64_t>> naive_top_k(const at::Tensor& x, const at::Tensor& y,
                                                                 const at::Tensor& bias, int64_t k) {
  const at::Tensor scores = at::addmm(bias.to(at::kDouble), x.to(at::kDouble), y.to(at::kDouble).t()).contiguous();
  const int64_t n = scores.size(0), m = scores.size(1);
  const double* s = scores.const_data_ptr<double>();
  std::vector<double> values;
  std::vector<int64_t> indices;
  std::vector<int64_t> order(m);
  for (int64_t i = 0; i < n; ++i) {
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[i * m + a] > s[i * m + b]; });
    for (int64_t e = 0; e < k; ++e) {
      values.push_back(s[i * m + order[e]]);
      indices.push_back(order[e]);
    }
  }
  return {values, indices};
}

class MipsKernel : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, int64_t>> {};

TEST_P(MipsKernel, MatchesNaiveSortWithTies) {
  const auto [n, m, d, k] = GetParam();
  at::manual_seed(n * 131 + m * 7 + d + k);
  // Small integers: exact scores and many ties.
  const at::Tensor x = at::randint(-2, 3, {n, d}, at::kDouble);
  const at::Tensor y = at::randint(-2, 3, {m, d}, at::kDouble);
  const at::Tensor bias = at::randint(-1, 2, {m}, at::kDouble);
  const auto [values, indices] = ot_flow::mips_cpu_kernel(x, y, bias, k);
  const auto [ref_values, ref_indices] = naive_top_k(x, y, bias, k);
  const at::Tensor flat_values = values.reshape({-1});
  const at::Tensor flat_indices = indices.reshape({-1});
  for (int64_t e = 0; e < n * k; ++e) {
    ASSERT_EQ(flat_indices[e].item<int64_t>(), ref_indices[e]) << "entry " << e;
    ASSERT_EQ(flat_values[e].item<double>(), ref_values[e]) << "entry " << e;
  }
}

// (n, m, d, k) with k <= m: one row and many, one column and a tile's worth, k = 1, k > 1, k = m.
INSTANTIATE_TEST_SUITE_P(
    Sizes, MipsKernel,
    ::testing::Values(std::make_tuple<int64_t, int64_t, int64_t, int64_t>(1, 1, 1, 1),
                      std::make_tuple<int64_t, int64_t, int64_t, int64_t>(130, 1, 4, 1),
                      std::make_tuple<int64_t, int64_t, int64_t, int64_t>(1, 13, 1, 3),
                      std::make_tuple<int64_t, int64_t, int64_t, int64_t>(130, 13, 4, 13),
                      std::make_tuple<int64_t, int64_t, int64_t, int64_t>(1, 1100, 4, 1),
                      std::make_tuple<int64_t, int64_t, int64_t, int64_t>(130, 1100, 1, 3),
                      std::make_tuple<int64_t, int64_t, int64_t, int64_t>(130, 1100, 4, 13),
                      std::make_tuple<int64_t, int64_t, int64_t, int64_t>(130, 1100, 1, 1)));

}  // namespace
