// ot_flow::softmin — the eps-scaled c-transform of a potential g for the dot cost,
//   out_i = -eps log sum_j w_j exp((g_j + <x_i, y_j>) / eps),   log w = log_weights (0 if absent),
// i.e. the Sinkhorn update min_eps_j (C_ij - g_j) with C = -<x, y>. A composite of ot_flow::lse,
// so it inherits lse's CPU and CUDA kernels, its fake kernel and its autograd.
//
// Batched: x (B, n, d), y (B, m, d), g and log_weights (B, m), one eps per problem
// (`epsilons`, B values; else `eps` for all): one batched lse call, out (B, n).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "checks.h"
#include "precision.h"

namespace ot_flow {
namespace {

void check_potential_like(const char* name, const at::Tensor& t, const at::Tensor& x, const at::Tensor& y) {
  if (y.dim() == 3) {
    TORCH_CHECK_VALUE(t.dim() == 2 && t.sym_size(0) == y.sym_size(0) && t.sym_size(1) == y.sym_size(1),
                      "ot_flow.softmin: argument '", name, "' of a batched call must be a 2-D tensor (B, m) = (",
                      y.sym_size(0), ", ", y.sym_size(1), ") (one entry per point of y), got shape ", t.sym_sizes());
  } else {
    TORCH_CHECK_VALUE(t.dim() == 1 && t.sym_size(0) == y.sym_size(0), "ot_flow.softmin: argument '", name,
                      "' must be a 1-D tensor of length ", y.sym_size(0), " (one entry per point of y), got shape ",
                      t.sym_sizes());
  }
  TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), "ot_flow.softmin: argument '", name,
                    "' must have the points' dtype ", float_name(x.scalar_type()), ", got ", t.scalar_type());
}

void check_eps(const char* name, double eps) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0, "ot_flow.softmin: argument '", name,
                    "' must be finite and > 0, got ", eps);
}

using LseOp = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double,
                         std::optional<c10::ArrayRef<double>>, c10::string_view, bool);

at::Tensor softmin(const at::Tensor& x, const at::Tensor& y, const at::Tensor& g, double eps,
                   const std::optional<at::Tensor>& log_weights, std::optional<c10::ArrayRef<double>> epsilons,
                   c10::string_view precision, bool validate) {
  // Checked under softmin's name; lse, which does the work, would report it as its own argument.
  parse_precision("ot_flow.softmin", precision);
  const bool batched = x.dim() == 3 || y.dim() == 3;
  if (epsilons.has_value()) {
    TORCH_CHECK_VALUE(batched, "ot_flow.softmin: argument 'epsilons' is for batched inputs (x (B, n, d), ",
                      "y (B, m, d)); a 2-D call takes one eps");
    for (double e : *epsilons) check_eps("epsilons", e);
  } else {
    check_eps("eps", eps);
  }
  check_same_device("ot_flow.softmin", "y", y, "x", x);
  check_same_device("ot_flow.softmin", "g", g, "x", x);
  if (log_weights.has_value()) check_same_device("ot_flow.softmin", "log_weights", *log_weights, "x", x);
  // The shapes and dtypes of g and log_weights are checked here, under their own names (lse
  // would report the bias it is given as 'h'); a composite runs under torch.compile's fake
  // tensors, so their values (NaN, +inf) can only be checked by lse, on the bias h = g / eps +
  // log_weights. A malformed x or y is left to lse, which names it.
  const int64_t dims = batched ? 3 : 2;
  if (x.dim() == dims && y.dim() == dims && x.scalar_type() == y.scalar_type() && at::isFloatingType(x.scalar_type())) {
    check_potential_like("g", g, x, y);
    if (log_weights.has_value()) check_potential_like("log_weights", *log_weights, x, y);
  }
  const at::ScalarType dtype = compute_dtype(x.scalar_type());
  if (x.scalar_type() == y.scalar_type() && dtype != x.scalar_type()) {
    // float16/bfloat16: the bias g / eps would overflow 16 bits for a small eps, so the inputs
    // are upcast before it is formed, to the dtype lse computes in anyway (the same result).
    const auto up = [dtype](const at::Tensor& t) { return t.to(dtype); };
    return softmin(up(x), up(y), up(g), eps, log_weights.has_value() ? std::optional(up(*log_weights)) : std::nullopt,
                   epsilons, precision, validate);
  }
  static const auto lse = c10::Dispatcher::singleton().findSchemaOrThrow("ot_flow::lse", "").typed<LseOp>();
  if (!batched) {
    at::Tensor bias = g / eps;
    if (log_weights.has_value()) bias = bias + *log_weights;
    return lse.call(x, y, bias, 1.0 / eps, std::nullopt, precision, validate) * (-eps);
  }
  // Per problem the arithmetic of the 2-D call (so problem b's bits are the 2-D call's); the
  // scalings are B small elementwise ops around one batched lse.
  TORCH_CHECK_VALUE(x.dim() == 3 && y.dim() == 3 && x.sym_size(0) == y.sym_size(0), "ot_flow.softmin: arguments ",
                    "'x' and 'y' must both be batched (3-D) with the same number of problems, got shapes ",
                    x.sym_sizes(), " and ", y.sym_sizes());
  const int64_t count = x.size(0);
  std::vector<double> eps_b = epsilons.has_value() ? epsilons->vec() : std::vector<double>(count, eps);
  TORCH_CHECK_VALUE(static_cast<int64_t>(eps_b.size()) == count, "ot_flow.softmin: argument 'epsilons' must hold ",
                    "one value per problem (", count, "), got ", eps_b.size());
  std::vector<at::Tensor> biases, outs;
  std::vector<double> scales;
  for (int64_t b = 0; b < count; ++b) {
    at::Tensor bias = g[b] / eps_b[b];
    if (log_weights.has_value()) bias = bias + (*log_weights)[b];
    biases.push_back(bias);
    scales.push_back(1.0 / eps_b[b]);
  }
  const at::Tensor out = lse.call(x, y, at::stack(biases), 1.0, scales, precision, validate);
  for (int64_t b = 0; b < count; ++b) outs.push_back(out[b] * (-eps_b[b]));
  return at::stack(outs);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def(
      "softmin(Tensor x, Tensor y, Tensor g, float eps, Tensor? log_weights=None, float[]? epsilons=None, "
      "str precision=\"highest\", bool validate=True) -> Tensor");
}

TORCH_LIBRARY_IMPL(ot_flow, CompositeImplicitAutograd, m) { m.impl("softmin", &softmin); }

}  // namespace ot_flow
