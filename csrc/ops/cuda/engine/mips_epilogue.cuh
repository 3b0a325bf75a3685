// The engine's epilogues of exact top-1 MIPS (mips with k = 1), two passes over the tiles:
//   RowMaxEpilogue   pass 1: per row, the best computed score s~_ij = <x_i, y_j>~ + bias_j;
//   RescoreEpilogue  pass 2: every column whose computed score is within 2 delta_i of that best
//                    (delta_i bounds the error of one computed score, dot_error_bound) is
//                    rescored in float64 from x and y themselves, and the row keeps the best
//                    exact score, ties to the lower column.
// The exact best is always rescored: s~_j* >= s_j* - delta >= s_j - delta >= s~_j - 2 delta for
// every j, so whatever the precision of the tiles, the answer is the float64 one; the tiles only
// decide how few columns are rescored (about one per row for random data).
#pragma once

#include <cuda/std/limits>

#include <cstdint>

#include "../gumbel_merge.cuh"
#include "kernel_traits.cuh"
#include "lse_epilogue.cuh"

namespace ot_flow::cuda::engine {

template <class Traits>
struct RowMaxEpilogue {
  const float* __restrict__ bias;
  float best[2];  // rows g and g + 8 of the warp's 16 (lane = 4 g + t)

  __device__ __forceinline__ explicit RowMaxEpilogue(const float* b) : bias(b) {
    best[0] = best[1] = neg_inf_f();
  }

  __device__ __forceinline__ void tile(const float (&acc)[Traits::kColFrags][4], int64_t col0, int64_t col_end,
                                       int lane) {
    float b[Traits::kColFrags][2];  // -inf past col_end: those columns never count
    load_tile_bias(bias, col0, col_end, lane, 1.0f, b);
#pragma unroll
    for (int j = 0; j < Traits::kColFrags; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e)
#pragma unroll
        for (int r = 0; r < 2; ++r) best[r] = fmaxf(best[r], acc[j][2 * r + e] + b[j][e]);
  }

  // The row's best over its 4 lanes, at part_max[chunk * n + row].
  __device__ __forceinline__ void finish(int64_t warp_row0, int64_t n, int lane, float* __restrict__ part_max,
                                         int64_t chunk) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      best[r] = fmaxf(best[r], __shfl_xor_sync(0xffffffffu, best[r], 1));
      best[r] = fmaxf(best[r], __shfl_xor_sync(0xffffffffu, best[r], 2));
      const int64_t row = warp_row0 + (lane >> 2) + 8 * r;
      if ((lane & 3) == 0 && row < n) part_max[chunk * n + row] = best[r];
    }
  }
};

// The inputs of the rescoring pass: the points themselves (row-major, d columns), the bias,
// each row's computed best (pass 1), |x_i|, and max_j |y_j| and max_j |bias_j| (finite ones) on
// the device, so that no bound is read back on the host.
struct RescoreInputs {
  const float* x;
  const float* y;
  const float* bias;
  const float* row_best;
  const float* x_norm;
  const float* y_norm_max;
  const float* bias_max;
  int64_t d;
  float error_per_norm;  // dot_error_bound(mode, d)
};

template <class Traits>
struct RescoreEpilogue {
  RescoreInputs in;
  int64_t rows[2];
  float threshold[2];
  float delta[2];  // the bound on one computed score's error in row r
  double best[2];
  int64_t best_j[2];

  __device__ __forceinline__ RescoreEpilogue(const RescoreInputs& inputs, int64_t warp_row0, int64_t n, int lane)
      : in(inputs) {
    const float y_max = *in.y_norm_max, b_max = *in.bias_max;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      rows[r] = warp_row0 + (lane >> 2) + 8 * r;
      best[r] = -::cuda::std::numeric_limits<double>::infinity();
      best_j[r] = -1;
      if (rows[r] >= n) {
        threshold[r] = ::cuda::std::numeric_limits<float>::infinity();  // padding rows: nothing
        delta[r] = 0.0f;
        continue;
      }
      const float scale = in.x_norm[rows[r]] * y_max;
      // delta: the dot product's bound, plus the float32 rounding of adding the bias (2^-23
      // of |s~| <= |x| max|y| + max|bias|), doubled for the margin of the bound's own rounding.
      delta[r] = 2.0f * (in.error_per_norm * scale + 0x1p-23f * (scale + b_max));
      threshold[r] = in.row_best[rows[r]] - 2.0f * delta[r];
    }
  }

  __device__ __forceinline__ double exact_score(int64_t row, int64_t col) const {
    const float* xr = in.x + row * in.d;
    const float* yc = in.y + col * in.d;
    double sum = 0.0;
    for (int64_t k = 0; k < in.d; ++k) sum = fma(static_cast<double>(xr[k]), static_cast<double>(yc[k]), sum);
    return sum + static_cast<double>(in.bias[col]);
  }

  __device__ __forceinline__ void tile(const float (&acc)[Traits::kColFrags][4], int64_t col0, int64_t col_end,
                                       int lane) {
    float b[Traits::kColFrags][2];  // -inf past col_end, like a dropped column: never rescored
    load_tile_bias(in.bias, col0, col_end, lane, 1.0f, b);
    // Columns 8j + 2t + e rise with (j, e): a strict > keeps the lower column on a tie.
#pragma unroll
    for (int j = 0; j < Traits::kColFrags; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t c = col0 + 8 * j + 2 * (lane & 3) + e;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float computed = acc[j][2 * r + e] + b[j][e];
          if (!(computed >= threshold[r]) || b[j][e] == neg_inf_f()) continue;
          // Its exact score is at most computed + delta: below the lane's best, it cannot win
          // (a later column needs a strictly larger score), so it is not rescored.
          if (static_cast<double>(computed) + static_cast<double>(delta[r]) < best[r]) continue;
          const double exact = exact_score(rows[r], c);
          if (exact > best[r]) {
            best[r] = exact;
            best_j[r] = c;
          }
        }
      }
  }

  // Merges the row's 4 lanes (ties to the lower column) into part_*[chunk * n + row].
  __device__ __forceinline__ void finish(int64_t n, int lane, double* __restrict__ part_value,
                                         int64_t* __restrict__ part_index, int64_t chunk) {
    store_best_over_quad(best, best_j, rows, n, lane, part_value, part_index, chunk * n);
  }
};

}  // namespace ot_flow::cuda::engine
