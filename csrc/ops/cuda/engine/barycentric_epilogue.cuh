// The engine's softmax-weighted-sum epilogue (barycentric), in the same single pass as its
// log-sum-exp: per row, a running max shared by the 4 lanes of the row (so that every lane's
// weights are relative to one max and can be summed by one MMA), the running sum of weights,
// and the unnormalised sum of weights x values, rescaled whenever the max grows (flash
// attention's online softmax).
//
// The weights W (16 x kBlockCols per warp) multiply the tile's values V (kBlockCols x
// ValueCols) on the tensor cores straight from the score registers: the MMA's k index only has
// to agree between A and B, so for TF32 the 8 columns of block j are fed in the order
// k = t <-> column 2t, k = t + 4 <-> column 2t + 1, which is where a lane's accumulator already
// holds them (mma_tile.cuh); for BF16 the accumulator layout of two blocks is the k16 operand
// layout as it stands. No shuffles, no trip through shared memory. Split float16 multiplies the
// weights in split TF32 (they are formed in registers, where the float16 split would need a
// per-tile scale).
#pragma once

#include <cstdint>

#include "kernel_traits.cuh"
#include "lse_epilogue.cuh"
#include "mma_tile.cuh"

namespace ot_flow::cuda::engine {

// The staged values of one column tile: vals[c][v], a row stride of ValueCols + 4 words puts
// the B-fragment reads (columns 2t, 2t + 1 of 8 value columns g) in 32 different banks.
template <class Traits, int ValueCols>
struct ValueTile {
  static constexpr int kStride = ValueCols + 4;
  float vals[Traits::kBlockCols][kStride];
};

template <class Traits, int ValueCols>
struct BarycentricEpilogue {
  static_assert(ValueCols % 16 == 0, "value blocks are whole k16 / n8 MMA blocks");
  static constexpr int kValueFrags = ValueCols / 8;
  static constexpr int kStride = ValueTile<Traits, ValueCols>::kStride;

  float scale;
  const float* __restrict__ h;
  const float* __restrict__ values;  // (m, k) row-major
  int64_t k, v0;                     // value columns [v0, v0 + ValueCols) of this block
  ValueTile<Traits, ValueCols>& tile_values;
  float run_max[2], run_sum[2];        // rows g and g + 8; the max is the same on the row's 4 lanes
  float weighted[kValueFrags][4];      // sum_c w_rc v_c, accumulator layout over value columns

