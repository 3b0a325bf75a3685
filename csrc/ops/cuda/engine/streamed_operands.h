// What the streaming loop reads for a call: x and y themselves (split TF32, TF32), or their
// packing into 16-bit pairs (split float16 and bfloat16, kernel_traits.cuh), formed once per
// call on the device (one packing kernel per operand, after a max-norm reduction in split
// float16; no host synchronisation) and staged as it is. Per slice of 16 words, a row holds 16
// pairs (k = 2w, 2w + 1 in the lower and upper half) in two eights: split float16's hi halves
// and lo halves of 16 values, or bfloat16's first 16 values and next 16. x's words in k order
// (the first eight, then the next); y's so that the four words an MMA lane t needs of a row
// (pairs t and t + 4 of each eight: the m16n8k16 B fragments) are words 4t to 4t + 3, one
// 128-bit shared-memory load.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "kernel_traits.cuh"

namespace ot_flow::cuda::engine {

struct SplitF16Operands {
  at::Tensor x, y;     // (B, n, d_pad), (B, m, d_pad) float32 words of packed float16 halves
  at::Tensor scale_exponent;  // (B,) int32: a + b for s_x = 2^a, s_y = 2^b; the tile times 2^-(a+b) is <x, y>
  int64_t d_pad;       // d rounded up to whole slices of 16
};

// x (B, n, d), y (B, m, d) float32, each problem scaled by its own power of two.
SplitF16Operands split_f16_operands(const at::Tensor& x, const at::Tensor& y);

struct StreamedOperands {
  at::Tensor x, y;      // (B, n, d), (B, m, d): the call's, or the packed ones (d their words per row)
  at::Tensor scale_exponent;  // split float16's (B,) int32; undefined otherwise
  int64_t d;            // words per row the loop walks
  bool rows_aligned16;  // every row of every problem on a 16-byte boundary: 16-byte copies

  // Problem `first`'s scale exponent and those after it, or nullptr (the tile is <x, y> itself).
  const int32_t* scale_exponent_from(int64_t first) const {
    return scale_exponent.defined() ? scale_exponent.const_data_ptr<int32_t>() + first : nullptr;
  }
};

// x (B, n, d), y (B, m, d) float32, each problem contiguous.
StreamedOperands streamed_operands(const at::Tensor& x, const at::Tensor& y, DotMode mode);

}  // namespace ot_flow::cuda::engine
