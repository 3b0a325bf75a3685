#include "lse_dense.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"

namespace ot_flow {

at::Tensor run_lse_dense(const at::Tensor& dots, const at::Tensor& h, double scale, int64_t dim,
                         const std::optional<at::Tensor>& shift, bool validate, LseDenseKernel kernel) {
  constexpr const char* op = "ot_flow.lse_dense";
  TORCH_CHECK_VALUE(dots.dim() == 2, op, ": argument 'dots' must be a 2-D tensor, got shape ", dots.sizes());
  TORCH_CHECK_VALUE(dots.scalar_type() == at::kFloat || dots.scalar_type() == at::kDouble, op,
                    ": argument 'dots' must be float32 or float64, got ", dots.scalar_type());
  TORCH_CHECK_VALUE(dots.numel() > 0, op, ": argument 'dots' is empty (shape ", dots.sizes(), ")");
  TORCH_CHECK_VALUE(dim == 0 || dim == 1 || dim == -1 || dim == -2, op,
                    ": argument 'dim' must be 0 or 1 (or -2, -1), got ", dim);
  dim = dim < 0 ? dim + 2 : dim;
  check_same_device(op, "h", h, "dots", dots);
  if (shift.has_value()) check_same_device(op, "shift", *shift, "dots", dots);
  check_log_weights(op, "h", h, dots.size(dim), dots, validate);
  check_finite_scalar(op, "scale", scale);
  std::optional<at::Tensor> shift_c;
  if (shift.has_value()) {
    const int64_t len = dots.size(1 - dim);
    TORCH_CHECK_VALUE(shift->dim() == 1 && shift->size(0) == len && shift->scalar_type() == dots.scalar_type(), op,
                      ": argument 'shift' must be a 1-D tensor of length ", len, " and dtype ", dots.scalar_type(),
                      ", got shape ", shift->sizes(), " and dtype ", shift->scalar_type());
    TORCH_CHECK_VALUE(!validate || at::isfinite(*shift).all().item<bool>(), op,
                      ": argument 'shift' contains NaN or Inf");
    shift_c = shift->contiguous();
  }
  at::Tensor out = kernel(dots.contiguous(), h.contiguous(), scale, dim, shift_c);
  // NaN comes out of a NaN or +Inf in dots, or of scale * dots + h overflowing the dtype.
  TORCH_CHECK_VALUE(!validate || !at::isnan(out).any().item<bool>(), op, ": argument 'dots' contains NaN or +Inf, or ",
                    "scale * dots + h overflows ", float_name(dots.scalar_type()), " (pass float64 or a smaller scale)");
  return out;
}

namespace {

at::Tensor lse_dense_cpu(const at::Tensor& dots, const at::Tensor& h, double scale, int64_t dim,
                         const std::optional<at::Tensor>& shift, bool validate) {
  return run_lse_dense(dots, h, scale, dim, shift, validate, &lse_dense_cpu_kernel);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def("lse_dense(Tensor dots, Tensor h, float scale, int dim, Tensor? shift=None, bool validate=True) -> Tensor");
}

TORCH_LIBRARY_IMPL(ot_flow, CPU, m) { m.impl("lse_dense", &lse_dense_cpu); }

}  // namespace ot_flow
