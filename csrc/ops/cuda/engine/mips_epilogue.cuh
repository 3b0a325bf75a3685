// The engine's epilogues of exact MIPS, each pass one streaming loop over the tiles.
// k <= 2 (top-1, and the semidiscrete fit's top-2), one streaming pass (mips_engine.cu):
//   RunningTopEpilogue per row, a running lower bound t_i(t) of its k-th largest computed score
//                      s~_ij = <x_i, y_j>~ + bias_j (k = 1: the best so far; over the row's 4
//                      lanes, updated tile by tile), and a list of every column whose computed
//                      score reaches t_i(t) - 2 delta_i when its tile is seen (delta_i bounds the
//                      error of one computed score, score_error_bound), with that score. Since
//                      t_i(t) never exceeds the row's final k-th largest B_i, the list holds every
//                      column with s~_ij >= B_i - 2 delta_i; a warp per row then rescores in
//                      float64 the listed columns that reach the final t_i - 2 delta_i, keeps
//                      the best k exact scores, ties to the lower column. On random data a row
//                      lists about k columns per tile that raises t_i: k (ln(tiles) + 1) a chunk
//                      expected.
//   RescoreEpilogue    top-1's answer for rows whose list overflowed (sorted or tied data):
//                      a second streaming pass, over the row blocks holding such rows only,
//                      rescores every column within 2 delta_i of B_i as it streams. Top-2
//                      relists such rows instead, in the same blocks, against the final bound
//                      (CandidateEpilogue), which overflows only on near-ties (then the
//                      rescoring kernel scans the row's columns, as for larger k).
// The exact best is always rescored: s~_j* >= s_j* - delta >= s_j - delta >= s~_j - 2 delta for
// every j, so s~_j* >= B_i - 2 delta (and so is every column that ties it exactly); whatever the
// precision of the tiles, the answer is the float64 one, and the tiles only decide how few
// columns are rescored (about k per row for random data). The same for the k-th: k columns score
// exactly at least B_i - delta_i, so each column of the exact top k has s~ >= B_i - 2 delta_i.
// Larger k, three passes (mips_engine.cu):
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
// each row's reference score (k <= 2: its running bound's final value, for top-1 its computed
// best; k > 2: L_i), |x_i|, and max_j |y_j| and max_j |bias_j| (finite ones) on the device, so
// that no bound is read back on the host.
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

// Appends (col, its computed score) to row's list at candidates / candidate_scores[row * capacity
// + slot], slot from the row's counter; a row whose count passes `capacity` has overflowed. A row
// past its capacity stops counting (give or take the lanes that raced it there), so the counter
// stays far from int32's end whatever m, and tied data costs no more atomics.
__device__ __forceinline__ void append_candidate(int32_t* __restrict__ count, int64_t* __restrict__ candidates,
                                                 float* __restrict__ candidate_scores, int64_t capacity, int64_t row,
                                                 int64_t col, float score) {
  if (count[row] > capacity) return;
  const int slot = atomicAdd(count + row, 1);
  if (slot < capacity) {
    candidates[row * capacity + slot] = col;
    candidate_scores[row * capacity + slot] = score;
  }
}

// The one streaming pass of top-k for k <= kMipsOnePassMaxK (K = k): per row a running lower
// bound t_i of its K-th largest computed score, the same in the row's 4 lanes, and the list of
// columns that reach t_i - 2 delta when their tile is seen (append_candidate). Each lane keeps the
// running maxima of K disjoint column groups of its own (K = 2: its even and its odd columns,
// fragment slot e), so the quad's 4K maxima come from 4K disjoint groups and their K-th largest
// is reached by K distinct columns: t_i never exceeds the row's final K-th largest computed score
// B_i, and the list holds every column with s~_ij >= B_i - 2 delta_i, which includes the exact
// top K (the bound at the top of this file: K columns score exactly at least B_i - delta_i). K = 1: t_i is the
// running best. Each tile first raises the maxima and merges them over the quad (two shuffle
// rounds a row), then tests its scores against t_i, so a column that raises t_i is listed with it.
// Dropped columns (bias -inf) and the padding rows past n list nothing.
template <class Traits, int K>
struct RunningTopEpilogue {
  static_assert(K == 1 || K == 2, "a lane's column groups are its fragment slots e = 0, 1");
  const float* __restrict__ bias;
  int32_t* __restrict__ count;
  int64_t* __restrict__ candidates;
  float* __restrict__ candidate_scores;
  int64_t capacity;
  int64_t rows[2];
  float margin[2];        // 2 delta of row r; NaN for the padding rows past n: no score reaches a NaN threshold
  float group_max[2][K];  // rows g and g + 8 of the warp's 16 (lane = 4 g + t), the lane's own groups

