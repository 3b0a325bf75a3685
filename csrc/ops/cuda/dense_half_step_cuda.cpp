// The CUDA kernels of the cached half-step's two ops: softmin_dense on lse_dense's CUDA kernel,
// marginal_error in ATen ops (an O(n) reduction next to the O(n m) pass; no kernel of its own).
#include <torch/library.h>

#include "../marginal_error.h"
#include "../softmin_dense.h"

namespace ot_flow {

TORCH_LIBRARY_IMPL(ot_flow, CUDA, m) {
  m.impl("softmin_dense", &softmin_dense_on<&lse_dense_cuda_kernel>);
  m.impl("marginal_error", &marginal_error_aten);
}

}  // namespace ot_flow
