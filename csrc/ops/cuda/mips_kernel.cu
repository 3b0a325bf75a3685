// CUDA kernels of ot_flow::mips, on the tiles of lse (tile_dot.cuh).
//   top-1: each thread keeps a running (max, argmax) for each of its rows over its columns; the
//     threads of a row group merge with shuffles.
//   top-k (k <= kMipsCudaMaxK): the block writes each biased tile to shared memory (reusing the
//     staging buffers of tile_dot) and one thread per row enters the tile's row into the row's
//     list, in per-thread local memory; rows that cannot improve are skipped by their k-th value.
// When the rows alone give too few blocks, column chunks write partial lists that a second
// kernel merges in chunk order; ties go to the lowest column throughout (top_k_list.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../mips.h"
#include "../top_k_list.h"
#include "engine/engine.h"
#include "kernel_launch.cuh"
#include "tile_dot.cuh"

namespace ot_flow {
namespace {

using namespace ot_flow::cuda;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) mips_top1_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, const scalar_t* __restrict__ bias,
    int64_t n, int64_t m, int64_t d, int64_t cols_per_chunk, scalar_t* __restrict__ part_values,
    int64_t* __restrict__ part_indices) {
  __shared__ TileSmem<scalar_t> smem;
  const auto [tx, ty, row0, col_begin, col_end] = block_span(m, cols_per_chunk, blockIdx.y);

  scalar_t best[kThreadRows];
  int64_t best_j[kThreadRows];
#pragma unroll
  for (int i = 0; i < kThreadRows; ++i) {
    best[i] = neg_inf<scalar_t>();
    best_j[i] = -1;
  }
  for (int64_t col0 = col_begin; col0 < col_end; col0 += kBlockCols) {
    scalar_t dot[kThreadRows][kThreadCols];
    tile_dot(x, y, n, col_end, d, row0, col0, smem, dot);
#pragma unroll
    for (int j = 0; j < kThreadCols; ++j) {
      const int64_t col = col0 + tx * kThreadCols + j;
      if (col >= col_end) continue;
      const scalar_t b = bias[col];
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i) {
        const scalar_t v = dot[i][j] + b;
        if (v > best[i]) {  // columns arrive in increasing order: strict keeps the lowest
          best[i] = v;
          best_j[i] = col;
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kThreadRows; ++i) {
#pragma unroll
    for (int offset = kThreadsX / 2; offset > 0; offset /= 2) {
      const scalar_t other = __shfl_xor_sync(0xffffffffu, best[i], offset);
      const int64_t other_j = __shfl_xor_sync(0xffffffffu, best_j[i], offset);
      if (other_j >= 0 && ranks_before(other, other_j, best[i], best_j[i])) {
        best[i] = other;
        best_j[i] = other_j;
      }
    }
    const int64_t row = row0 + ty * kThreadRows + i;
    if (tx == 0 && row < n) {
      part_values[blockIdx.y * n + row] = best[i];
      part_indices[blockIdx.y * n + row] = best_j[i];
    }
  }
}

template <typename scalar_t>
union TopKSmem {
  TileSmem<scalar_t> staging;
  scalar_t tile[kBlockRows][kBlockCols + 1];
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) mips_top_k_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, const scalar_t* __restrict__ bias,
    int64_t n, int64_t m, int64_t d, int64_t k, int64_t cols_per_chunk, scalar_t* __restrict__ part_values,
    int64_t* __restrict__ part_indices) {
  __shared__ TopKSmem<scalar_t> smem;
  const auto [tx, ty, row0, col_begin, col_end] = block_span(m, cols_per_chunk, blockIdx.y);
  const bool owner = threadIdx.x < kBlockRows && row0 + threadIdx.x < n;

  scalar_t best[kMipsCudaMaxK];
  int64_t best_j[kMipsCudaMaxK];
  for (int64_t e = 0; e < k; ++e) {
    best[e] = neg_inf<scalar_t>();
    best_j[e] = -1;
  }
  for (int64_t col0 = col_begin; col0 < col_end; col0 += kBlockCols) {
    scalar_t dot[kThreadRows][kThreadCols];
    tile_dot(x, y, n, col_end, d, row0, col0, smem.staging, dot);  // ends with __syncthreads
#pragma unroll
    for (int j = 0; j < kThreadCols; ++j) {
      const int c = tx * kThreadCols + j;
      const scalar_t b = col0 + c < col_end ? bias[col0 + c] : neg_inf<scalar_t>();
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i) smem.tile[ty * kThreadRows + i][c] = dot[i][j] + b;
    }
    __syncthreads();
    if (owner) {
      const int r = threadIdx.x;
      for (int c = 0; c < kBlockCols; ++c) {
        const scalar_t v = smem.tile[r][c];
        if (v > best[k - 1]) top_k_insert(best, best_j, k, v, col0 + c);
      }
    }
    __syncthreads();  // the staging buffers of the next tile overwrite the tile
  }
  if (owner) {
    const int64_t list = (blockIdx.y * n + row0 + threadIdx.x) * k;
    for (int64_t e = 0; e < k; ++e) {
      part_values[list + e] = best[e];
      part_indices[list + e] = best_j[e];
    }
  }
}

