// Host side of an engine launch: which traits a problem gets, and its grid.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <type_traits>

#include "../chunk_plan.cuh"
#include "kernel_traits.cuh"

namespace ot_flow::cuda::engine {

// Calls fn(Traits{}, std::integral_constant<int, Width>{}) with the traits for `mode` and d: the
// narrowest slice that holds d (8 or 16; bf16 MMAs take 16), and 16-byte copies when every row
// starts on a 16-byte boundary (d % 4 == 0 and aligned bases), else 4-byte copies. Split float16
// takes its packed operands (d the words per row, whole 16s): one slice of 16 where that holds
// d, else slices of 32, whose steps do twice the MMAs for the same staging, barrier and loop
// overhead (about 190 instructions a 16-word step at d = 64, a third of them that overhead).
// SplitF16Slice is the widest split float16 slice an op takes: 0 for ops that never stream split
// float16 (mips: no kernels of its traits), 16 where the op's own shared memory leaves no room
// for the 32-word stages (barycentric's value tile).
template <int SplitF16Slice = 32, class Fn>
void with_traits(DotMode mode, int64_t d, bool rows_aligned16, Fn&& fn) {
  auto with_width = [&](auto traits) {
    if (rows_aligned16) {
      fn(traits, std::integral_constant<int, 4>{});
    } else {
      fn(traits, std::integral_constant<int, 1>{});
    }
  };
  switch (mode) {
    case DotMode::kSplitTF32:
      if (d <= 8) return with_width(KernelTraits<DotMode::kSplitTF32, 8>{});
      return with_width(KernelTraits<DotMode::kSplitTF32, 16>{});
    case DotMode::kTF32:
      if (d <= 8) return with_width(KernelTraits<DotMode::kTF32, 8>{});
      return with_width(KernelTraits<DotMode::kTF32, 16>{});
    case DotMode::kBF16:
      return with_width(KernelTraits<DotMode::kBF16, 16>{});
    case DotMode::kSplitF16:  // packed operands (streamed_operands.h): whole 16s of values, 16-byte rows
      TORCH_INTERNAL_ASSERT(SplitF16Slice > 0 && d % 16 == 0 && rows_aligned16, "split float16 stages packed operands");
      if constexpr (SplitF16Slice == 16) {
        fn(KernelTraits<DotMode::kSplitF16, 16>{}, std::integral_constant<int, 4>{});
      } else if constexpr (SplitF16Slice == 32) {
        if (d <= 16) return fn(KernelTraits<DotMode::kSplitF16, 16>{}, std::integral_constant<int, 4>{});
        fn(KernelTraits<DotMode::kSplitF16, 32>{}, std::integral_constant<int, 4>{});
      }
      return;
  }
}

inline bool rows_aligned16(const at::Tensor& a, const at::Tensor& b) {
  return a.size(-1) % 4 == 0 && reinterpret_cast<std::uintptr_t>(a.const_data_ptr()) % 16 == 0 &&
         reinterpret_cast<std::uintptr_t>(b.const_data_ptr()) % 16 == 0;
}

template <class Traits>
ChunkPlan plan_launch(int64_t n, int64_t m) {
  return plan_chunks(n, m, at::cuda::getCurrentDeviceProperties()->multiProcessorCount, Traits::kBlockRows,
                     Traits::kBlockCols);
}

}  // namespace ot_flow::cuda::engine
