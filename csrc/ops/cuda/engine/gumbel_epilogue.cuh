// The engine's Gumbel-max epilogue (gumbel_argmax): per row, the running best of
// s <x_i, y_j> + h_j + G_ij and its column, where G_ij is the counter-based noise of
// gumbel_noise.h (the same draw on any device or tiling). As in the FMA kernel, noise is drawn
// only where a column can still win: a logit below max(best, tile_max + kGumbelMin) - kGumbelMax
// cannot beat the row's best, since every noise lies in [kGumbelMin, kGumbelMax].
#pragma once

#include <cstdint>

#include "../../gumbel_noise.h"
#include "../gumbel_merge.cuh"
#include "kernel_traits.cuh"
#include "lse_epilogue.cuh"

namespace ot_flow::cuda::engine {

template <class Traits>
struct GumbelEpilogue {
  float scale;
  const float* __restrict__ h;
  NoiseKey stream;
  int64_t row_offset, col_offset;
  int64_t rows[2];         // global rows g and g + 8 of this lane
  bool live[2];            // rows[r] < n (padding rows of the last block draw nothing)
  double best[2];
  int64_t best_j[2];

  // noise: the key of the problem's (seed, offset); row_offset, col_offset: the global index of
  // the problem's first row and column (gumbel_argmax.h's GumbelKey).
  __device__ __forceinline__ GumbelEpilogue(float s, const float* bias, NoiseKey noise, int64_t row_offset_,
                                            int64_t col_offset_, int64_t warp_row0, int64_t n, int lane)
      : scale(s), h(bias), stream(noise), row_offset(row_offset_), col_offset(col_offset_) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      rows[r] = warp_row0 + (lane >> 2) + 8 * r;
      live[r] = rows[r] < n;
      best[r] = -::cuda::std::numeric_limits<double>::infinity();
      best_j[r] = -1;
    }
  }

  __device__ __forceinline__ void tile(const float (&acc)[Traits::kColFrags][4], int64_t col0, int64_t col_end,
                                       int lane) {
    float bias[Traits::kColFrags][2];
    load_tile_bias(h, col0, col_end, lane, bias);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (!live[r]) continue;
      float v[Traits::kColFrags][2];
      const float tile_max = row_scores(acc, r, scale, bias, v);
      if (tile_max == neg_inf_f()) continue;
      const double bound = fmax(best[r], static_cast<double>(tile_max) + kGumbelMin) - kGumbelMax;
      if (static_cast<double>(tile_max) < bound) continue;
      GumbelRow noise(stream, static_cast<uint64_t>(row_offset + rows[r]));
      // Columns rise with (j, e) (tile_column): a strict > keeps the lower column on a tie.
#pragma unroll
      for (int j = 0; j < Traits::kColFrags; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (static_cast<double>(v[j][e]) < bound) continue;
          const int64_t col = tile_column(col0, j, e, lane);
          const double perturbed = static_cast<double>(v[j][e]) + noise.at(static_cast<uint64_t>(col_offset + col));
          if (perturbed > best[r]) {
            best[r] = perturbed;
            best_j[r] = col;
          }
        }
    }
  }

  // Merges the row's 4 lanes and writes the chunk's pair at part_*[chunk * chunk_stride + row].
  __device__ __forceinline__ void finish(int64_t n, int lane, double* __restrict__ part_value,
                                         int64_t* __restrict__ part_index, int64_t chunk, int64_t chunk_stride) {
    store_best_over_quad(best, best_j, rows, n, lane, part_value, part_index, chunk * chunk_stride);
  }
};

}  // namespace ot_flow::cuda::engine