  __device__ __forceinline__ RunningTopEpilogue(const RescoreInputs& in, int64_t warp_row0, int64_t n, int lane,
                                                int32_t* row_count, int64_t* row_candidates, float* row_scores,
                                                int64_t cap)
      : bias(in.bias), count(row_count), candidates(row_candidates), candidate_scores(row_scores), capacity(cap) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      rows[r] = warp_row0 + (lane >> 2) + 8 * r;
      margin[r] = rows[r] < n ? 2.0f * score_error_bound(in, rows[r], n)
                              : ::cuda::std::numeric_limits<float>::quiet_NaN();
#pragma unroll
      for (int g = 0; g < K; ++g) group_max[r][g] = neg_inf_f();
    }
  }

  __device__ __forceinline__ void tile(const float (&acc)[Traits::kColFrags][4], int64_t col0, int64_t col_end,
                                       int lane) {
    for_each_score<Traits>(acc, bias, col0, col_end, lane, [&](int r, int, int e, int64_t, float score, float) {
      const int g = K == 1 ? 0 : e;
      group_max[r][g] = fmaxf(group_max[r][g], score);
    });
    float threshold[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float top[K];
      quad_top(r, top);
      threshold[r] = top[K - 1] - margin[r];
    }
    for_each_score<Traits>(acc, bias, col0, col_end, lane, [&](int r, int, int, int64_t c, float score, float b) {
      if (!(score >= threshold[r]) || b == neg_inf_f()) return;
      append_candidate(count, candidates, candidate_scores, capacity, rows[r], c, score);
    });
  }

  // top: the K largest of the quad's group maxima of row r, descending, in every lane of the quad
  // (a butterfly over lanes 1 and 2 apart; K = 2 merges two sorted pairs a round).
  __device__ __forceinline__ void quad_top(int r, float (&top)[K]) const {
    if constexpr (K == 1) {
      top[0] = group_max[r][0];
      top[0] = fmaxf(top[0], __shfl_xor_sync(0xffffffffu, top[0], 1));
      top[0] = fmaxf(top[0], __shfl_xor_sync(0xffffffffu, top[0], 2));
    } else {
      float hi = fmaxf(group_max[r][0], group_max[r][1]), lo = fminf(group_max[r][0], group_max[r][1]);
#pragma unroll
      for (int mask = 1; mask <= 2; mask <<= 1) {
        const float other_hi = __shfl_xor_sync(0xffffffffu, hi, mask);
        const float other_lo = __shfl_xor_sync(0xffffffffu, lo, mask);
        lo = fmaxf(fminf(hi, other_hi), fmaxf(lo, other_lo));
        hi = fmaxf(hi, other_hi);
      }
      top[0] = hi;
      top[1] = lo;
    }
  }

  // The row's K largest group maxima in this chunk, at part_top[(chunk * n + row) * K + i] (all
  // lanes merge; lane t = 0 of the quad writes).
  __device__ __forceinline__ void finish(int64_t n, int lane, float* __restrict__ part_top, int64_t chunk) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float top[K];
      quad_top(r, top);
      if ((lane & 3) == 0 && rows[r] < n)
#pragma unroll
        for (int g = 0; g < K; ++g) part_top[(chunk * n + rows[r]) * K + g] = top[g];
    }
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

// Pass 2 of top-k: lists each column whose computed score reaches the row's threshold
// (L_i - 2 delta_i), with that score (append_candidate); a row that finds more than `capacity`
// has overflowed, and the rescoring kernel then scans all of its columns instead
// (mips_engine.cu). Dropped columns (bias -inf) are never listed. Top-2's relisting pass lists
// the same way, against its final bound, the rows whose one-pass list overflowed (`only_over`:
// the one pass's counts; other rows list nothing).
template <class Traits>
struct CandidateEpilogue {
  int32_t* __restrict__ count;
  int64_t* __restrict__ candidates;
  float* __restrict__ candidate_scores;
  int64_t capacity;
  const float* __restrict__ bias;
  int64_t rows[2];
  float threshold[2];

  __device__ __forceinline__ CandidateEpilogue(const RescoreInputs& in, int64_t warp_row0, int64_t n, int lane,
                                               int32_t* row_count, int64_t* row_candidates, float* row_scores,
                                               int64_t cap, const int32_t* only_over = nullptr)
      : count(row_count), candidates(row_candidates), candidate_scores(row_scores), capacity(cap), bias(in.bias) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      rows[r] = warp_row0 + (lane >> 2) + 8 * r;
      const bool lists = only_over == nullptr || (rows[r] < n && only_over[rows[r]] > capacity);
      threshold[r] = lists ? candidate_threshold(in, rows[r], n, score_error_bound(in, rows[r], n))
                           : ::cuda::std::numeric_limits<float>::infinity();
    }
  }

  __device__ __forceinline__ void tile(const float (&acc)[Traits::kColFrags][4], int64_t col0, int64_t col_end,
                                       int lane) {
    for_each_score<Traits>(acc, bias, col0, col_end, lane, [&](int r, int, int, int64_t c, float computed, float b) {
      if (!(computed >= threshold[r]) || b == neg_inf_f()) return;
      append_candidate(count, candidates, candidate_scores, capacity, rows[r], c, computed);
    });
  }
};

}  // namespace ot_flow::cuda::engine
