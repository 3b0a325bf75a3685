// What the streaming loop reads for a call: x and y themselves, or, in split float16
// (DotMode::kSplitF16, kernel_traits.cuh), their packing, formed once per call on the device
// (per operand a max-norm reduction and one packing kernel; no host synchronisation) and staged
// as it is: a row's 16 values per slice are 16 words of float16 pairs (k = 2w, 2w + 1), 8 of hi
// halves and 8 of lo halves: x's in k order, y's so that the four words an MMA lane t needs of
// a row (hi pairs t and t + 4, lo pairs t and t + 4: the m16n8k16 B fragments) are words 4t to
// 4t + 3, one 128-bit shared-memory load.
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
  at::Tensor x, y;      // (B, n, d), (B, m, d): the call's, or the packed ones (d = d_pad)
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
