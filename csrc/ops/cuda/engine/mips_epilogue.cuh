// The engine's epilogues of exact MIPS, each pass one streaming loop over the tiles.
// Top-1 (mips with k = 1), one streaming pass (mips_engine.cu):
//   RunningBestEpilogue per row, the best computed score s~_ij = <x_i, y_j>~ + bias_j so far
//                      (b_i(t), over the row's 4 lanes, updated tile by tile), and a list of
//                      every column whose computed score reaches b_i(t) - 2 delta_i when its
//                      tile is seen (delta_i bounds the error of one computed score,
//                      score_error_bound), with that score. Since b_i(t) never exceeds the
//                      row's final best B_i, the list holds every column with s~_ij >= B_i -
//                      2 delta_i; a warp per row then rescores in float64 the listed columns
//                      that reach B_i - 2 delta_i and keeps the best exact score, ties to the
//                      lower column. On random data a row lists about one column per tile that
//                      sets a new best: ln(tiles) + 1 a chunk expected.
//   RescoreEpilogue    the same answer for rows whose list overflowed (sorted or tied data):
//                      a second streaming pass, over the row blocks holding such rows only,
//                      rescores every column within 2 delta_i of B_i as it streams.
// The exact best is always rescored: s~_j* >= s_j* - delta >= s_j - delta >= s~_j - 2 delta for
// every j, so s~_j* >= B_i - 2 delta (and so is every column that ties it exactly); whatever the
// precision of the tiles, the answer is the float64 one, and the tiles only decide how few
// columns are rescored (about one per row for random data).
// Top-k, three passes (mips_engine.cu):
//   GroupMaxEpilogue   pass 1: per row, the best computed score of each of 64 disjoint column
//                      groups (a lane's fragment slot); the k-th largest of these maxima, L_i, is
//                      at most the row's k-th largest computed score (k distinct columns reach it);
//   CandidateEpilogue  pass 2: every column with s~_ij >= L_i - 2 delta_i goes on the row's
//                      candidate list, which holds the exact top k: k columns score exactly at
//                      least L_i - delta_i, so a column of the exact top k has s >= L_i - delta_i and
//                      s~ >= L_i - 2 delta_i. A third, plain kernel rescores the list in float64.
#pragma once

#include <cuda/std/limits>

#include <cstdint>

#include "../gumbel_merge.cuh"
#include "kernel_traits.cuh"
#include "lse_epilogue.cuh"

namespace ot_flow::cuda::engine {

// Calls visit(r, j, e, col, score, bias) for each of the lane's scores in a tile: the rows g + 8 r
// (lane = 4 g + t), the columns col = tile_column(col0, j, e, lane), score = acc + bias of the
// column, bias -inf past col_end (a column that does not exist, like a dropped one). A row's
// columns come in increasing order, so a strict > keeps the lower column on a tie.
template <class Traits, class Visit>
__device__ __forceinline__ void for_each_score(const float (&acc)[Traits::kColFrags][4], const float* __restrict__ bias,
                                               int64_t col0, int64_t col_end, int lane, Visit&& visit) {
  float b[Traits::kColFrags][2];
  load_tile_bias(bias, col0, col_end, lane, b);
#pragma unroll
  for (int j = 0; j < Traits::kColFrags; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int r = 0; r < 2; ++r) visit(r, j, e, tile_column(col0, j, e, lane), acc[j][2 * r + e] + b[j][e], b[j][e]);
}

// Pass 1 of top-k: the maxima of the 64 column groups (lane t of the quad, fragment slot j, e)
// of each row, at part_group_max[(chunk * n + row) * kGroups + 16 t + 2 j + e].
template <class Traits>
struct GroupMaxEpilogue {
  static constexpr int kGroups = 4 * Traits::kColFrags * 2;
  const float* __restrict__ bias;
  float best[2][Traits::kColFrags][2];  // rows g and g + 8 of the warp's 16 (lane = 4 g + t)

  __device__ __forceinline__ explicit GroupMaxEpilogue(const float* b) : bias(b) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int j = 0; j < Traits::kColFrags; ++j) best[r][j][0] = best[r][j][1] = neg_inf_f();
  }

  __device__ __forceinline__ void tile(const float (&acc)[Traits::kColFrags][4], int64_t col0, int64_t col_end,
                                       int lane) {
    for_each_score<Traits>(acc, bias, col0, col_end, lane, [&](int r, int j, int e, int64_t, float score, float) {
      best[r][j][e] = fmaxf(best[r][j][e], score);
    });
  }

  __device__ __forceinline__ void finish(int64_t warp_row0, int64_t n, int lane, float* __restrict__ part_group_max,
                                         int64_t chunk) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = warp_row0 + (lane >> 2) + 8 * r;
      if (row >= n) continue;
      float* out = part_group_max + (chunk * n + row) * kGroups + (lane & 3) * Traits::kColFrags * 2;
