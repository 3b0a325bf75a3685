#include "gumbel_argmax.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "lse.h"

namespace ot_flow {

std::tuple<at::Tensor, at::Tensor> run_gumbel_argmax(const at::Tensor& x, const at::Tensor& y,
                                                     const std::optional<at::Tensor>& h, double scale,
                                                     int64_t seed, int64_t offset, int64_t row_offset,
                                                     int64_t col_offset, GumbelArgmaxKernel kernel) {
  constexpr const char* op = "ot_flow.gumbel_argmax";
  auto [xc, yc, hc] = prepare_lse_args(x, y, h, scale, op);
  TORCH_CHECK_VALUE(row_offset >= 0, op, ": argument 'row_offset' must be >= 0, got ", row_offset);
  TORCH_CHECK_VALUE(col_offset >= 0, op, ": argument 'col_offset' must be >= 0, got ", col_offset);
  return kernel(xc, yc, hc, scale, GumbelKey{seed, offset, row_offset, col_offset});
}

namespace {

std::tuple<at::Tensor, at::Tensor> gumbel_argmax_cpu(const at::Tensor& x, const at::Tensor& y,
                                                     const std::optional<at::Tensor>& h, double scale,
                                                     int64_t seed, int64_t offset, int64_t row_offset,
                                                     int64_t col_offset) {
  return run_gumbel_argmax(x, y, h, scale, seed, offset, row_offset, col_offset, &gumbel_argmax_cpu_kernel);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def(
      "gumbel_argmax(Tensor x, Tensor y, Tensor? h=None, float scale=1.0, int seed=0, int offset=0, "
      "int row_offset=0, int col_offset=0) -> (Tensor index, Tensor value)");
}

TORCH_LIBRARY_IMPL(ot_flow, CPU, m) { m.impl("gumbel_argmax", &gumbel_argmax_cpu); }

}  // namespace ot_flow
