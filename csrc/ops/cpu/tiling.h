// The tiling shared by the streaming CPU kernels: rows in blocks of kRowBlock, columns in
// tiles of kColTile grouped into chunks. A (problem, row block, column chunk) triple is one
// parallel task, the problem outermost (batched calls: B independent problems of equal sizes;
// a 2-D call is the batch of one); the cut of each problem depends only on (n, m), never on
// the thread count nor on B, so problem b of a batch runs the very tiles and GEMMs of the 2-D
// call on that problem, and every task's GEMMs run single-threaded (parallel_tasks): results
// are bitwise reproducible for any number of threads, and batched equals one-by-one.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "fast_exp.h"

namespace ot_flow::cpu {

constexpr int64_t kRowBlock = 128;
constexpr int64_t kColTile = 512;
// Tasks to aim for when rows alone give too few: enough for any realistic core count.
constexpr int64_t kMinTasks = 64;

struct TilePlan {
  int64_t n, m;
  int64_t row_blocks, col_tiles, col_chunks, tiles_per_chunk;
  int64_t batch = 1;  // problems; task t belongs to problem t / tasks_per_problem()

  static TilePlan make(int64_t n, int64_t m, int64_t batch = 1) {
    TilePlan p{n, m, (n + kRowBlock - 1) / kRowBlock, (m + kColTile - 1) / kColTile, 1, 1, batch};
    p.col_chunks = p.row_blocks >= kMinTasks
                       ? 1
                       : std::min(p.col_tiles, (kMinTasks + p.row_blocks - 1) / p.row_blocks);
    p.tiles_per_chunk = (p.col_tiles + p.col_chunks - 1) / p.col_chunks;
    p.col_chunks = (p.col_tiles + p.tiles_per_chunk - 1) / p.tiles_per_chunk;
    return p;
  }
  // The chunking of one problem (above) is that of the 2-D call: it ignores `batch`.
  int64_t tasks_per_problem() const { return row_blocks * col_chunks; }
  int64_t tasks() const { return batch * tasks_per_problem(); }
  int64_t problem(int64_t task) const { return task / tasks_per_problem(); }
  int64_t row_begin(int64_t task) const { return task % tasks_per_problem() / col_chunks * kRowBlock; }
  int64_t rows(int64_t task) const { return std::min(kRowBlock, n - row_begin(task)); }
  int64_t chunk(int64_t task) const { return task % col_chunks; }
  // Index of (problem, chunk) in the partial buffers: part[slot(task) * n + row].
  int64_t slot(int64_t task) const { return problem(task) * col_chunks + chunk(task); }
  int64_t tile_begin(int64_t task) const { return chunk(task) * tiles_per_chunk; }
  int64_t tile_end(int64_t task) const { return std::min(col_tiles, (chunk(task) + 1) * tiles_per_chunk); }
  int64_t col_begin(int64_t tile) const { return tile * kColTile; }
  int64_t cols(int64_t tile) const { return std::min(kColTile, m - col_begin(tile)); }
};

// at::parallel_for over the plan's tasks: body(task_begin, task_end), a range that may be
// empty. The BLAS (MKL, or OpenBLAS built with OpenMP) runs single-threaded when called inside
// a parallel region, and with one torch thread it has one thread itself; but at::parallel_for
// runs a range of one task inline on the calling thread, outside any region, where the GEMM
// would use every thread and block its sums differently for each count (float32 results of a
// 128 x 100 problem in d = 300 then moved by a few ulps between 1, 2, 3 and 4 threads). Asking
// for at least two tasks keeps every GEMM on the single-threaded path.
template <typename F>
void parallel_tasks(const TilePlan& plan, const F& body) {
  const int64_t tasks = plan.tasks();
  at::parallel_for(0, std::max<int64_t>(tasks, 2), 1, [&](int64_t begin, int64_t end) {
    if (begin < tasks) body(begin, std::min(end, tasks));
  });
}

// logits = h[c0:c0+cols] + scale * x_block @ y[c0:c0+cols].T, written into `buffer`
// (kRowBlock * kColTile elements) as a contiguous (rows, cols) matrix.
inline at::Tensor logits_tile(at::Tensor& buffer, const at::Tensor& x_block, const at::Tensor& y,
                              const at::Tensor& h, double scale, int64_t c0, int64_t cols) {
  at::Tensor logits = buffer.narrow(0, 0, x_block.size(0) * cols).view({x_block.size(0), cols});
  at::addmm_out(logits, h.narrow(0, c0, cols), x_block, y.narrow(0, c0, cols).t(), /*beta=*/1, /*alpha=*/scale);
  return logits;
}

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

// v <- exp(v - shift) in place; returns the sum.
template <typename scalar_t>
scalar_t row_exp_inplace(scalar_t* v, int64_t len, scalar_t shift) {
  scalar_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < len; ++j) {
    v[j] = fast_exp(v[j] - shift);
    total += v[j];
  }
  return total;
}

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Folds (other_max, other_sum) into a running (max, sum) of exp(. - max).
inline void merge_lse(double& max, double& sum, double other_max, double other_sum) {
  if (other_max == kNegInf) return;
  if (other_max > max) {
    sum = sum * std::exp(max - other_max) + other_sum;
    max = other_max;
  } else {
    sum += other_sum * std::exp(other_max - max);
  }
}

}  // namespace ot_flow::cpu
