// The assignment solver (csrc/ops/cpu/assignment_kernel.cpp) against brute force over all
// permutations, with ties (small integer costs), constant matrices, warm starts from arbitrary
// potentials, and the dual certificate it returns.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "ops/assignment.h"

namespace {

double brute_force_optimum(const std::vector<double>& c, int64_t n) {
  std::vector<int64_t> p(n);
  std::iota(p.begin(), p.end(), 0);
  double best = std::numeric_limits<double>::infinity();
  do {
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += c[i * n + p[i]];
    best = std::min(best, total);
  } while (std::next_permutation(p.begin(), p.end()));
  return best;
}

class AssignmentKernel : public ::testing::TestWithParam<std::tuple<int64_t, int, bool>> {};

TEST_P(AssignmentKernel, OptimalPermutationWithCertificate) {
  const auto [n, kind, warm] = GetParam();
  std::mt19937_64 rng(n * 31 + kind * 7 + warm);
  std::uniform_int_distribution<int> small(0, 2);
  std::uniform_real_distribution<double> real(-1.0, 1.0);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<double> c(n * n);
    for (double& e : c) e = kind == 0 ? small(rng) : kind == 1 ? real(rng) : 3.0;
    std::vector<double> v0(n);
    for (double& e : v0) e = 10 * real(rng);
    std::vector<int64_t> perm(n, -1);
    std::vector<double> u(n), v(n);
    ot_flow::solve_assignment_dense(c.data(), n, warm ? v0.data() : nullptr, perm.data(), u.data(), v.data());
    std::vector<int64_t> sorted = perm;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(sorted[i], i) << "not a permutation";
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += c[i * n + perm[i]];
    const double best = brute_force_optimum(c, n);
    if (kind == 1) {
      EXPECT_NEAR(total, best, 1e-12);
    } else {
      EXPECT_EQ(total, best);  // integer costs: exact
    }
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(c[i * n + perm[i]] - u[i] - v[perm[i]], 0.0, 1e-12);
      for (int64_t j = 0; j < n; ++j) EXPECT_GE(c[i * n + j] - u[i] - v[j], -1e-12);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Small, AssignmentKernel,
                         ::testing::Combine(::testing::Values<int64_t>(1, 2, 3, 5, 7), ::testing::Values(0, 1, 2),
                                            ::testing::Bool()));

TEST(AssignmentKernel, RefusesNonFiniteCosts) {
  std::vector<double> c = {0.0, std::numeric_limits<double>::quiet_NaN(), 1.0, 2.0};
  std::vector<int64_t> perm(2);
  std::vector<double> u(2), v(2);
  EXPECT_THROW(ot_flow::solve_assignment_dense(c.data(), 2, nullptr, perm.data(), u.data(), v.data()),
               std::invalid_argument);
}

}  // namespace
