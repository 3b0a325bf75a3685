// The precision of the dot products <x_i, y_j> of the streaming ops (their string argument
// `precision`), parsed once at the op's entry and passed down to the kernels:
//   Highest  float32-accurate dot products (FMA in the inputs' dtype), the default;
//   TF32     tensor-core TF32 products, ~1e-3 relative error in the dot products;
//   BF16     tensor-core bfloat16 products, ~1e-2 relative error.
// The CPU kernels compute every mode exactly (they take no precision), and float64 inputs
// always take the exact path (prepare_lse_args turns the mode into Highest for them), so only a
// CUDA engine for float32 inputs ever sees TF32 or BF16. The list of names mirrors
// ot_flow/ops/precision.py (the Python wrappers' and fake kernels' check).
#pragma once

#include <c10/util/string_view.h>

namespace ot_flow {

enum class Precision { Highest, TF32, BF16 };

// The mode named by `precision` ("highest", "tf32" or "bf16"); raises a ValueError naming
// `op`'s argument 'precision' and the allowed values otherwise. Defined in checks.cpp.
Precision parse_precision(const char* op, c10::string_view precision);

}  // namespace ot_flow
