// What the streaming loop reads for a call: x and y themselves, or, in split float16
// (DotMode::kSplitF16, kernel_traits.cuh), their packing, formed once per call on the device with
// ATen ops (no host synchronisation) and staged as it is: a row's 16 values per slice are 16
// words, 8 of hi halves and 8 of lo halves, k in pairs.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "kernel_traits.cuh"

namespace ot_flow::cuda::engine {

struct SplitF16Operands {
  at::Tensor x, y;     // (B, n, d_pad), (B, m, d_pad) float32 words of packed float16 halves
  at::Tensor unscale;  // (B,) float64: 1 / (s_x s_y), a power of two; the tile times it is <x, y>
  int64_t d_pad;       // d rounded up to whole slices of 16
};

// x (B, n, d), y (B, m, d) float32, each problem scaled by its own power of two.
SplitF16Operands split_f16_operands(const at::Tensor& x, const at::Tensor& y);

struct StreamedOperands {
  at::Tensor x, y;      // (B, n, d), (B, m, d): the call's, or the packed ones (d = d_pad)
  at::Tensor unscale;   // split float16's (B,) float64; undefined otherwise
  int64_t d;            // words per row the loop walks
  bool rows_aligned16;  // every row of every problem on a 16-byte boundary: 16-byte copies

  // Problem `first`'s inverse scale and those after it, or nullptr (the tile is <x, y> itself).
  const double* unscale_from(int64_t first) const {
    return unscale.defined() ? unscale.const_data_ptr<double>() + first : nullptr;
  }
};

// x (B, n, d), y (B, m, d) float32, each problem contiguous.
StreamedOperands streamed_operands(const at::Tensor& x, const at::Tensor& y, DotMode mode);

// Whether "highest" runs as split float16 (OT_FLOW_ENGINE_HIGHEST=split_f16) rather than split
// TF32 (unset or "split_tf32"): opt-in until a GPU has measured both; anything else raises.
bool highest_as_split_f16();

}  // namespace ot_flow::cuda::engine
