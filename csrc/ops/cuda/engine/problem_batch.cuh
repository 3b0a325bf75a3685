// The batch of a launch: B independent problems of equal sizes side by side, problem b at
// x + b * x_stride (and likewise y, h), each with its own scale. The batch is the grid's z
// dimension, so a batched call is one launch (per kMaxProblems problems), not a loop; a 2-D
// call is a batch of one. Ops with more per-problem parameters derive from ProblemBatch (the
// Gumbel batch adds each problem's noise key, the barycentric batch the values' stride).
#pragma once

#include <cstdint>
#include <vector>

namespace ot_flow::cuda::engine {

// CUDA's limit on gridDim.z.
constexpr int64_t kMaxGridZ = 65535;

struct ProblemBatch {
  // Passed by value as a kernel parameter (4 KB allowed): the scales need no device copy. 256
  // problems leave room for a derived batch's per-problem fields and the kernel's other
  // arguments, and keep every launch's grid z (problems, or problems x value blocks) small.
  static constexpr int kMaxProblems = 256;
  static_assert(kMaxProblems <= kMaxGridZ, "one launch's problems fit grid z");
  int64_t x_stride = 0, y_stride = 0, h_stride = 0;
  float scale[kMaxProblems];

  // Problems [first, first + count) of a call with these strides and scales[first + b].
  void set(int64_t x_stride_, int64_t y_stride_, int64_t h_stride_, const std::vector<double>& scales,
           int64_t first, int64_t count) {
    x_stride = x_stride_;
    y_stride = y_stride_;
    h_stride = h_stride_;
    for (int64_t b = 0; b < count; ++b) scale[b] = static_cast<float>(scales[first + b]);
  }
};

// Problem `problem`'s factor on the tile's dot products: its scale, times 2^-e in split float16
// (scale_exponent non-null: the operands' scales 2^a 2^b, e = a + b; streamed_operands.h), taken
// in float64, since 2^-e alone may leave float32's range where the product does not.
__device__ __forceinline__ float dot_scale(const ProblemBatch& batch, int64_t problem,
                                           const int32_t* scale_exponent) {
  return scale_exponent == nullptr
             ? batch.scale[problem]
             : static_cast<float>(ldexp(static_cast<double>(batch.scale[problem]), -scale_exponent[problem]));
}

}  // namespace ot_flow::cuda::engine