// Row i's list of chunk c at part_*[(c * n + i) * k]; merged in chunk order.
template <typename scalar_t>
__global__ void mips_merge_chunks_kernel(const scalar_t* __restrict__ part_values,
                                         const int64_t* __restrict__ part_indices, int64_t n, int64_t k,
                                         int64_t chunks, scalar_t* __restrict__ values,
                                         int64_t* __restrict__ indices) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n) return;
  scalar_t* best = values + row * k;
  int64_t* best_j = indices + row * k;
  for (int64_t e = 0; e < k; ++e) {
    best[e] = neg_inf<scalar_t>();
    best_j[e] = -1;
  }
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t list = (c * n + row) * k;
    for (int64_t e = 0; e < k; ++e) top_k_insert(best, best_j, k, part_values[list + e], part_indices[list + e]);
  }
}

std::tuple<at::Tensor, at::Tensor> mips_engine_kernel(const at::Tensor& x, const at::Tensor& y,
                                                      const at::Tensor& bias, int64_t k, Precision precision) {
  const auto mode = cuda::engine::dot_mode(precision);
  return cuda::engine::mips_tensor_cores(x, y, bias, k, mode);
}

// On the tensor-core engine (exact: rescored in float64) when it is switched on (engine.h) and
// the inputs are not float64; else on the FMA kernels below.
std::tuple<at::Tensor, at::Tensor> mips_cuda(const at::Tensor& x, const at::Tensor& y,
                                             const std::optional<at::Tensor>& bias, int64_t k,
                                             c10::string_view precision, bool validate) {
  const auto kernel = cuda::engine::engine_takes(x.scalar_type()) ? &mips_engine_kernel : &mips_cuda_kernel;
  return run_mips(x, y, bias, k, precision, validate, kernel, kMipsCudaMaxK);
}

}  // namespace

// `precision` is for the tensor-core engine of #16; this FMA kernel is exact in every mode.
std::tuple<at::Tensor, at::Tensor> mips_cuda_kernel(const at::Tensor& x, const at::Tensor& y,
                                                    const at::Tensor& bias, int64_t k, Precision /*precision*/) {
  // The top-k lists are fixed arrays of kMipsCudaMaxK entries in each thread's local memory;
  // run_mips refuses a larger k, and so does this entry point, which nothing else guards.
  TORCH_CHECK(k >= 1 && k <= kMipsCudaMaxK && k <= y.size(0), "ot_flow.mips: k = ", k, " outside [1, min(m, ",
              kMipsCudaMaxK, ")]");
  TORCH_CHECK(bias.defined() && on_kernel_device(bias) && bias.numel() == y.size(0),
              "ot_flow.mips: the CUDA kernel needs a bias of m entries on the device");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  at::Tensor values = at::empty({n, k}, x.options());
  at::Tensor indices = at::empty({n, k}, x.options().dtype(at::kLong));
  const ChunkPlan plan = plan_chunks(n, m, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  TORCH_CHECK(plan.row_blocks <= std::numeric_limits<int32_t>::max(), "ot_flow.mips: too many rows");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(plan.row_blocks), static_cast<unsigned>(plan.chunks));
  // With one chunk the tiles kernel writes the result directly.
  at::Tensor part_values = plan.chunks == 1 ? values : at::empty({plan.chunks, n, k}, values.options());
  at::Tensor part_indices = plan.chunks == 1 ? indices : at::empty({plan.chunks, n, k}, indices.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_flow_mips_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    if (k == 1) {
      launch_kernel(mips_top1_kernel<scalar_t>, grid, kThreads, 0, stream, xp, yp, bp, n, m, d, plan.cols_per_chunk,
                    part_values.data_ptr<scalar_t>(), part_indices.data_ptr<int64_t>());
    } else {
      launch_kernel(mips_top_k_kernel<scalar_t>, grid, kThreads, 0, stream, xp, yp, bp, n, m, d, k, plan.cols_per_chunk,
                    part_values.data_ptr<scalar_t>(), part_indices.data_ptr<int64_t>());
    }
    if (plan.chunks > 1) {
      constexpr int kMergeThreads = 128;
      const unsigned merge_blocks = static_cast<unsigned>((n + kMergeThreads - 1) / kMergeThreads);
      launch_kernel(mips_merge_chunks_kernel<scalar_t>, merge_blocks, kMergeThreads, 0, stream,
                    part_values.data_ptr<scalar_t>(), part_indices.data_ptr<int64_t>(), n, k, plan.chunks,
                    values.data_ptr<scalar_t>(), indices.data_ptr<int64_t>());
    }
  });
  return {values, indices};
}

TORCH_LIBRARY_IMPL(ot_flow, CUDA, m) { m.impl("mips", &mips_cuda); }

}  // namespace ot_flow
