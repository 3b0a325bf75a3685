#include "barycentric.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "lse.h"

namespace ot_flow {
namespace {

constexpr const char* kOp = "ot_flow.barycentric";

// Checks `values` against points x (batched: a leading problem dimension on both) and y with
// m = y's number of points; returns it contiguous.
at::Tensor checked_values(const at::Tensor& v, const at::Tensor& x, int64_t m, bool batched) {
  const char* op = kOp;
  if (batched) {
    TORCH_CHECK_VALUE(v.dim() == 3 && v.size(0) == x.size(0) && v.size(1) == m && v.size(2) > 0, op,
                      ": argument 'values' of a batched call must be a 3-D tensor (B, m, k) with B = ", x.size(0),
                      ", m = ", m, " and k >= 1, got shape ", v.sizes());
  } else {
    TORCH_CHECK_VALUE(v.dim() == 2 && v.size(0) == m && v.size(1) > 0, op,
                      ": argument 'values' must be a 2-D tensor (m, k) with m = ", m,
                      " and k >= 1, got shape ", v.sizes());
  }
  TORCH_CHECK_VALUE(v.scalar_type() == x.scalar_type(), op, ": argument 'values' must have the points' dtype ",
                    x.scalar_type(), ", got ", v.scalar_type());
  const double v_max = at::linalg_vector_norm(v, INFINITY).item<double>();
  TORCH_CHECK_VALUE(std::isfinite(v_max), op, ": argument 'values' contains NaN or Inf");
  // The kernels accumulate sum_j w_ij values_j with weights w_ij <= 1 before normalising.
  const at::ScalarType dtype = compute_dtype(v.scalar_type());
  const double limit = overflow_ceiling(dtype);
  TORCH_CHECK_VALUE(static_cast<double>(m) * v_max <= limit, op, ": argument 'values' is too large: ",
                    "m * max|values| = ", static_cast<double>(m) * v_max, " is above half the largest ",
                    float_name(dtype), " (", limit, "), so its weighted sums can overflow; pass float64 or rescale it");
  return batched ? problems_contiguous(v.to(dtype)) : computed(v);
}

// Validates the arguments of a 2-D call; returns lse's arguments and the values (y when absent).
std::tuple<LseArgs, at::Tensor> prepare_barycentric_args(const at::Tensor& x, const at::Tensor& y,
                                                         const std::optional<at::Tensor>& h, double scale,
                                                         const std::optional<at::Tensor>& values,
                                                         c10::string_view precision) {
  if (values.has_value()) check_same_device(kOp, "values", *values, "x", x);
  LseArgs args = prepare_lse_args(x, y, h, scale, precision, kOp);
  at::Tensor vc = values.has_value() ? checked_values(*values, x, y.size(0), false) : args.y;
  return {std::move(args), std::move(vc)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> run_barycentric(const at::Tensor& x, const at::Tensor& y,
                                                   const std::optional<at::Tensor>& h, double scale,
                                                   const std::optional<at::Tensor>& values,
                                                   const std::optional<c10::ArrayRef<double>>& scales,
                                                   c10::string_view precision, BarycentricKernel kernel,
                                                   BarycentricBatchedKernel batched) {
  if (!is_batched(x, y)) {
    refuse_scales_unbatched(kOp, scales);
    auto [args, vc] = prepare_barycentric_args(x, y, h, scale, values, precision);
    return kernel(args.x, args.y, args.h, scale, vc, args.precision);
  }
  if (values.has_value()) check_same_device(kOp, "values", *values, "x", x);
  const BatchedLseArgs args = prepare_batched_lse_args(x, y, h, scale, scales, precision, kOp);
  const at::Tensor vc = values.has_value() ? checked_values(*values, x, y.size(1), true) : args.y;
  if (batched != nullptr) return batched(args.x, args.y, args.h, args.scales, vc, args.precision);
  const int64_t count = args.x.size(0), n = args.x.size(1);
  at::Tensor out = at::empty({count, n, vc.size(2)}, args.x.options());
  at::Tensor lse = at::empty({count, n}, args.x.options());
  for (int64_t b = 0; b < count; ++b) {
    auto [out_b, lse_b] = kernel(args.x[b], args.y[b], args.h[b], args.scales[b], vc[b], args.precision);
    out[b].copy_(out_b);
    lse[b].copy_(lse_b);
  }
  return {out, lse};
}

namespace {

// The CPU computes every precision exactly, so its kernels take none.
std::tuple<at::Tensor, at::Tensor> barycentric_cpu(const at::Tensor& x, const at::Tensor& y,
                                                   const std::optional<at::Tensor>& h, double scale,
                                                   const std::optional<at::Tensor>& values,
                                                   std::optional<c10::ArrayRef<double>> scales,
                                                   c10::string_view precision) {
  return run_barycentric(
      x, y, h, scale, values, scales, precision,
      [](const at::Tensor& xc, const at::Tensor& yc, const at::Tensor& hc, double s, const at::Tensor& vc,
         Precision) { return barycentric_cpu_kernel(xc, yc, hc, s, vc); },
      [](const at::Tensor& xc, const at::Tensor& yc, const at::Tensor& hc, const std::vector<double>& ss,
         const at::Tensor& vc, Precision) { return barycentric_cpu_batched_kernel(xc, yc, hc, ss, vc); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def(
      "barycentric(Tensor x, Tensor y, Tensor? h=None, float scale=1.0, Tensor? values=None, "
      "float[]? scales=None, str precision=\"highest\") -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ot_flow, CPU, m) { m.impl("barycentric", &barycentric_cpu); }

}  // namespace ot_flow
