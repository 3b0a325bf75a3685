// CUDA kernel of ot_flow::lse. A block owns kBlockRows rows and walks a chunk of columns in
// tiles of kBlockCols; each tile of dot products is built from slices of x and y staged in
// shared memory (register-blocked kThreadRows x kThreadCols per thread), then folded into
// a per-thread online (max, sum-of-exp) for each of the thread's rows. The 16 threads that
// share rows sit in one half-warp and merge their partials with shuffles at the end. When
// the rows alone give too few blocks to fill the GPU, the columns are split across
// blockIdx.y and a second kernel merges the partial (max, sum) pairs.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda/std/limits>

#include "../lse.h"

namespace ot_flow {
namespace {

constexpr int kBlockRows = 64;
constexpr int kBlockCols = 64;
constexpr int kSliceDim = 16;
constexpr int kThreadRows = 4;
constexpr int kThreadCols = 4;
constexpr int kThreadsX = kBlockCols / kThreadCols;  // 16: one half-warp per row group
constexpr int kThreadsY = kBlockRows / kThreadRows;  // 16
constexpr int kThreads = kThreadsX * kThreadsY;      // 256

template <typename acc_t>
__device__ __forceinline__ void merge_lse(acc_t& max, acc_t& sum, acc_t other_max, acc_t other_sum) {
  if (other_max == -cuda::std::numeric_limits<acc_t>::infinity()) return;
  if (other_max > max) {
    sum = sum * exp(max - other_max) + other_sum;
    max = other_max;
  } else {
    sum += other_sum * exp(other_max - max);
  }
}

// Writes max + log(sum) when the chunk is the only one (final), else the partial pair.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) lse_tiles_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, const scalar_t* __restrict__ h,
    int64_t n, int64_t m, int64_t d, scalar_t scale, int64_t cols_per_chunk,
    scalar_t* __restrict__ out, scalar_t* __restrict__ part_max, scalar_t* __restrict__ part_sum) {
  using acc_t = scalar_t;
  constexpr acc_t kNegInf = -cuda::std::numeric_limits<acc_t>::infinity();
  // Stored transposed ([k][row]) so the inner product loop reads consecutive rows.
  __shared__ scalar_t xs[kSliceDim][kBlockRows + 1];
  __shared__ scalar_t ys[kSliceDim][kBlockCols + 1];

  const int tx = threadIdx.x % kThreadsX;
  const int ty = threadIdx.x / kThreadsX;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBlockRows;
  const int64_t col_begin = static_cast<int64_t>(blockIdx.y) * cols_per_chunk;
  const int64_t col_end = min(m, col_begin + cols_per_chunk);

  acc_t run_max[kThreadRows], run_sum[kThreadRows];
#pragma unroll
  for (int i = 0; i < kThreadRows; ++i) {
    run_max[i] = kNegInf;
    run_sum[i] = 0;
  }

  for (int64_t col0 = col_begin; col0 < col_end; col0 += kBlockCols) {
    acc_t dot[kThreadRows][kThreadCols] = {};
    for (int64_t k0 = 0; k0 < d; k0 += kSliceDim) {
      for (int e = threadIdx.x; e < kBlockRows * kSliceDim; e += kThreads) {
        const int r = e / kSliceDim, k = e % kSliceDim;
        const int64_t gr = row0 + r, gk = k0 + k;
        xs[k][r] = (gr < n && gk < d) ? x[gr * d + gk] : scalar_t(0);
      }
      for (int e = threadIdx.x; e < kBlockCols * kSliceDim; e += kThreads) {
        const int c = e / kSliceDim, k = e % kSliceDim;
        const int64_t gc = col0 + c, gk = k0 + k;
        ys[k][c] = (gc < col_end && gk < d) ? y[gc * d + gk] : scalar_t(0);
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kSliceDim; ++k) {
        acc_t a[kThreadRows], b[kThreadCols];
#pragma unroll
        for (int i = 0; i < kThreadRows; ++i) a[i] = xs[k][ty * kThreadRows + i];
#pragma unroll
        for (int j = 0; j < kThreadCols; ++j) b[j] = ys[k][tx * kThreadCols + j];
#pragma unroll
        for (int i = 0; i < kThreadRows; ++i)
#pragma unroll
          for (int j = 0; j < kThreadCols; ++j) dot[i][j] += a[i] * b[j];
      }
      __syncthreads();
    }

    acc_t bias[kThreadCols];
#pragma unroll
    for (int j = 0; j < kThreadCols; ++j) {
      const int64_t gc = col0 + tx * kThreadCols + j;
      bias[j] = gc < col_end ? static_cast<acc_t>(h[gc]) : kNegInf;
    }
#pragma unroll
    for (int i = 0; i < kThreadRows; ++i) {
      acc_t v[kThreadCols];
      acc_t tile_max = kNegInf;
#pragma unroll
      for (int j = 0; j < kThreadCols; ++j) {
        v[j] = bias[j] == kNegInf ? kNegInf : scale * dot[i][j] + bias[j];
        tile_max = max(tile_max, v[j]);
      }
      if (tile_max == kNegInf) continue;
      acc_t tile_sum = 0;
#pragma unroll
      for (int j = 0; j < kThreadCols; ++j) tile_sum += exp(v[j] - tile_max);
      merge_lse(run_max[i], run_sum[i], tile_max, tile_sum);
    }
  }

  // The kThreadsX threads of a row group are consecutive lanes of one half-warp.
#pragma unroll
  for (int i = 0; i < kThreadRows; ++i) {
#pragma unroll
    for (int offset = kThreadsX / 2; offset > 0; offset /= 2) {
      const acc_t other_max = __shfl_xor_sync(0xffffffffu, run_max[i], offset);
      const acc_t other_sum = __shfl_xor_sync(0xffffffffu, run_sum[i], offset);
      merge_lse(run_max[i], run_sum[i], other_max, other_sum);
    }
    const int64_t row = row0 + ty * kThreadRows + i;
    if (tx == 0 && row < n) {
      if (out != nullptr) {
        out[row] = run_max[i] == kNegInf ? kNegInf : run_max[i] + log(run_sum[i]);
      } else {
        part_max[blockIdx.y * n + row] = run_max[i];
        part_sum[blockIdx.y * n + row] = run_sum[i];
      }
    }
  }
}

template <typename scalar_t>
__global__ void lse_merge_chunks_kernel(const scalar_t* __restrict__ part_max,
                                        const scalar_t* __restrict__ part_sum, int64_t n,
                                        int64_t chunks, scalar_t* __restrict__ out) {
  constexpr scalar_t kNegInf = -cuda::std::numeric_limits<scalar_t>::infinity();
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n) return;
  scalar_t max = kNegInf, sum = 0;
  for (int64_t c = 0; c < chunks; ++c) merge_lse(max, sum, part_max[c * n + row], part_sum[c * n + row]);
  out[row] = max == kNegInf ? kNegInf : max + log(sum);
}

