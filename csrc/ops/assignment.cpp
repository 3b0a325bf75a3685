#include "assignment.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"

namespace ot_flow {
namespace {

constexpr const char* kOp = "ot_flow.assignment_dense";

// Checks, then the CPU kernel on float64 host copies; results on the cost's device. A CUDA cost
// matrix is solved on the host: the solver is sequential (one augmenting path after another),
// and for batch sizes where a dense matrix fits, the copy costs less than the solve.
std::tuple<at::Tensor, at::Tensor, at::Tensor> assignment_dense(const at::Tensor& cost,
                                                                const std::optional<at::Tensor>& col_potential) {
  TORCH_CHECK_VALUE(cost.dim() == 2 && cost.size(0) == cost.size(1), kOp,
                    ": argument 'cost' must be a square 2-D tensor (n, n), got shape ", cost.sizes());
  TORCH_CHECK_VALUE(cost.scalar_type() == at::kFloat || cost.scalar_type() == at::kDouble, kOp,
                    ": argument 'cost' must be float32 or float64, got ", cost.scalar_type());
  TORCH_CHECK_VALUE(cost.numel() > 0, kOp, ": argument 'cost' is empty (shape ", cost.sizes(), ")");
  const int64_t n = cost.size(0);
  at::Tensor v0;
  if (col_potential.has_value()) {
    check_same_device(kOp, "col_potential", *col_potential, "cost", cost);
    TORCH_CHECK_VALUE(col_potential->dim() == 1 && col_potential->size(0) == n &&
                          col_potential->is_floating_point(),
                      kOp, ": argument 'col_potential' must be a 1-D float tensor of length ", n, ", got shape ",
                      col_potential->sizes(), " and dtype ", col_potential->scalar_type());
    v0 = col_potential->to(at::kCPU, at::kDouble).contiguous();
    TORCH_CHECK_VALUE(at::isfinite(v0).all().item<bool>(), kOp, ": argument 'col_potential' contains NaN or Inf");
  }
  const at::Tensor c = cost.to(at::kCPU, at::kDouble).contiguous();
  TORCH_CHECK_VALUE(at::isfinite(c).all().item<bool>(), kOp, ": argument 'cost' contains NaN or Inf");
  auto [perm, u, v] = assignment_dense_cpu_kernel(c, v0);
  const auto device = cost.device();
  return {perm.to(device), u.to(device, cost.scalar_type()), v.to(device, cost.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ot_flow, m) {
  m.def("assignment_dense(Tensor cost, Tensor? col_potential=None) -> "
        "(Tensor perm, Tensor row_potential, Tensor col_potential)");
}

TORCH_LIBRARY_IMPL(ot_flow, CPU, m) { m.impl("assignment_dense", &assignment_dense); }
TORCH_LIBRARY_IMPL(ot_flow, CUDA, m) { m.impl("assignment_dense", &assignment_dense); }

}  // namespace ot_flow
