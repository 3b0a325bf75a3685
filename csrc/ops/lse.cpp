#include "lse.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"

namespace ot_flow {

std::tuple<at::Tensor, at::Tensor, at::Tensor> prepare_lse_args(
    const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h, double scale,
    const char* op, const char* h_name) {
  // Devices first: nothing may read a tensor that sits on another device than the kernel's.
  check_same_device(op, "y", y, "x", x);
  if (h.has_value()) check_same_device(op, h_name, *h, "x", x);
  const double x_max = check_points(op, "x", x);
  const double y_max = check_points(op, "y", y);
  TORCH_CHECK_VALUE(x.scalar_type() == y.scalar_type(), op, ": arguments 'x' and 'y' must have one dtype, got ",
                    x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK_VALUE(x.size(1) == y.size(1), op, ": arguments 'x' and 'y' must have the same dimension, got x ",
                    x.sizes(), " and y ", y.sizes());
  check_finite_scalar(op, "scale", scale);
  at::Tensor bias;
  double h_max = 0.0;
  if (h.has_value()) {
    h_max = check_log_weights(op, h_name, *h, y.size(0), x);
    bias = h->contiguous();
  } else {
    bias = at::zeros({y.size(0)}, x.options());
  }
  check_logit_range(op, x.scalar_type(), x.size(1), x_max, y_max, scale, h_name, h_max);
  return {x.contiguous(), y.contiguous(), bias};
}

at::Tensor run_lse(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h,
                   double scale, LseKernel kernel) {
  auto [xc, yc, hc] = prepare_lse_args(x, y, h, scale);
  return kernel(xc, yc, hc, scale);
}

namespace {

at::Tensor lse_cpu(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h,
                   double scale) {
  return run_lse(x, y, h, scale, &lse_cpu_kernel);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def("lse(Tensor x, Tensor y, Tensor? h=None, float scale=1.0) -> Tensor");
}

TORCH_LIBRARY_IMPL(ot_flow, CPU, m) { m.impl("lse", &lse_cpu); }

}  // namespace ot_flow
