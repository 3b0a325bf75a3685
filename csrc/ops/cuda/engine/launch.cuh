// Host side of an engine launch: which traits a problem gets, and its grid.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../chunk_plan.cuh"
#include "kernel_traits.cuh"
#include "problem_batch.cuh"

namespace ot_flow::cuda::engine {

// Calls fn(Traits{}, std::integral_constant<int, Width>{}) with the traits for `mode` and d: the
// narrowest slice that holds d (8 or 16), and 16-byte copies when every row starts on a 16-byte
// boundary (d % 4 == 0 and aligned bases), else 4-byte copies. Split float16 and bfloat16 take
// their packed operands (streamed_operands.h; d the words per row, whole 16s, 16-byte rows): one
// slice of 16 words where that holds d, else slices of 32, whose steps do twice the MMAs for the
// same staging, barrier and loop overhead (about 190 instructions a 16-word step of split
// float16 at d = 64, a third of them that overhead). PackedSlice is the widest packed slice an
// op takes: 16 where the op's own shared memory leaves no room for the 32-word stages
// (barycentric's value tile). Slice16Warps: the warps of the 16-wide kernels (d > 8), 4 (64-row
// blocks) or 8 (128-row blocks: half the L2 reads of y, kernel_traits.cuh); with 8, packed
// operands take 16-word slices where d > 16 words (32-word stages would not fit 128 rows in the
// static shared memory). The 8-wide kernels (d <= 8) and the packed ones of one 16-word slice (a
// few bytes of y a row) keep 4. TakesSplitF16: false for ops that never stream split float16
// (mips: no kernels of its traits).
template <int PackedSlice = 32, int Slice16Warps = 4, bool TakesSplitF16 = true, class Fn>
void with_traits(DotMode mode, int64_t d, bool rows_aligned16, Fn&& fn) {
  auto with_width = [&](auto traits) {
    if (rows_aligned16) {
      fn(traits, std::integral_constant<int, 4>{});
    } else {
      fn(traits, std::integral_constant<int, 1>{});
    }
  };
  auto packed = [&](auto mode_constant) {
    constexpr DotMode kMode = decltype(mode_constant)::value;
    TORCH_INTERNAL_ASSERT(d % 16 == 0 && rows_aligned16, "the engine stages packed operands in whole 16-byte rows");
    using Four = std::integral_constant<int, 4>;
    if constexpr (PackedSlice == 16) {
      fn(KernelTraits<kMode, 16>{}, Four{});
    } else {
      static_assert(PackedSlice == 32, "packed slices of 16 or 32 words");
      if (d <= 16) return fn(KernelTraits<kMode, 16>{}, Four{});
      if constexpr (Slice16Warps == 8) {
        fn(KernelTraits<kMode, 16, 8>{}, Four{});
      } else {
        fn(KernelTraits<kMode, 32>{}, Four{});
      }
    }
  };
  switch (mode) {
    case DotMode::kSplitTF32:
      if (d <= 8) return with_width(KernelTraits<DotMode::kSplitTF32, 8>{});
      return with_width(KernelTraits<DotMode::kSplitTF32, 16, Slice16Warps>{});
    case DotMode::kTF32:
      if (d <= 8) return with_width(KernelTraits<DotMode::kTF32, 8>{});
      return with_width(KernelTraits<DotMode::kTF32, 16, Slice16Warps>{});
    case DotMode::kBF16:
      return packed(std::integral_constant<DotMode, DotMode::kBF16>{});
    case DotMode::kSplitF16:
      if constexpr (TakesSplitF16) return packed(std::integral_constant<DotMode, DotMode::kSplitF16>{});
      TORCH_INTERNAL_ASSERT(false, "this op streams no split float16");
  }
}

// Whether rows of d floats from a and from b all start on 16-byte boundaries (16-byte copies).
inline bool rows_aligned16(const void* a, const void* b, int64_t d) {
  return d % 4 == 0 && reinterpret_cast<std::uintptr_t>(a) % 16 == 0 && reinterpret_cast<std::uintptr_t>(b) % 16 == 0;
}

inline bool rows_aligned16(const at::Tensor& a, const at::Tensor& b) {
  return rows_aligned16(a.const_data_ptr(), b.const_data_ptr(), a.size(-1));
}

// The grid of a launch of n rows and m columns, for a kernel of Traits that BlocksPerMultiprocessor
// blocks share a multiprocessor (its __launch_bounds__): column chunks up to one wave
// (plan_chunks_in_one_wave).
template <class Traits, int BlocksPerMultiprocessor>
ChunkPlan plan_launch(int64_t n, int64_t m) {
  const int64_t slots =
      int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} * BlocksPerMultiprocessor;
  return plan_chunks_in_one_wave(n, m, slots, Traits::kBlockRows, Traits::kBlockCols);
}

// The launches of a batched call (B problems of n rows and m columns): grid x the row blocks of
// one problem, y the column chunks, z the problems times `z_per_problem` blocks each (the
// barycentric value blocks), in launches of at most 256 problems (the kernel parameter's batch),
// fewer where grid z's limit says so. The column split aims at the whole call's blocks, not one
// problem's (plan_launch).
struct BatchedLaunches {
  ChunkPlan plan;  // plan.row_blocks: one problem's
  int64_t problems, z_per_problem;

  // Calls launch(first, count, grid) for problems [first, first + count), launch after launch.
  template <class Fn>
  void for_each(Fn&& launch) const {
    const int64_t per_launch = std::min<int64_t>(ProblemBatch::kMaxProblems, kMaxGridZ / z_per_problem);
    for (int64_t first = 0; first < problems; first += per_launch) {
      const int64_t count = std::min(per_launch, problems - first);
      launch(first, count,
             dim3(static_cast<unsigned>(plan.row_blocks), static_cast<unsigned>(plan.chunks),
                  static_cast<unsigned>(count * z_per_problem)));
    }
  }
};

template <class Traits, int BlocksPerMultiprocessor>
BatchedLaunches plan_batched_launches(const char* op, int64_t problems, int64_t n, int64_t m,
                                      int64_t z_per_problem = 1) {
  ChunkPlan plan = plan_launch<Traits, BlocksPerMultiprocessor>(n * problems * z_per_problem, m);
  plan.row_blocks = (n + Traits::kBlockRows - 1) / Traits::kBlockRows;
  TORCH_CHECK(plan.row_blocks <= std::numeric_limits<int32_t>::max() && z_per_problem <= kMaxGridZ, op,
              ": problem too large for one launch");
  return {plan, problems, z_per_problem};
}

}  // namespace ot_flow::cuda::engine
