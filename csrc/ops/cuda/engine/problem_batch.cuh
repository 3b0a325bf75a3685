// The batch of a launch: B independent problems of equal sizes side by side, problem b at
// x + b * x_stride (and likewise y, h), each with its own scale. The batch is the grid's z
// dimension, so a batched call is one launch (per kMaxProblems problems), not a loop.
#pragma once

#include <cstdint>

namespace ot_flow::cuda::engine {

struct ProblemBatch {
  // Passed by value as a kernel parameter (4 KB allowed): the scales need no device copy.
  static constexpr int kMaxProblems = 256;
  int64_t x_stride = 0, y_stride = 0, h_stride = 0;
  float scale[kMaxProblems];
};

}  // namespace ot_flow::cuda::engine