#pragma unroll
      for (int j = 0; j < Traits::kColFrags; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) out[2 * j + e] = best[r][j][e];
    }
  }
};

// The inputs of the rescoring passes: the points themselves (row-major, d columns), the bias,
// each row's reference score (top-1: its computed best; top-k: L_i), |x_i|, and max_j |y_j| and
// max_j |bias_j| (finite ones) on the device, so that no bound is read back on the host.
struct RescoreInputs {
  const float* x;
  const float* y;
  const float* bias;
  const float* row_best;  // the reference score of each row
  const float* x_norm;
  const float* y_norm_max;
  const float* bias_max;
  int64_t d;
  float error_per_norm;  // dot_error_bound(mode, d)
};

// delta_i: a bound on |s~_ij - s_ij| for every column of row i: the dot product's bound, plus
// the float32 rounding of adding the bias (2^-23 of |s~| <= |x| max|y| + max|bias|), doubled for
// the margin of the bound's own rounding; 0 for the padding rows past n.
__device__ __forceinline__ float score_error_bound(const RescoreInputs& in, int64_t row, int64_t n) {
  if (row >= n) return 0.0f;
  const float scale = in.x_norm[row] * *in.y_norm_max;
  return 2.0f * (in.error_per_norm * scale + 0x1p-23f * (scale + *in.bias_max));
}

// <x_row, y_col> + bias_col in float64, from the points themselves.
__device__ __forceinline__ double exact_score(const RescoreInputs& in, int64_t row, int64_t col) {
  const float* xr = in.x + row * in.d;
  const float* yc = in.y + col * in.d;
  double sum = 0.0;
  for (int64_t k = 0; k < in.d; ++k) sum = fma(static_cast<double>(xr[k]), static_cast<double>(yc[k]), sum);
  return sum + static_cast<double>(in.bias[col]);
}

// The computed score a column of row i must reach to be rescored: the row's reference score
// minus 2 delta_i; +inf for the padding rows past n (nothing is rescored there).
__device__ __forceinline__ float candidate_threshold(const RescoreInputs& in, int64_t row, int64_t n, float delta) {
  return row < n ? in.row_best[row] - 2.0f * delta : ::cuda::std::numeric_limits<float>::infinity();
}

// Top-1's streaming pass: per row the running best computed score b (the same in the row's 4
// lanes) and the list of columns that reach b - 2 delta when their tile is seen, at
// candidates / candidate_scores[row * capacity + slot], slot from the row's counter (a row whose
// count passes `capacity` has overflowed: the overflow pass answers it, mips_engine.cu).
// A tile's scores first raise b (their max over the quad: two shuffles a row), then are tested
// against it, so a column listed is one that could still be the best, and a column that sets a
// new best is listed with it. Dropped columns (bias -inf) and the padding rows past n list nothing.
template <class Traits>
struct RunningBestEpilogue {
  const float* __restrict__ bias;
  int32_t* __restrict__ count;
  int64_t* __restrict__ candidates;
  float* __restrict__ candidate_scores;
  int64_t capacity;
  int64_t rows[2];
  float margin[2];  // 2 delta of row r; NaN for the padding rows past n: no score reaches a NaN threshold
  float best[2];    // rows g and g + 8 of the warp's 16 (lane = 4 g + t)

