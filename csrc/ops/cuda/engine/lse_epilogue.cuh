// The engine's log-sum-exp epilogue (lse, and softmin through lse): an online (max, sum) per
// row in base 2, the hardware's native exponential. The scores s <x, y> + h are formed in
// natural units (one FMA from the dot product and the bias as loaded), their tile max taken and
// converted to log2 units once per row, and each term's exponent formed as one FMA,
// v log2 e - max2 (exp_term): per term one FMA, one max, one FMA, one exp2 and one add. (Scores
// in log2 units would need the bias scaled by log2 e: a multiply per column and tile, 16 of
// the ~320 instructions a split float16 step issued at d <= 8.)
#pragma once

#include <cuda/std/limits>

#include <cstdint>

#include "../online_lse.cuh"
#include "kernel_traits.cuh"

namespace ot_flow::cuda::engine {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float neg_inf_f() { return -::cuda::std::numeric_limits<float>::infinity(); }

// The column of a tile starting at col0 that accumulator entry (j, e) of `lane` holds (the
// layout of mma_tile.cuh): col0 + 8 j + 2 t + e, lane = 4 g + t. A row's columns rise with (j, e).
__device__ __forceinline__ int64_t tile_column(int64_t col0, int j, int e, int lane) {
  return col0 + 8 * j + 2 * (lane & 3) + e;
}

// h[c] for the lane's columns c = tile_column(col0, j, e, lane) of a tile, -inf past
// col_end, so that columns which do not exist never count. Only a chunk's last tile can reach
// past col_end: a whole tile (the test is the same for the block) loads at fixed offsets from the
// lane's first column, without a bound test and a 64-bit address per column.
template <int ColFrags>
__device__ __forceinline__ void load_tile_bias(const float* __restrict__ h, int64_t col0, int64_t col_end, int lane,
                                               float (&bias)[ColFrags][2]) {
  if (col0 + 8 * ColFrags <= col_end) {
    const float* __restrict__ lane_h = h + tile_column(col0, 0, 0, lane);
#pragma unroll
    for (int j = 0; j < ColFrags; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) bias[j][e] = lane_h[8 * j + e];
    return;
  }
#pragma unroll
  for (int j = 0; j < ColFrags; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t c = tile_column(col0, j, e, lane);
      bias[j][e] = c < col_end ? h[c] : neg_inf_f();
    }
}

// Row r's (0: g, 1: g + 8, lane = 4 g + t) scores v = s <x, y> + h in the lane's columns of a
// tile, from its dot products acc and the tile's bias; returns their max (-inf when every column
// is dropped).
template <int ColFrags>
__device__ __forceinline__ float row_scores(const float (&acc)[ColFrags][4], int r, float scale,
                                            const float (&bias)[ColFrags][2], float (&v)[ColFrags][2]) {
  float tile_max = neg_inf_f();
#pragma unroll
  for (int j = 0; j < ColFrags; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      v[j][e] = fmaf(acc[j][2 * r + e], scale, bias[j][e]);
      tile_max = fmaxf(tile_max, v[j][e]);
    }
  return tile_max;
}

// 2^(v log2 e - max2) for a score v in natural units and a max in log2 units: the term of v
// relative to the max, its exponent formed by one FMA (v = -inf gives 0).
__device__ __forceinline__ float exp_term(float v, float max2) { return exp2_ftz(fmaf(v, kLog2e, -max2)); }

template <class Traits>
struct LseEpilogue {
  float scale;
  const float* __restrict__ h;  // the column bias
  float run_max[2], run_sum[2];  // rows g and g + 8 of the warp's 16 (lane = 4 g + t); max in log2 units

  __device__ __forceinline__ LseEpilogue(float s, const float* bias) : scale(s), h(bias) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      run_max[r] = neg_inf_f();
      run_sum[r] = 0.0f;
    }
  }

  __device__ __forceinline__ void tile(const float (&acc)[Traits::kColFrags][4], int64_t col0, int64_t col_end,
                                       int lane) {
    float bias[Traits::kColFrags][2];
    load_tile_bias(h, col0, col_end, lane, bias);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float v[Traits::kColFrags][2];
      const float tile_max = row_scores(acc, r, scale, bias, v);
      if (tile_max == neg_inf_f()) continue;  // every column of the tile dropped for this row
      const float tile_max2 = tile_max * kLog2e;
      if (tile_max2 > run_max[r]) {
        run_sum[r] *= exp2_ftz(run_max[r] - tile_max2);  // 0 while run_max is still -inf
        run_max[r] = tile_max2;
      }
      float tile_sum = 0.0f;
#pragma unroll
      for (int j = 0; j < Traits::kColFrags; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) tile_sum += exp_term(v[j][e], run_max[r]);
      run_sum[r] += tile_sum;
    }
  }

  // Merges the 4 lanes of each row (quad shuffles) and writes row r's result: max + log(sum)
  // into out when the block saw every column, else the natural-log partial pair of its chunk at
  // part_*[chunk * chunk_stride + row].
  __device__ __forceinline__ void finish(int64_t warp_row0, int64_t n, int lane, float* __restrict__ out,
                                         float* __restrict__ part_max, float* __restrict__ part_sum,
                                         int64_t chunk, int64_t chunk_stride) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
#pragma unroll
      for (int offset = 1; offset < 4; offset *= 2) {
        const float other_max = __shfl_xor_sync(0xffffffffu, run_max[r], offset);
        const float other_sum = __shfl_xor_sync(0xffffffffu, run_sum[r], offset);
        merge_lse<Base2Exp>(run_max[r], run_sum[r], other_max, other_sum);
      }
      const int64_t row = warp_row0 + (lane >> 2) + 8 * r;
      if ((lane & 3) != 0 || row >= n) continue;
      const bool empty = run_max[r] == neg_inf_f();
      if (out != nullptr) {
        out[row] = empty ? neg_inf_f() : (run_max[r] + log2f(run_sum[r])) * kLn2;
      } else {
        part_max[chunk * chunk_stride + row] = empty ? neg_inf_f() : run_max[r] * kLn2;
        part_sum[chunk * chunk_stride + row] = run_sum[r];
      }
    }
  }
};

}  // namespace ot_flow::cuda::engine
