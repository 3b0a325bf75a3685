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

void check_potential_like(const char* name, const at::Tensor& t, const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.sym_size(0) == y.sym_size(0), "ot_flow.softmin: argument '", name,
                    "' must be a 1-D tensor of length ", y.sym_size(0), " (one entry per point of y), got shape ",
                    t.sym_sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), "ot_flow.softmin: argument '", name,
                    "' must have the points' dtype ", float_name(x.scalar_type()), ", got ", t.scalar_type());
}

at::Tensor softmin(const at::Tensor& x, const at::Tensor& y, const at::Tensor& g, double eps,
                   const std::optional<at::Tensor>& log_weights) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0, "ot_flow.softmin: argument 'eps' must be finite and > 0, got ", eps);
  check_same_device("ot_flow.softmin", "y", y, "x", x);
  check_same_device("ot_flow.softmin", "g", g, "x", x);
  if (log_weights.has_value()) check_same_device("ot_flow.softmin", "log_weights", *log_weights, "x", x);
  // The shapes and dtypes of g and log_weights are checked here, under their own names (lse
  // would report the bias it is given as 'h'); a composite runs under torch.compile's fake
  // tensors, so their values (NaN, +inf) can only be checked by lse, on the bias h = g / eps +
  // log_weights. A malformed x or y is left to lse, which names it.
  if (x.dim() == 2 && y.dim() == 2 && x.scalar_type() == y.scalar_type() && at::isFloatingType(x.scalar_type())) {
    check_potential_like("g", g, x, y);
    if (log_weights.has_value()) check_potential_like("log_weights", *log_weights, x, y);
  }
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
