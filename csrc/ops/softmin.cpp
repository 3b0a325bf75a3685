// ot_flow::softmin — the eps-scaled c-transform of a potential g for the dot cost,
//   out_i = -eps log sum_j w_j exp((g_j + <x_i, y_j>) / eps),   log w = log_weights (0 if absent),
// i.e. the Sinkhorn update min_eps_j (C_ij - g_j) with C = -<x, y>. A composite of ot_flow::lse,
// so it inherits lse's CPU and CUDA kernels, its fake kernel and its autograd.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"

namespace ot_flow {
namespace {

at::Tensor softmin(const at::Tensor& x, const at::Tensor& y, const at::Tensor& g, double eps,
                   const std::optional<at::Tensor>& log_weights) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0, "ot_flow.softmin: argument 'eps' must be finite and > 0, got ", eps);
  check_same_device("ot_flow.softmin", "y", y, "x", x);
  check_same_device("ot_flow.softmin", "g", g, "x", x);
  if (log_weights.has_value()) check_same_device("ot_flow.softmin", "log_weights", *log_weights, "x", x);
  TORCH_CHECK_VALUE(g.dim() == 1, "ot_flow.softmin: argument 'g' must be a 1-D tensor of length m, got shape ", g.sizes());
  static const auto lse = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("ot_flow::lse", "")
                              .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double)>();
  at::Tensor bias = g / eps;
  if (log_weights.has_value()) bias = bias + *log_weights;
  return lse.call(x, y, bias, 1.0 / eps) * (-eps);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def("softmin(Tensor x, Tensor y, Tensor g, float eps, Tensor? log_weights=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(ot_flow, CompositeImplicitAutograd, m) { m.impl("softmin", &softmin); }

}  // namespace ot_flow