  __device__ __forceinline__ BarycentricEpilogue(float s, const float* bias, const float* vals, int64_t k_,
                                                 int64_t v0_, ValueTile<Traits, ValueCols>& buffer)
      : scale(s), h(bias), values(vals), k(k_), v0(v0_), tile_values(buffer) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      run_max[r] = neg_inf_f();
      run_sum[r] = 0.0f;
    }
#pragma unroll
    for (int q = 0; q < kValueFrags; ++q)
#pragma unroll
      for (int e = 0; e < 4; ++e) weighted[q][e] = 0.0f;
  }

  // The tile's values, zero past col_end and past k. Each thread loads the same value column v
  // of the tile's rows c, c + kRowsPerPass, ...: one pointer and a fixed stride, a fixed count a
  // thread (a loop from threadIdx.x has a trip count the compiler cannot know, and with it a
  // remainder loop and 64-bit index arithmetic per value).
  __device__ __forceinline__ void stage_values(int64_t col0, int64_t col_end) {
    constexpr int kRowsPerPass = Traits::kThreads / ValueCols;
    static_assert(Traits::kThreads % ValueCols == 0 && Traits::kBlockCols % kRowsPerPass == 0,
                  "every thread loads one value column of the same number of rows");
    const int v = static_cast<int>(threadIdx.x) % ValueCols, c0 = static_cast<int>(threadIdx.x) / ValueCols;
    const bool column_exists = v0 + v < k;
    const int rows = static_cast<int>(col_end - col0 < Traits::kBlockCols ? col_end - col0 : Traits::kBlockCols);
    const float* __restrict__ src = values + (col0 + c0) * k + v0 + v;
    const int64_t pass_stride = kRowsPerPass * k;
#pragma unroll 8
    for (int i = 0; i < Traits::kBlockCols / kRowsPerPass; ++i) {
      const int c = c0 + i * kRowsPerPass;
      tile_values.vals[c][v] = column_exists && c < rows ? src[i * pass_stride] : 0.0f;
    }
    __syncthreads();  // every thread reaches tile() in the same step (stream_loop.cuh)
  }

  // Turns the tile's dot products into the weights 2^(v log2 e - max2) of their scores v, in
  // place (lse_epilogue.cuh's row_scores and exp_term), folding them into the running sums.
  __device__ __forceinline__ void weigh(float (&acc)[Traits::kColFrags][4], int64_t col0, int64_t col_end,
                                       int lane) {
    float bias[Traits::kColFrags][2];
    load_tile_bias(h, col0, col_end, lane, bias);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float v[Traits::kColFrags][2];
      float tile_max = row_scores(acc, r, scale, bias, v);
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(run_max[r], tile_max * kLog2e);
      if (new_max == neg_inf_f()) {  // nothing has mass in this row yet: weights 0, never NaN
#pragma unroll
        for (int j = 0; j < Traits::kColFrags; ++j) acc[j][2 * r] = acc[j][2 * r + 1] = 0.0f;
        continue;
      }
      const float rescale = exp2_ftz(run_max[r] - new_max);  // 0 while run_max is -inf
      run_max[r] = new_max;
      run_sum[r] *= rescale;
#pragma unroll
      for (int q = 0; q < kValueFrags; ++q) {
        weighted[q][2 * r] *= rescale;
        weighted[q][2 * r + 1] *= rescale;
      }
#pragma unroll
      for (int j = 0; j < Traits::kColFrags; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          // The weight as the MMA will multiply it, so that the normaliser sums the same weights
          // as the weighted sum (a constant value column then averages to itself).
          acc[j][2 * r + e] = as_operand<Traits::kMode>(exp_term(v[j][e], new_max));
          run_sum[r] += acc[j][2 * r + e];
        }
    }
  }

  // weighted += W . V on the tensor cores, W in the score registers (see the file comment). The
  // tile's product is summed from zero and added with round-to-nearest FADDs: MMAs into
  // `weighted` itself would each truncate an ulp of the running sum (the tensor cores round
  // toward zero), about 24 per tile in split TF32, all in one direction: 1e-3 and more over the
  // 1,024 tiles of a 65,536-column chunk (tests/cpp/test_engine_error_bound.cpp models it).
  __device__ __forceinline__ void multiply_values(const float (&w)[Traits::kColFrags][4], int lane) {
    const int g = lane >> 2, t = lane & 3;
    const float* vals = &tile_values.vals[0][0];
    float part[kValueFrags][4];  // each block's first MMA (j = 0) starts from the zero register
    if constexpr (Traits::kMode == DotMode::kBF16) {
#pragma unroll
      for (int j = 0; j < Traits::kColFrags; j += 2) {
        const uint32_t a[4] = {to_bf16x2(w[j][0], w[j][1]), to_bf16x2(w[j][2], w[j][3]),
                               to_bf16x2(w[j + 1][0], w[j + 1][1]), to_bf16x2(w[j + 1][2], w[j + 1][3])};
#pragma unroll
        for (int q = 0; q < kValueFrags; ++q) {
          const float* v = vals + (8 * j + 2 * t) * kStride + 8 * q + g;
          const uint32_t b[2] = {to_bf16x2(v[0], v[kStride]), to_bf16x2(v[8 * kStride], v[9 * kStride])};
          mma_bf16(part[q], a, b, j == 0);
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < Traits::kColFrags; ++j) {
        // k = t <-> column 8j + 2t, k = t + 4 <-> column 8j + 2t + 1.
        const float av[4] = {w[j][0], w[j][2], w[j][1], w[j][3]};
        uint32_t a_hi[4], a_lo[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) split_tf32(av[i], a_hi[i], a_lo[i]);
#pragma unroll
        for (int q = 0; q < kValueFrags; ++q) {
          const float* v = vals + (8 * j + 2 * t) * kStride + 8 * q + g;
          uint32_t b_hi[2], b_lo[2];
          split_tf32(v[0], b_hi[0], b_lo[0]);
          split_tf32(v[kStride], b_hi[1], b_lo[1]);
          if constexpr (Traits::kMode == DotMode::kSplitTF32 || Traits::kMode == DotMode::kSplitF16) {
            mma_tf32(part[q], a_lo, b_hi, j == 0);
            mma_tf32(part[q], a_hi, b_lo);
            mma_tf32(part[q], a_hi, b_hi);
          } else {
            mma_tf32(part[q], a_hi, b_hi, j == 0);
          }
        }
      }
    }
#pragma unroll
    for (int q = 0; q < kValueFrags; ++q)
#pragma unroll
      for (int e = 0; e < 4; ++e) weighted[q][e] += part[q][e];
  }

  __device__ __forceinline__ void tile(float (&acc)[Traits::kColFrags][4], int64_t col0, int64_t col_end,
                                       int lane) {
    stage_values(col0, col_end);
    weigh(acc, col0, col_end, lane);
    multiply_values(acc, lane);
  }

  // Sums each row's weights over its 4 lanes and writes, for one chunk of columns, either the
  // result (mean = weighted / sum, lse = max + log sum; rows without mass get 0 and -inf) or
  // the chunk's partial (max, sum, weighted) for barycentric_merge_chunks_kernel, row `row` of
  // chunk c at part_*[c * chunk_stride + row] (times k for the weighted sums). Only the blocks
  // of the first value block write lse.
  __device__ __forceinline__ void finish(int64_t warp_row0, int64_t n, int lane, float* __restrict__ mean,
                                         float* __restrict__ lse, float* __restrict__ part_weighted,
                                         float* __restrict__ part_max, float* __restrict__ part_sum,
                                         int64_t chunk, int64_t chunk_stride) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      run_sum[r] += __shfl_xor_sync(0xffffffffu, run_sum[r], 1);
      run_sum[r] += __shfl_xor_sync(0xffffffffu, run_sum[r], 2);
      const int64_t row = warp_row0 + g + 8 * r;
      if (row >= n) continue;
      const bool empty = run_max[r] == neg_inf_f();
      const float inv_sum = empty ? 0.0f : 1.0f / run_sum[r];
      float* out_row = mean != nullptr ? mean + row * k : part_weighted + (chunk * chunk_stride + row) * k;
#pragma unroll
      for (int q = 0; q < kValueFrags; ++q)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t v = v0 + 8 * q + 2 * t + e;
          if (v < k) out_row[v] = mean != nullptr ? weighted[q][2 * r + e] * inv_sum : weighted[q][2 * r + e];
        }
      if (t != 0 || v0 != 0) continue;
      if (mean != nullptr) {
        lse[row] = empty ? neg_inf_f() : (run_max[r] + log2f(run_sum[r])) * kLn2;
      } else {
        part_max[chunk * chunk_stride + row] = empty ? neg_inf_f() : run_max[r] * kLn2;
        part_sum[chunk * chunk_stride + row] = run_sum[r];
      }
    }
  }
};

}  // namespace ot_flow::cuda::engine
