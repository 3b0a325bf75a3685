// The CUDA kernels of the cached half-step's two ops: softmin_dense on lse_dense's CUDA kernel,
// marginal_error in ATen ops (an O(n) reduction next to the O(n m) pass; no kernel of its own).
#include <torch/library.h>

#include "../marginal_error.h"
#include "../softmin_dense.h"

namespace ot_flow {
namespace {

at::Tensor softmin_dense_cuda(const at::Tensor& dots, const at::Tensor& g, double eps, int64_t dim,
                              const std::optional<at::Tensor>& log_weights, const std::optional<at::Tensor>& current,
                              std::optional<c10::ArrayRef<double>> epsilons, bool validate) {
  return run_softmin_dense(dots, g, eps, dim, log_weights, current, epsilons, validate, &lse_dense_cuda_kernel);
}

}  // namespace

TORCH_LIBRARY_IMPL(ot_flow, CUDA, m) {
  m.impl("softmin_dense", &softmin_dense_cuda);
  m.impl("marginal_error", &marginal_error_aten);
}

}  // namespace ot_flow