at::Tensor lse_cuda(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h,
                    double scale) {
  auto [xc, yc, hc] = prepare_lse_args(x, y, h, scale);
  return lse_cuda_kernel(xc, yc, hc, scale);
}

}  // namespace

at::Tensor lse_cuda_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                           double scale) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  at::Tensor out = at::empty({n}, x.options());
  const int64_t row_blocks = (n + kBlockRows - 1) / kBlockRows;
  const int64_t col_tiles = (m + kBlockCols - 1) / kBlockCols;
  // Two waves of blocks per multiprocessor keep the GPU busy when n is small.
  const int64_t target_blocks = 2 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int64_t chunks = std::min(col_tiles, std::max<int64_t>(1, (target_blocks + row_blocks - 1) / row_blocks));
  chunks = std::min<int64_t>(chunks, 65535);
  const int64_t tiles_per_chunk = (col_tiles + chunks - 1) / chunks;
  chunks = (col_tiles + tiles_per_chunk - 1) / tiles_per_chunk;
  TORCH_CHECK(row_blocks <= std::numeric_limits<int32_t>::max(), "ot_flow.lse: too many rows");

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(chunks));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_flow_lse_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* hp = h.const_data_ptr<scalar_t>();
    const int64_t cols_per_chunk = tiles_per_chunk * kBlockCols;
    if (chunks == 1) {
      lse_tiles_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          xp, yp, hp, n, m, d, static_cast<scalar_t>(scale), cols_per_chunk,
          out.data_ptr<scalar_t>(), nullptr, nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    at::Tensor partials = at::empty({2, chunks, n}, x.options());
    scalar_t* part_max = partials[0].data_ptr<scalar_t>();
    scalar_t* part_sum = partials[1].data_ptr<scalar_t>();
    lse_tiles_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        xp, yp, hp, n, m, d, static_cast<scalar_t>(scale), cols_per_chunk, nullptr, part_max,
        part_sum);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    constexpr int kMergeThreads = 256;
    const unsigned merge_blocks = static_cast<unsigned>((n + kMergeThreads - 1) / kMergeThreads);
    lse_merge_chunks_kernel<scalar_t><<<merge_blocks, kMergeThreads, 0, stream>>>(
        part_max, part_sum, n, chunks, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

TORCH_LIBRARY_IMPL(ot_flow, CUDA, m) { m.impl("lse", &lse_cuda); }

}  // namespace ot_flow
