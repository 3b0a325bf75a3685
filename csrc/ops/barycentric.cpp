#include "barycentric.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "lse.h"

namespace ot_flow {
namespace {

// Validates the arguments; returns contiguous (x, y, h, values), h = zeros and values = y
// when absent.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> prepare_barycentric_args(
    const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h, double scale,
    const std::optional<at::Tensor>& values) {
  constexpr const char* op = "ot_flow.barycentric";
  if (values.has_value()) check_same_device(op, "values", *values, "x", x);
  auto [xc, yc, hc] = prepare_lse_args(x, y, h, scale, op);
  if (!values.has_value()) return {xc, yc, hc, yc};
  const at::Tensor& v = *values;
  TORCH_CHECK_VALUE(v.dim() == 2 && v.size(0) == y.size(0) && v.size(1) > 0, op,
                    ": argument 'values' must be a 2-D tensor (m, k) with m = ", y.size(0),
                    " and k >= 1, got shape ", v.sizes());
  TORCH_CHECK_VALUE(v.scalar_type() == x.scalar_type(), op, ": argument 'values' must have the points' dtype ",
                    x.scalar_type(), ", got ", v.scalar_type());
  const double v_max = at::linalg_vector_norm(v, INFINITY).item<double>();
  TORCH_CHECK_VALUE(std::isfinite(v_max), op, ": argument 'values' contains NaN or Inf");
  // The kernels accumulate sum_j w_ij values_j with weights w_ij <= 1 before normalising.
  const double limit = overflow_ceiling(v.scalar_type());
  TORCH_CHECK_VALUE(static_cast<double>(y.size(0)) * v_max <= limit, op, ": argument 'values' is too large: ",
                    "m * max|values| = ", static_cast<double>(y.size(0)) * v_max, " is above half the largest ",
                    float_name(v.scalar_type()), " (", limit, "), so its weighted sums can overflow; pass float64 or rescale it");
  return {xc, yc, hc, v.contiguous()};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> run_barycentric(const at::Tensor& x, const at::Tensor& y,
                                                   const std::optional<at::Tensor>& h, double scale,
                                                   const std::optional<at::Tensor>& values,
                                                   BarycentricKernel kernel) {
  auto [xc, yc, hc, vc] = prepare_barycentric_args(x, y, h, scale, values);
  return kernel(xc, yc, hc, scale, vc);
}

namespace {

std::tuple<at::Tensor, at::Tensor> barycentric_cpu(const at::Tensor& x, const at::Tensor& y,
                                                   const std::optional<at::Tensor>& h, double scale,
                                                   const std::optional<at::Tensor>& values) {
  return run_barycentric(x, y, h, scale, values, &barycentric_cpu_kernel);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def("barycentric(Tensor x, Tensor y, Tensor? h=None, float scale=1.0, Tensor? values=None) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ot_flow, CPU, m) { m.impl("barycentric", &barycentric_cpu); }

}  // namespace ot_flow
