// The opt-in switches of the tensor-core engine (engine.h): the engine itself, how it runs
// "highest", and the block rows of lse and mips top-1.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

#include "engine.h"

namespace ot_flow::cuda::engine {

namespace {

// Whether environment variable `name` selects `alternative` (true) or `fallback` (false, also
// when unset or empty), read on each call so that tests and scripts can switch it; anything else
// raises, naming the variable.
bool selects(const char* name, const char* fallback, const char* alternative) {
  const char* value = std::getenv(name);
  if (value == nullptr || value[0] == '\0' || std::strcmp(value, fallback) == 0) return false;
  if (std::strcmp(value, alternative) == 0) return true;
  TORCH_CHECK_VALUE(false, "ot_flow: environment variable ", name, " must be '", fallback, "' (the default) or '",
                    alternative, "', got '", value, "'");
  return false;
}

}  // namespace

bool tensor_cores_selected() { return selects("OT_FLOW_CUDA_ENGINE", "fma", "tensor_cores"); }

bool highest_as_split_f16() { return selects("OT_FLOW_ENGINE_HIGHEST", "split_tf32", "split_f16"); }

bool tall_blocks_selected() { return selects("OT_FLOW_ENGINE_BLOCK_ROWS", "64", "128"); }

bool engine_handles(const at::Tensor& x) { return x.scalar_type() == at::kFloat; }

}  // namespace ot_flow::cuda::engine
