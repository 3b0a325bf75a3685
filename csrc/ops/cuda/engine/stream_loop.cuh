// The engine's one streaming loop: a block walks the column tiles of its chunk of y, and each
// warp hands every finished 16 x kBlockCols tile of scores <x_r, y_c> to the op's epilogue.
//
// Pipeline: the (tile, slice) steps are numbered; the slices of step s + kStages - 1 are copied
// (cp.async) while the MMAs of step s run, so kStages - 1 copies are in flight behind the math.
// When d fits one slice, the block's x slice is staged once and only y streams.
//
// Epilogue contract (lse_epilogue.cuh is one):
//   epi.tile(acc, col0, col_end, lane)  once per column tile, acc in mma_tile.cuh's layout,
//                                       columns >= col_end do not exist;
// called by every lane of every warp between two block barriers (it may not touch the staging
// buffers).
#pragma once

#include <cstdint>

#include "async_copy.cuh"
#include "kernel_traits.cuh"
#include "mma_tile.cuh"

namespace ot_flow::cuda::engine {

template <class Traits>
struct StagingBuffers {
  float x[Traits::kStages][Traits::kBlockRows][Traits::kStrideX];
  float y[Traits::kStages][Traits::kBlockCols][Traits::kStrideY];
};

// The block's part of the grid: the rows [row0, row0 + kBlockRows) of blockIdx.x and the columns
// [col_begin, col_end) of chunk blockIdx.y, the m columns cut in chunks of cols_per_chunk.
struct BlockTiles {
  int64_t row0, col_begin, col_end;
};

template <class Traits>
__device__ __forceinline__ BlockTiles block_tiles(int64_t m, int64_t cols_per_chunk) {
  const int64_t col_begin = static_cast<int64_t>(blockIdx.y) * cols_per_chunk;
  return {static_cast<int64_t>(blockIdx.x) * Traits::kBlockRows, col_begin, min(m, col_begin + cols_per_chunk)};
}

// The loop itself, for d of one slice (OneSlice: every step is a whole tile, x is staged once
// and each tile's MMAs write its scores directly) or of several (a tile takes `slices` steps).
// Separate code for the two, chosen once per block (stream_column_tiles), because a tile built
// in one step needs no running sum: the several-slice loop's "first slice ? part : acc + part"
// compiles to 32 register moves a step, which at d <= 16 are 32 of the ~500 instructions a step
// issues.
template <class Traits, int Width, bool RoundedSlices, bool OneSlice, class Epilogue>
__device__ __forceinline__ void stream_steps(const float* __restrict__ x, const float* __restrict__ y, int64_t n,
                                             int64_t d, int64_t row0, int64_t col_begin, int64_t col_end,
                                             StagingBuffers<Traits>& smem, Epilogue& epi) {
  constexpr int kStages = Traits::kStages;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t slices = OneSlice ? 1 : (d + Traits::kSliceK - 1) / Traits::kSliceK;
  const int64_t tiles = (col_end - col_begin + Traits::kBlockCols - 1) / Traits::kBlockCols;
  const int64_t steps = tiles * slices;
  const int64_t d_end = slices * Traits::kSliceK;  // d rounded up to whole slices
  constexpr bool kSliceSums =
      RoundedSlices && (Traits::kMode == DotMode::kSplitTF32 || Traits::kMode == DotMode::kSplitF16);

  // Where a step stands: its column tile, slice of d and staging buffer, advanced one step at a
  // time (a step's index would need 64-bit divisions by `slices` and kStages, about 20
  // instructions each, three a step). advance() tells whether the step moved to the next tile.
  struct Cursor {
    int64_t col0, k0;
    int buffer;
    __device__ __forceinline__ bool advance(int64_t slices_end) {
      buffer = buffer + 1 == kStages ? 0 : buffer + 1;
      if (!OneSlice) {
        k0 += Traits::kSliceK;
        if (k0 != slices_end) return false;
        k0 = 0;
      }
      col0 += Traits::kBlockCols;
      return true;
    }
  };
  // The block's rows of x are staged again for every column tile (when d takes several slices),
  // so their copies stay in L1: from L2 the re-reads would double what the block reads there,
  // at d = 64 and n = m = 65,536 16 GB a pass besides y's 16 GB (1,024 row blocks, each reading
  // y and, tile by tile, its own 16 KB of x; at an L2 rate of 5-10 TB/s, assumed, not measured,
  // 3-6 ms). y streams once through each block and bypasses L1.
  SliceStager<Traits::kBlockRows, Traits::kSliceK, Traits::kStrideX, Traits::kThreads, Width, true> x_stager(x, row0,
                                                                                                           d);
  SliceStager<Traits::kBlockCols, Traits::kSliceK, Traits::kStrideY, Traits::kThreads, Width> y_stager(y, col_begin,
                                                                                                       d);
  Cursor next{col_begin, 0, 0};  // the next step to stage
  int64_t staged = 0;
  auto stage_next = [&]() {
    if (!OneSlice || staged == 0) x_stager.stage(&smem.x[next.buffer][0][0], n - row0, d - next.k0);
    y_stager.stage(&smem.y[next.buffer][0][0], col_end - next.col0, d - next.k0);
    // To the next slice, or from a tile's last slice to the next tile's first: x back to column 0,
    // y on by kBlockCols rows.
    const bool next_tile = next.advance(d_end);
    if (!OneSlice) x_stager.advance(next_tile ? Traits::kSliceK - d_end : Traits::kSliceK);
    y_stager.advance(next_tile ? Traits::kBlockCols * d - d_end + Traits::kSliceK : Traits::kSliceK);
    ++staged;
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (staged < steps) stage_next();
    commit_async_copies();  // empty groups keep the group count in step with the step count
  }

  float acc[Traits::kColFrags][4];
  Cursor now{col_begin, 0, 0};  // the step computed
  for (int64_t step = 0; step < steps; ++step) {
    // The buffer refilled here was read at step - 1, which every warp left at the barrier below.
    if (staged < steps) stage_next();  // step + kStages - 1
    commit_async_copies();
    wait_async_copies<kStages - 1>();  // this step's group has landed (for this thread) ...
    __syncthreads();                   // ... and for every thread

    const float* xs = &smem.x[OneSlice ? 0 : now.buffer][warp * Traits::kWarpRows][0];
    const float* ys = &smem.y[now.buffer][0][0];
    if constexpr (OneSlice) {
      mma_slice<Traits, true>(xs, ys, lane, acc);  // one slice: its sum is the tile
    } else if constexpr (kSliceSums) {
      float part[Traits::kColFrags][4];
      mma_slice<Traits, true>(xs, ys, lane, part);
      const bool first_slice = now.k0 == 0;
#pragma unroll
      for (int j = 0; j < Traits::kColFrags; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = first_slice ? part[j][e] : acc[j][e] + part[j][e];
    } else {
      if (now.k0 == 0) {
#pragma unroll
        for (int j = 0; j < Traits::kColFrags; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
      }
      mma_slice<Traits, false>(xs, ys, lane, acc);
    }
    if (OneSlice || now.k0 + Traits::kSliceK == d_end) epi.tile(acc, now.col0, col_end, lane);  // the tile's last slice
    now.advance(d_end);
    __syncthreads();
  }
  wait_async_copies<0>();
}

// x (n, d) and y (m, d) row-major float32; the block owns rows [row0, row0 + kBlockRows) and
// columns [col_begin, col_end). Every thread of the block must call it.
//
// RoundedSlices (split TF32 and split float16): each slice of d is summed from zero and added to the tile
// with round-to-nearest FADDs. The tensor cores truncate their float32 accumulation, so MMAs
// into the running tile would lose up to an ulp of the whole dot product per k-step, all in one
// direction: at d = 1000 about the "highest" bound of lse (an emulation of the rounding: 1.1-1.4x
// the test's tolerance; per slice of 16 0.02x, and split float16's slices of 32 hold as many
// MMAs as split TF32's of 16). The other modes' operand errors dwarf it, and mips's
// bound (dot_error_bound) budgets an ulp per MMA and term, so they keep one accumulator (32
// registers fewer).
//
// 8-wide slices are taken only where d <= 8 (launch.cuh's with_traits), so their kernels hold
// the one-slice loop alone.
template <class Traits, int Width, bool RoundedSlices = true, class Epilogue>
__device__ __forceinline__ void stream_column_tiles(const float* __restrict__ x, const float* __restrict__ y,
                                                    int64_t n, int64_t d, int64_t row0, int64_t col_begin,
                                                    int64_t col_end, StagingBuffers<Traits>& smem,
                                                    Epilogue& epi) {
  if constexpr (Traits::kSliceK == 8) {
    stream_steps<Traits, Width, RoundedSlices, true>(x, y, n, d, row0, col_begin, col_end, smem, epi);
  } else {
    if (d <= Traits::kSliceK) {
      stream_steps<Traits, Width, RoundedSlices, true>(x, y, n, d, row0, col_begin, col_end, smem, epi);
    } else {
      stream_steps<Traits, Width, RoundedSlices, false>(x, y, n, d, row0, col_begin, col_end, smem, epi);
    }
  }
}

}  // namespace ot_flow::cuda::engine
