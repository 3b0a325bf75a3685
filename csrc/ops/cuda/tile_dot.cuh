// The block-level building block of the streaming CUDA kernels: a kBlockRows x kBlockCols
// tile of dot products <x_i, y_j>, computed from slices of x and y staged in shared memory
// and register-blocked kThreadRows x kThreadCols per thread. Thread t owns rows
// ty * kThreadRows + [0, kThreadRows) and columns tx * kThreadCols + [0, kThreadCols) of the
// tile, with tx = t % kThreadsX: the kThreadsX threads of a row group are consecutive lanes
// of one half-warp, so row reductions are shuffles.
#pragma once

#include "chunk_plan.cuh"
#include "online_lse.cuh"

namespace ot_flow::cuda {

constexpr int kBlockRows = 64;
constexpr int kBlockCols = 64;
constexpr int kSliceDim = 16;
constexpr int kThreadRows = 4;
constexpr int kThreadCols = 4;
constexpr int kThreadsX = kBlockCols / kThreadCols;  // 16
constexpr int kThreadsY = kBlockRows / kThreadRows;  // 16
constexpr int kThreads = kThreadsX * kThreadsY;      // 256

template <typename scalar_t>
struct TileSmem {
  // Stored transposed ([k][row]) so the inner product loop reads consecutive rows.
  scalar_t xs[kSliceDim][kBlockRows + 1];
  scalar_t ys[kSliceDim][kBlockCols + 1];
};

// dot[i][j] = <x[row0 + ty*kThreadRows + i], y[col0 + tx*kThreadCols + j]>; rows >= n and
// columns >= col_end read as zero vectors. Every thread of the block must call it.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void tile_dot(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                         int64_t n, int64_t col_end, int64_t d, int64_t row0,
                                         int64_t col0, TileSmem<scalar_t>& smem,
                                         acc_t (&dot)[kThreadRows][kThreadCols]) {
  const int tx = threadIdx.x % kThreadsX;
  const int ty = threadIdx.x / kThreadsX;
#pragma unroll
  for (int i = 0; i < kThreadRows; ++i)
#pragma unroll
    for (int j = 0; j < kThreadCols; ++j) dot[i][j] = 0;
  for (int64_t k0 = 0; k0 < d; k0 += kSliceDim) {
    for (int e = threadIdx.x; e < kBlockRows * kSliceDim; e += kThreads) {
      const int r = e / kSliceDim, k = e % kSliceDim;
      const int64_t gr = row0 + r, gk = k0 + k;
      smem.xs[k][r] = (gr < n && gk < d) ? x[gr * d + gk] : scalar_t(0);
    }
    for (int e = threadIdx.x; e < kBlockCols * kSliceDim; e += kThreads) {
      const int c = e / kSliceDim, k = e % kSliceDim;
      const int64_t gc = col0 + c, gk = k0 + k;
      smem.ys[k][c] = (gc < col_end && gk < d) ? y[gc * d + gk] : scalar_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSliceDim; ++k) {
      acc_t a[kThreadRows], b[kThreadCols];
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i) a[i] = smem.xs[k][ty * kThreadRows + i];
#pragma unroll
      for (int j = 0; j < kThreadCols; ++j) b[j] = smem.ys[k][tx * kThreadCols + j];
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i)
#pragma unroll
        for (int j = 0; j < kThreadCols; ++j) dot[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
}

// bias[j] = h[col0 + tx * kThreadCols + j] for the thread's columns of the tile, -inf past
// col_end, so that columns which do not exist never count.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void tile_bias(const scalar_t* __restrict__ h, int64_t col0, int64_t col_end, int tx,
                                          acc_t (&bias)[kThreadCols]) {
#pragma unroll
  for (int j = 0; j < kThreadCols; ++j) {
    const int64_t gc = col0 + tx * kThreadCols + j;
    bias[j] = gc < col_end ? static_cast<acc_t>(h[gc]) : neg_inf<acc_t>();
  }
}

// Where a thread of a streaming kernel works: its column group tx and row group ty in the
// tile, its block's first row, and the columns [col_begin, col_end) of the block's chunk.
struct BlockSpan {
  int tx, ty;
  int64_t row0, col_begin, col_end;
};

__device__ __forceinline__ BlockSpan block_span(int64_t m, int64_t cols_per_chunk, unsigned chunk) {
  const int64_t col_begin = static_cast<int64_t>(chunk) * cols_per_chunk;
  return {static_cast<int>(threadIdx.x % kThreadsX), static_cast<int>(threadIdx.x / kThreadsX),
          static_cast<int64_t>(blockIdx.x) * kBlockRows, col_begin, min(m, col_begin + cols_per_chunk)};
}

inline ChunkPlan plan_chunks(int64_t n, int64_t m, int multiprocessors) {
  return plan_chunks(n, m, multiprocessors, kBlockRows, kBlockCols);
}

}  // namespace ot_flow::cuda
