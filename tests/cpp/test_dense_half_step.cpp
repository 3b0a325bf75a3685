// The ATen paths that the CUDA kernels of softmin_dense and marginal_error take, run here on CPU
// tensors against the CPU paths: the GPU machines are lent only now and then, and these paths
// would otherwise first run there.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "ops/marginal_error.h"
#include "ops/softmin_dense.h"

namespace {

TEST(DenseHalfStep, BiasAndScalingSameBitsInLoopsAndInAtenOps) {
  at::manual_seed(3);
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    for (const std::vector<double>& eps : {std::vector<double>{0.37}, std::vector<double>{0.1, 7.0, 1e-3}}) {
      const int64_t batch = static_cast<int64_t>(eps.size());
      const auto shape = batch == 1 ? std::vector<int64_t>{1031} : std::vector<int64_t>{batch, 1031};
      const at::Tensor t = at::randn(shape, at::TensorOptions().dtype(dtype)) * 5;
      const at::Tensor add = at::randn(shape, at::TensorOptions().dtype(dtype));
      for (const double sign : {1.0, -1.0}) {
        EXPECT_TRUE(at::equal(ot_flow::divided_rows(t, eps, sign, add, true),
                              ot_flow::divided_rows(t, eps, sign, add, false)));
        EXPECT_TRUE(at::equal(ot_flow::divided_rows(t, eps, sign, std::nullopt, true),
                              ot_flow::divided_rows(t, eps, sign, std::nullopt, false)));
        at::Tensor loops = t.clone(), aten = t.clone();
        ot_flow::scale_rows_(loops, eps, sign, true);
        ot_flow::scale_rows_(aten, eps, sign, false);
        EXPECT_TRUE(at::equal(loops, aten));
      }
      // and what they compute: t / (sign eps_b) + add
      const at::Tensor e = at::tensor(eps, at::kDouble).to(dtype);
      const at::Tensor want = t / (batch == 1 ? e[0] : e.unsqueeze(1)) + add;
      EXPECT_TRUE(at::allclose(ot_flow::divided_rows(t, eps, 1.0, add, true), want));
    }
  }
}

at::Tensor cpu_marginal_error(const at::Tensor& c, const at::Tensor& u, const at::Tensor& w, double scale,
                              std::optional<c10::ArrayRef<double>> scales) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ot_flow::marginal_error", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                               std::optional<c10::ArrayRef<double>>)>();
  return op.call(c, u, w, scale, scales);
}

TEST(DenseHalfStep, MarginalErrorAtenOpsMatchTheLoop) {
  at::manual_seed(4);
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    const at::Tensor c = at::randn({3, 4099}, at::TensorOptions().dtype(dtype));
    const at::Tensor u = at::randn({3, 4099}, at::TensorOptions().dtype(dtype));
    const at::Tensor w = at::rand({3, 4099}, at::TensorOptions().dtype(at::kDouble));
    const std::vector<double> scales{0.5, 2.0, 1e-4};
    const at::Tensor loop = cpu_marginal_error(c, u, w, 1.0, scales);
    const at::Tensor aten = ot_flow::marginal_error_aten(c, u, w, 1.0, scales);
    ASSERT_EQ(loop.sizes(), aten.sizes());
    EXPECT_TRUE(at::allclose(loop, aten, 1e-12, 0.0));
    const at::Tensor one = ot_flow::marginal_error_aten(c[1], u[1], w[1], 2.0, std::nullopt);
    EXPECT_EQ(one.dim(), 0);
    EXPECT_NEAR(one.item<double>(), loop[1].item<double>(), 1e-12 * loop[1].item<double>());
    for (const double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                             -std::numeric_limits<double>::infinity()}) {
      at::Tensor ub = u.clone();
      ub[2][17] = bad;
      const at::Tensor l = cpu_marginal_error(c, ub, w, 1.0, scales);
      const at::Tensor a = ot_flow::marginal_error_aten(c, ub, w, 1.0, scales);
      EXPECT_TRUE(std::isnan(l[2].item<double>()) && std::isnan(a[2].item<double>()));
      EXPECT_TRUE(std::isfinite(a[0].item<double>()) && std::isfinite(a[1].item<double>()));
    }
  }
}

}  // namespace
