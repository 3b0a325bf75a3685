#include "softmin_dense.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "checks.h"

namespace ot_flow {
namespace {

constexpr const char* kOp = "ot_flow.softmin_dense";

// A per-point vector of a (batched) call: (len) for 2-D D, (B, len) for batched D, D's dtype,
// D's device; with `validate`, NaN and +inf are refused (-inf drops the point, as in lse_dense).
void check_vector(const char* name, const at::Tensor& t, const at::Tensor& d3, bool batched, int64_t len,
                  bool validate) {
  check_same_device(kOp, name, t, "dots", d3);
  if (batched) {
    check_batched_log_weights(kOp, name, t, d3.size(0), len, d3, validate);
  } else {
    check_log_weights(kOp, name, t, len, d3, validate);
  }
}

}  // namespace

at::Tensor divided_rows(const at::Tensor& t, const std::vector<double>& eps, double sign,
                        const std::optional<at::Tensor>& add, bool plain_loops) {
  const int64_t batch = static_cast<int64_t>(eps.size());
  if (plain_loops) {
    const at::Tensor tc = t.contiguous();
    const at::Tensor ac = add.has_value() ? add->contiguous() : at::Tensor();
    at::Tensor out = at::empty_like(tc);
    const int64_t len = tc.numel() / batch;
    AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "ot_flow_softmin_dense_bias", [&] {
      const scalar_t* tp = tc.const_data_ptr<scalar_t>();
      const scalar_t* ap = add.has_value() ? ac.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* op = out.data_ptr<scalar_t>();
      for (int64_t b = 0; b < batch; ++b) {
        const scalar_t e = static_cast<scalar_t>(sign * eps[b]);
        for (int64_t i = b * len; i < (b + 1) * len; ++i) op[i] = ap ? tp[i] / e + ap[i] : tp[i] / e;
      }
    });
    return out;
  }
  const at::Tensor e = at::tensor(eps, at::kDouble).mul_(sign).to(t.options(), /*non_blocking=*/true);
  at::Tensor out = t / (t.dim() == 1 ? e.squeeze(0) : e.unsqueeze(1));
  return add.has_value() ? out.add_(*add) : out;
}

// out (as divided_rows' t) times sign * eps[b] in place, problem by problem.
void scale_rows_(at::Tensor& out, const std::vector<double>& eps, double sign, bool plain_loops) {
  const int64_t batch = static_cast<int64_t>(eps.size());
  if (plain_loops) {
    const int64_t len = out.numel() / batch;
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ot_flow_softmin_dense_scale", [&] {
      scalar_t* op = out.data_ptr<scalar_t>();
      for (int64_t b = 0; b < batch; ++b) {
        const scalar_t e = static_cast<scalar_t>(sign * eps[b]);
        for (int64_t i = b * len; i < (b + 1) * len; ++i) op[i] *= e;
      }
    });
    return;
  }
  const at::Tensor e = at::tensor(eps, at::kDouble).mul_(sign).to(out.options(), /*non_blocking=*/true);
  out.mul_(out.dim() == 1 ? e.squeeze(0) : e.unsqueeze(1));
}

at::Tensor run_softmin_dense(const at::Tensor& dots, const at::Tensor& g, double eps, int64_t dim,
                             const std::optional<at::Tensor>& log_weights, const std::optional<at::Tensor>& current,
                             const std::optional<c10::ArrayRef<double>>& epsilons, bool validate,
                             LseDenseKernel kernel) {
  TORCH_CHECK_VALUE(dots.dim() == 2 || dots.dim() == 3, kOp,
                    ": argument 'dots' must be a 2-D tensor (n, m), or 3-D (B, n, m) for B problems, got shape ",
                    dots.sizes());
  TORCH_CHECK_VALUE(dim == 0 || dim == 1 || dim == -1 || dim == -2, kOp,
                    ": argument 'dim' must be 0 or 1 (or -2, -1), an axis of each matrix, got ", dim);
  dim = dim < 0 ? dim + 2 : dim;
  const bool batched = dots.dim() == 3;
  TORCH_CHECK_VALUE(batched || !epsilons.has_value(), kOp,
                    ": argument 'epsilons' is for batched inputs (dots (B, n, m)); a 2-D call takes one eps");
  const int64_t batch = batched ? dots.size(0) : 1;
  // g runs along the reduced axis (dim of each matrix), the output along the other one
  const int64_t len_g = dots.size(dots.dim() - 2 + dim), len_out = dots.size(dots.dim() - 1 - dim);
  // The lse_dense checks would name these 'h' and 'shift'; here they carry their own names.
  TORCH_CHECK_VALUE(dots.scalar_type() == at::kFloat || dots.scalar_type() == at::kDouble, kOp,
                    ": argument 'dots' must be float32 or float64, got ", dots.scalar_type());
  check_vector("g", g, dots, batched, len_g, validate);
  if (log_weights.has_value()) check_vector("log_weights", *log_weights, dots, batched, len_g, validate);
  if (current.has_value()) {
    check_vector("current", *current, dots, batched, len_out, false);
    TORCH_CHECK_VALUE(!validate || at::isfinite(*current).all().item<bool>(), kOp,
                      ": argument 'current' contains NaN or Inf");
  }
  std::vector<double> eps_b = epsilons.has_value() ? epsilons->vec() : std::vector<double>(batch, eps);
  TORCH_CHECK_VALUE(static_cast<int64_t>(eps_b.size()) == batch, kOp, ": argument 'epsilons' must hold one value ",
                    "per problem (", batch, "), got ", eps_b.size());
  for (double e : eps_b) {
    TORCH_CHECK_VALUE(std::isfinite(e) && e > 0, kOp, ": argument '", epsilons.has_value() ? "epsilons" : "eps",
                      "' must be finite and > 0, got ", e);
  }
  std::vector<double> scales(batch);
  for (int64_t b = 0; b < batch; ++b) scales[b] = 1.0 / eps_b[b];
  // bias = g / eps + log_w and shift = current / -eps, elementwise in D's dtype, and out * -eps.
  const bool cpu = dots.device().is_cpu();
  const at::Tensor bias = divided_rows(g, eps_b, 1.0, log_weights, cpu);
  const std::optional<at::Tensor> shift =
      current.has_value() ? std::optional(divided_rows(*current, eps_b, -1.0, std::nullopt, cpu)) : std::nullopt;
  at::Tensor out = run_lse_dense(dots, bias, batched ? 1.0 : scales[0], dim, shift, validate,
                                 batched ? std::optional<c10::ArrayRef<double>>(scales) : std::nullopt, kernel);
  scale_rows_(out, eps_b, -1.0, cpu && out.is_contiguous());
  return out;
}

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def("softmin_dense(Tensor dots, Tensor g, float eps, int dim, Tensor? log_weights=None, Tensor? current=None, "
        "float[]? epsilons=None, bool validate=True) -> Tensor");
}

TORCH_LIBRARY_IMPL(ot_flow, CPU, m) { m.impl("softmin_dense", &softmin_dense_on<&lse_dense_cpu_kernel>); }

}  // namespace ot_flow
