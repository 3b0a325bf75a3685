// The FMA kernels of mips (csrc/ops/cuda/mips_kernel.cu: the CUDA default until the tensor-core
// engine has run on a GPU) on the emulated device, against the CPU kernel and a float64 brute
// force: first the inputs of the test that crashed the Python process on the H200 (#16:
// tests/test_mips.py::test_cuda_ties_opcheck_and_limits, integer points full of ties and
// duplicates, no bias, k = 1 and 4), then awkward sizes, dropped columns and float64.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <tuple>

#include "device_emulation.h"
#include "ops/mips.h"
#include "ops/precision.h"

namespace ot_flow {
namespace {

using emulation::Settings;

// Each row's k best columns by float64 score, ties to the lower column (a stable sort of the
// negated scores keeps equal scores in column order); dropped columns (-inf) as index -1.
std::tuple<at::Tensor, at::Tensor> brute_force(const at::Tensor& x, const at::Tensor& y, const at::Tensor& bias,
                                               int64_t k) {
  const at::Tensor scores = at::matmul(x.to(at::kDouble), y.to(at::kDouble).t()) + bias.to(at::kDouble);
  const auto sorted = at::sort(-scores, /*stable=*/true, /*dim=*/1, /*descending=*/false);
  const at::Tensor values = -std::get<0>(sorted).narrow(1, 0, k);
  at::Tensor indices = std::get<1>(sorted).narrow(1, 0, k).clone();
  indices.masked_fill_(at::isneginf(values), -1);
  return {values, indices};
}

class MipsFmaEmulated : public ::testing::Test {
 protected:
  void SetUp() override {
    emulation::settings() = Settings{};
    emulation::counters() = emulation::Counters{};
  }
};

// The crashing test's data, exactly (torch.Generator().manual_seed(1), randint(-2, 3)), and k
// up to the kernel's limit, with one column chunk and with many (the chunk merge).
TEST_F(MipsFmaEmulated, IntegerTiesEqualTheCpuKernelAndBruteForce) {
  at::Generator gen = at::detail::createCPUGenerator(1);
  const at::Tensor x = at::randint(-2, 3, {200, 3}, gen).to(at::kFloat);
  const at::Tensor y = at::randint(-2, 3, {1500, 3}, gen).to(at::kFloat);
  const at::Tensor bias = at::zeros({1500});  // what bias=None becomes (prepare_lse_args)
  for (int sms : {1, 132}) {
    emulation::settings().multiprocessors = sms;
    for (int64_t k : {1, 3, 4, 64}) {
      const auto [values, indices] = mips_cuda_kernel(x, y, bias, k, Precision::Highest);
      const auto [cpu_values, cpu_indices] = mips_cpu_kernel(x, y, bias, k);
      const auto [exact_values, exact_indices] = brute_force(x, y, bias, k);
      const std::string where = "k=" + std::to_string(k) + " sms=" + std::to_string(sms);
      EXPECT_TRUE(at::equal(indices, cpu_indices)) << where;
      EXPECT_TRUE(at::equal(values, cpu_values)) << where;
      EXPECT_TRUE(at::equal(indices, exact_indices)) << where;
      EXPECT_TRUE(at::equal(values.to(at::kDouble), exact_values)) << where;
    }
  }
}

// Sizes that are not multiples of the 64 x 64 tile, one row and one column, dropped columns
// (bias -inf, never returned: -1 where a row has fewer than k columns left), float32 and float64.
TEST_F(MipsFmaEmulated, AwkwardSizesAndDroppedColumnsEqualTheBruteForce) {
  at::manual_seed(3);
  struct Case {
    int64_t n, m, d, k;
  };
  // (20, 70, 5, 64): 35 columns left for 64 places, the rest empty (-inf, -1).
  for (const Case& c : {Case{1, 1, 1, 1}, Case{67, 131, 7, 5}, Case{70, 200, 17, 1}, Case{33, 129, 64, 64},
                        Case{130, 70, 2, 4}, Case{20, 70, 5, 64}}) {
    for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
      for (int sms : {1, 132}) {
        emulation::settings().multiprocessors = sms;
        const at::Tensor x = at::randn({c.n, c.d}, dtype), y = at::randn({c.m, c.d}, dtype);
        at::Tensor bias = at::randn({c.m}, dtype);
        if (c.m > 10) bias.narrow(0, 2, c.m / 2).fill_(-std::numeric_limits<double>::infinity());
        const auto [values, indices] = mips_cuda_kernel(x, y, bias, c.k, Precision::Highest);
        const auto [exact_values, exact_indices] = brute_force(x, y, bias, c.k);
        const std::string where = "n=" + std::to_string(c.n) + " m=" + std::to_string(c.m) +
                                  " d=" + std::to_string(c.d) + " k=" + std::to_string(c.k) +
                                  " sms=" + std::to_string(sms) + " " + c10::toString(dtype);
        // Random scores are apart by far more than float32's rounding: the same columns.
        EXPECT_TRUE(at::equal(indices, exact_indices)) << where;
        const at::Tensor finite = exact_indices >= 0;
        if (c.k > c.m - c.m / 2) ASSERT_FALSE(at::all(finite).item<bool>()) << where;  // empty places tested
        EXPECT_TRUE(at::allclose(values.to(at::kDouble).masked_select(finite), exact_values.masked_select(finite),
                                 1e-5, 1e-5))
            << where;
        EXPECT_TRUE(at::all(at::isneginf(values.masked_select(~finite))).item<bool>()) << where;
      }
    }
  }
}

// The kernel's own guard: its per-thread lists hold kMipsCudaMaxK entries.
TEST_F(MipsFmaEmulated, RefusesKPastItsLists) {
  const at::Tensor x = at::randn({4, 3}), y = at::randn({100, 3}), bias = at::zeros({100});
  EXPECT_THROW(mips_cuda_kernel(x, y, bias, kMipsCudaMaxK + 1, Precision::Highest), c10::Error);
  EXPECT_THROW(mips_cuda_kernel(x, y, at::Tensor(), 1, Precision::Highest), c10::Error);
}

}  // namespace
}  // namespace ot_flow
