#include "marginal_error.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"

namespace ot_flow {

namespace {

constexpr const char* kOp = "ot_flow.marginal_error";

// Shape, dtype and device checks; the per-problem scales (B values; one for a 1-D call).
std::vector<double> check_marginal_error(const at::Tensor& current, const at::Tensor& updated,
                                         const at::Tensor& weights, double scale,
                                         const std::optional<c10::ArrayRef<double>>& scales) {
  TORCH_CHECK_VALUE(current.dim() == 1 || current.dim() == 2, kOp, ": argument 'current' must be a 1-D tensor ",
                    "(n), or 2-D (B, n) for B problems, got shape ", current.sizes());
  TORCH_CHECK_VALUE(updated.sizes() == current.sizes() && weights.sizes() == current.sizes(), kOp,
                    ": arguments 'updated' and 'weights' must have the shape of 'current' ", current.sizes(),
                    ", got ", updated.sizes(), " and ", weights.sizes());
  for (const at::Tensor* t : {&current, &updated, &weights}) {
    const char* name = t == &current ? "current" : t == &updated ? "updated" : "weights";
    TORCH_CHECK_VALUE(t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble, kOp, ": argument '", name,
                      "' must be float32 or float64, got ", t->scalar_type());
    check_same_device(kOp, name, *t, "current", current);
  }
  TORCH_CHECK_VALUE(updated.scalar_type() == current.scalar_type(), kOp, ": argument 'updated' must have the dtype ",
                    "of 'current' (", float_name(current.scalar_type()), "), got ", updated.scalar_type());
  TORCH_CHECK_VALUE(current.dim() == 2 || !scales.has_value(), kOp,
                    ": argument 'scales' is for batched inputs (current (B, n)); a 1-D call takes one scale");
  return batched_scales(kOp, "scales", scale, scales, current.dim() == 2 ? current.size(0) : 1);
}

}  // namespace

at::Tensor marginal_error_aten(const at::Tensor& current, const at::Tensor& updated, const at::Tensor& weights,
                               double scale, std::optional<c10::ArrayRef<double>> scales) {
  const std::vector<double> s = check_marginal_error(current, updated, weights, scale, scales);
  const at::Tensor diff = current.to(at::kDouble) - updated.to(at::kDouble);
  // Batched: the scales as a (B, 1) column, an H2D copy from pageable memory that does not wait
  // for the stream.
  at::Tensor step = current.dim() == 1
                        ? diff * s[0]
                        : diff * at::tensor(s, at::kDouble).to(current.device(), /*non_blocking=*/true).unsqueeze(1);
  const at::Tensor terms = weights.to(at::kDouble) * step.expm1_().abs_();
  return at::where(at::isfinite(diff), terms, std::numeric_limits<double>::quiet_NaN()).sum(-1);
}

namespace {

at::Tensor marginal_error_cpu(const at::Tensor& current, const at::Tensor& updated, const at::Tensor& weights,
                              double scale, std::optional<c10::ArrayRef<double>> scales) {
  const std::vector<double> s = check_marginal_error(current, updated, weights, scale, scales);
  const int64_t batch = current.dim() == 2 ? current.size(0) : 1, n = current.size(-1);
  const at::Tensor c = current.contiguous(), u = updated.contiguous(), w = weights.to(at::kDouble).contiguous();
  at::Tensor out = at::empty({batch}, current.options().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  const double* wp = w.const_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(current.scalar_type(), "ot_flow_marginal_error", [&] {
    const scalar_t* cp = c.const_data_ptr<scalar_t>();
    const scalar_t* up = u.const_data_ptr<scalar_t>();
    for (int64_t b = 0; b < batch; ++b) {
      double sum = 0.0;  // in order: O(n) next to the half-step's O(n m), and the same bits on any machine
      for (int64_t i = b * n; i < (b + 1) * n; ++i) {
        const double diff = static_cast<double>(cp[i]) - static_cast<double>(up[i]);
        sum += std::isfinite(diff) ? wp[i] * std::fabs(std::expm1(s[b] * diff))
                                   : std::numeric_limits<double>::quiet_NaN();
      }
      o[b] = sum;
    }
  });
  return current.dim() == 2 ? out : out.squeeze(0);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def("marginal_error(Tensor current, Tensor updated, Tensor weights, float scale, float[]? scales=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(ot_flow, CPU, m) { m.impl("marginal_error", &marginal_error_cpu); }

// Not differentiable (a stopping diagnostic): the result does not require grad, as argmax's.
TORCH_LIBRARY_IMPL(ot_flow, Autograd, m) { m.impl("marginal_error", torch::CppFunction::makeFallthrough()); }

}  // namespace ot_flow