  __device__ __forceinline__ RunningBestEpilogue(const RescoreInputs& in, int64_t warp_row0, int64_t n, int lane,
                                                 int32_t* row_count, int64_t* row_candidates, float* row_scores,
                                                 int64_t cap)
      : bias(in.bias), count(row_count), candidates(row_candidates), candidate_scores(row_scores), capacity(cap) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      rows[r] = warp_row0 + (lane >> 2) + 8 * r;
      margin[r] = rows[r] < n ? 2.0f * score_error_bound(in, rows[r], n)
                              : ::cuda::std::numeric_limits<float>::quiet_NaN();
      best[r] = neg_inf_f();
    }
  }

  __device__ __forceinline__ void tile(const float (&acc)[Traits::kColFrags][4], int64_t col0, int64_t col_end,
                                       int lane) {
    float tile_best[2] = {neg_inf_f(), neg_inf_f()};
    for_each_score<Traits>(acc, bias, col0, col_end, lane, [&](int r, int, int, int64_t, float score, float) {
      tile_best[r] = fmaxf(tile_best[r], score);
    });
    float threshold[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_best[r] = fmaxf(tile_best[r], __shfl_xor_sync(0xffffffffu, tile_best[r], 1));
      tile_best[r] = fmaxf(tile_best[r], __shfl_xor_sync(0xffffffffu, tile_best[r], 2));
      best[r] = fmaxf(best[r], tile_best[r]);
      threshold[r] = best[r] - margin[r];
    }
    for_each_score<Traits>(acc, bias, col0, col_end, lane, [&](int r, int, int, int64_t c, float score, float b) {
      if (!(score >= threshold[r]) || b == neg_inf_f()) return;
      // A row past its capacity stops counting (give or take the lanes that raced it there), so
      // the counter stays far from int32's end whatever m, and tied data costs no more atomics.
      if (count[rows[r]] > capacity) return;
      const int slot = atomicAdd(count + rows[r], 1);
      if (slot < capacity) {
        candidates[rows[r] * capacity + slot] = c;
        candidate_scores[rows[r] * capacity + slot] = score;
      }
    });
  }

  // The row's best computed score in this chunk, at part_max[chunk * n + row].
  __device__ __forceinline__ void finish(int64_t n, int lane, float* __restrict__ part_max, int64_t chunk) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if ((lane & 3) == 0 && rows[r] < n) part_max[chunk * n + rows[r]] = best[r];
  }
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
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      rows[r] = warp_row0 + (lane >> 2) + 8 * r;
      best[r] = -::cuda::std::numeric_limits<double>::infinity();
      best_j[r] = -1;
      delta[r] = score_error_bound(in, rows[r], n);
      threshold[r] = candidate_threshold(in, rows[r], n, delta[r]);
    }
  }

  __device__ __forceinline__ void tile(const float (&acc)[Traits::kColFrags][4], int64_t col0, int64_t col_end,
                                       int lane) {
    for_each_score<Traits>(acc, in.bias, col0, col_end, lane, [&](int r, int, int, int64_t c, float computed, float b) {
      if (!(computed >= threshold[r]) || b == neg_inf_f()) return;
      // Its exact score is at most computed + delta: below the lane's best, it cannot win (a
      // later column needs a strictly larger score), so it is not rescored.
      if (static_cast<double>(computed) + static_cast<double>(delta[r]) < best[r]) return;
      const double exact = exact_score(in, rows[r], c);
      if (exact > best[r]) {
        best[r] = exact;
        best_j[r] = c;
      }
    });
  }

  // Merges the row's 4 lanes (ties to the lower column) into part_*[chunk * n + row].
  __device__ __forceinline__ void finish(int64_t n, int lane, double* __restrict__ part_value,
                                         int64_t* __restrict__ part_index, int64_t chunk) {
    store_best_over_quad(best, best_j, rows, n, lane, part_value, part_index, chunk * n);
  }
};

// Pass 2 of top-k: appends each column whose computed score reaches the row's threshold
// (L_i - 2 delta_i) to the row's list, candidates[row * capacity + slot], slot from the row's
// counter; a row that finds more than `capacity` keeps counting, and the rescoring kernel then
// scans all of its columns instead (mips_engine.cu). Dropped columns (bias -inf) never count.
template <class Traits>
struct CandidateEpilogue {
  int32_t* __restrict__ count;
  int32_t* __restrict__ candidates;
  int64_t capacity;
  const float* __restrict__ bias;
  int64_t rows[2];
  float threshold[2];

  __device__ __forceinline__ CandidateEpilogue(const RescoreInputs& in, int64_t warp_row0, int64_t n, int lane,
                                               int32_t* row_count, int32_t* row_candidates, int64_t cap)
      : count(row_count), candidates(row_candidates), capacity(cap), bias(in.bias) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      rows[r] = warp_row0 + (lane >> 2) + 8 * r;
      threshold[r] = candidate_threshold(in, rows[r], n, score_error_bound(in, rows[r], n));
    }
  }

  __device__ __forceinline__ void tile(const float (&acc)[Traits::kColFrags][4], int64_t col0, int64_t col_end,
                                       int lane) {
    for_each_score<Traits>(acc, bias, col0, col_end, lane, [&](int r, int, int, int64_t c, float computed, float b) {
      if (!(computed >= threshold[r]) || b == neg_inf_f()) return;
      const int slot = atomicAdd(count + rows[r], 1);
      if (slot < capacity) candidates[rows[r] * capacity + slot] = static_cast<int32_t>(c);
    });
  }
};

}  // namespace ot_flow::cuda::engine
