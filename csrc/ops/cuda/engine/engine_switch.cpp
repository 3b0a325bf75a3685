// The opt-in switch of the tensor-core engine (engine.h).
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

#include "engine.h"

namespace ot_flow::cuda::engine {

bool tensor_cores_selected() {
  const char* value = std::getenv("OT_FLOW_CUDA_ENGINE");
  if (value == nullptr || value[0] == '\0' || std::strcmp(value, "fma") == 0) return false;
  if (std::strcmp(value, "tensor_cores") == 0) return true;
  TORCH_CHECK_VALUE(false, "ot_flow: environment variable OT_FLOW_CUDA_ENGINE must be 'fma' (the default) or ",
                    "'tensor_cores', got '", value, "'");
  return false;
}

bool engine_handles(const at::Tensor& x) { return x.scalar_type() == at::kFloat; }

}  // namespace ot_flow::cuda::engine
