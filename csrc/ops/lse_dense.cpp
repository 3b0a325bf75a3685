#include "lse_dense.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"

namespace ot_flow {

at::Tensor run_lse_dense(const at::Tensor& dots, const at::Tensor& h, double scale, int64_t dim,
                         const std::optional<at::Tensor>& shift, bool validate,
                         const std::optional<c10::ArrayRef<double>>& scales, LseDenseKernel kernel) {
  constexpr const char* op = "ot_flow.lse_dense";
  TORCH_CHECK_VALUE(dots.dim() == 2 || dots.dim() == 3, op,
                    ": argument 'dots' must be a 2-D tensor (n, m), or 3-D (B, n, m) for B problems, got shape ",
                    dots.sizes());
  TORCH_CHECK_VALUE(dots.scalar_type() == at::kFloat || dots.scalar_type() == at::kDouble, op,
                    ": argument 'dots' must be float32 or float64, got ", dots.scalar_type());
  TORCH_CHECK_VALUE(dots.numel() > 0, op, ": argument 'dots' is empty (shape ", dots.sizes(), ")");
  TORCH_CHECK_VALUE(dim == 0 || dim == 1 || dim == -1 || dim == -2, op,
                    ": argument 'dim' must be 0 or 1 (or -2, -1), an axis of each matrix, got ", dim);
  dim = dim < 0 ? dim + 2 : dim;
  const bool batched = dots.dim() == 3;
  if (!batched) {
    TORCH_CHECK_VALUE(!scales.has_value(), op,
                      ": argument 'scales' is for batched inputs (dots (B, n, m)); a 2-D call takes one scale");
  }
  // From here on a 2-D call is the batch of one.
  const at::Tensor d3 = batched ? dots : dots.unsqueeze(0);
  const int64_t batch = d3.size(0), len_h = d3.size(1 + dim), len_out = d3.size(2 - dim);
  check_same_device(op, "h", h, "dots", dots);
  if (shift.has_value()) check_same_device(op, "shift", *shift, "dots", dots);
  if (batched) {
    check_batched_log_weights(op, "h", h, batch, len_h, dots, validate);
  } else {
    check_log_weights(op, "h", h, len_h, dots, validate);
  }
  const std::vector<double> all_scales = batched_scales(op, "scales", scale, scales, batch);
  std::optional<at::Tensor> shift_c;
  if (shift.has_value()) {
    const bool shaped = batched ? shift->dim() == 2 && shift->size(0) == batch && shift->size(1) == len_out
                                : shift->dim() == 1 && shift->size(0) == len_out;
    TORCH_CHECK_VALUE(shaped && shift->scalar_type() == dots.scalar_type(), op, ": argument 'shift' must be a ",
                      batched ? "(B, len) tensor with len " : "1-D tensor of length ", len_out, " and dtype ",
                      dots.scalar_type(), ", got shape ", shift->sizes(), " and dtype ", shift->scalar_type());
    TORCH_CHECK_VALUE(!validate || at::isfinite(*shift).all().item<bool>(), op,
                      ": argument 'shift' contains NaN or Inf");
    shift_c = (batched ? *shift : shift->unsqueeze(0)).contiguous();
  }
  at::Tensor out = kernel(d3.contiguous(), (batched ? h : h.unsqueeze(0)).contiguous(), all_scales, dim, shift_c);
  // NaN comes out of a NaN or +Inf in dots, or of scale * dots + h overflowing the dtype.
  TORCH_CHECK_VALUE(!validate || !at::isnan(out).any().item<bool>(), op, ": argument 'dots' contains NaN or +Inf, or ",
                    "scale * dots + h overflows ", float_name(dots.scalar_type()), " (pass float64 or a smaller scale)");
  return batched ? out : out.squeeze(0);
}

namespace {

at::Tensor lse_dense_cpu(const at::Tensor& dots, const at::Tensor& h, double scale, int64_t dim,
                         const std::optional<at::Tensor>& shift, bool validate,
                         std::optional<c10::ArrayRef<double>> scales) {
  return run_lse_dense(dots, h, scale, dim, shift, validate, scales, &lse_dense_cpu_kernel);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def("lse_dense(Tensor dots, Tensor h, float scale, int dim, Tensor? shift=None, bool validate=True, "
        "float[]? scales=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(ot_flow, CPU, m) { m.impl("lse_dense", &lse_dense_cpu); }

}  // namespace ot_flow
