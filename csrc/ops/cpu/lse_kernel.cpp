// CPU kernel of ot_flow::lse. Work is cut into (row block, column chunk) tasks. A task
// computes one tile of biased dot products at a time with a GEMM (addmm folds the bias and
// the scale in), then folds the tile into an online (max, sum-of-exp) per row. Partial
// results of the column chunks are merged in a fixed order, so the output does not depend
// on the thread count; the cut depends only on (n, m).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../lse.h"
#include "fast_exp.h"

namespace ot_flow {
namespace {

constexpr int64_t kRowBlock = 128;
constexpr int64_t kColTile = 512;
// Tasks to aim for when rows alone give too few: enough for any realistic core count.
constexpr int64_t kMinTasks = 64;

template <typename scalar_t>
scalar_t row_max(const scalar_t* v, int64_t len) {
  scalar_t best = -std::numeric_limits<scalar_t>::infinity();
#pragma omp simd reduction(max : best)
  for (int64_t j = 0; j < len; ++j) best = v[j] > best ? v[j] : best;
  return best;
}

template <typename scalar_t>
scalar_t row_sum_exp(const scalar_t* v, int64_t len, scalar_t shift) {
  scalar_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < len; ++j) total += fast_exp(v[j] - shift);
  return total;
}

// Folds (tile_max, tile_sum) into a running (max, sum), both relative to their own max.
inline void merge_lse(double& max, double& sum, double tile_max, double tile_sum) {
  if (tile_max == -std::numeric_limits<double>::infinity()) return;
  if (tile_max > max) {
    sum = sum * std::exp(max - tile_max) + tile_sum;
    max = tile_max;
  } else {
    sum += tile_sum * std::exp(tile_max - max);
  }
}

template <typename scalar_t>
void lse_cpu_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double scale,
                  at::Tensor& out) {
  const int64_t n = x.size(0);
  const int64_t m = y.size(0);
  const int64_t row_blocks = (n + kRowBlock - 1) / kRowBlock;
  const int64_t col_tiles = (m + kColTile - 1) / kColTile;
  int64_t col_chunks = row_blocks >= kMinTasks
                           ? 1
                           : std::min(col_tiles, (kMinTasks + row_blocks - 1) / row_blocks);
  const int64_t tiles_per_chunk = (col_tiles + col_chunks - 1) / col_chunks;
  col_chunks = (col_tiles + tiles_per_chunk - 1) / tiles_per_chunk;

  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  std::vector<double> part_max(col_chunks * n, kNegInf);
  std::vector<double> part_sum(col_chunks * n, 0.0);

  at::parallel_for(0, row_blocks * col_chunks, 1, [&](int64_t task_begin, int64_t task_end) {
    at::Tensor tile_buffer = at::empty({kRowBlock * kColTile}, x.options());
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t rb = task / col_chunks;
      const int64_t chunk = task % col_chunks;
      const int64_t r0 = rb * kRowBlock;
      const int64_t rows = std::min(kRowBlock, n - r0);
      const at::Tensor x_block = x.narrow(0, r0, rows);
      double* run_max = part_max.data() + chunk * n + r0;
      double* run_sum = part_sum.data() + chunk * n + r0;
      const int64_t tile_end = std::min(col_tiles, (chunk + 1) * tiles_per_chunk);
      for (int64_t tile = chunk * tiles_per_chunk; tile < tile_end; ++tile) {
        const int64_t c0 = tile * kColTile;
        const int64_t cols = std::min(kColTile, m - c0);
        at::Tensor logits = tile_buffer.narrow(0, 0, rows * cols).view({rows, cols});
        at::addmm_out(logits, h.narrow(0, c0, cols), x_block, y.narrow(0, c0, cols).t(),
                      /*beta=*/1, /*alpha=*/scale);
        const scalar_t* v = logits.const_data_ptr<scalar_t>();
        for (int64_t i = 0; i < rows; ++i, v += cols) {
          const scalar_t tile_max = row_max(v, cols);
          if (tile_max == -std::numeric_limits<scalar_t>::infinity()) continue;
          merge_lse(run_max[i], run_sum[i], tile_max, row_sum_exp(v, cols, tile_max));
        }
      }
    }
  });

  scalar_t* o = out.data_ptr<scalar_t>();
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double max = kNegInf, sum = 0.0;
      for (int64_t c = 0; c < col_chunks; ++c) merge_lse(max, sum, part_max[c * n + i], part_sum[c * n + i]);
      o[i] = static_cast<scalar_t>(max == kNegInf ? kNegInf : max + std::log(sum));
    }
  });
}

}  // namespace

at::Tensor lse_cpu_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                          double scale) {
  at::Tensor out = at::empty({x.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_flow_lse_cpu",
                             [&] { lse_cpu_impl<scalar_t>(x, y, h, scale, out); });
  return out;
}

}  // namespace ot_flow
