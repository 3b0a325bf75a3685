// CUDA kernel of ot_flow::barycentric, in two passes. Pass 1 is the lse kernel. Pass 2
// knows each row's normaliser, so no online rescaling is needed: a block owns kBlockRows
// rows and kValueCols columns of `values`, and for every column tile of its chunk it forms
// the weights exp(scale * <x_i, y_j> + h_j - lse_i) (tile_dot.cuh), stages them and the
// matching slice of values in shared memory, and accumulates weights @ values in registers.
// Column chunks (when rows alone give too few blocks) write partial sums that are added up.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../barycentric.h"
#include "../lse.h"
#include "engine/engine.h"
#include "kernel_launch.cuh"
#include "tile_dot.cuh"

namespace ot_flow {
namespace {

using namespace ot_flow::cuda;

constexpr int kValueCols = kBlockCols;  // each thread accumulates kThreadRows x kThreadCols outputs

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) barycentric_weighted_sum_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, const scalar_t* __restrict__ h,
    const scalar_t* __restrict__ lse, const scalar_t* __restrict__ values, int64_t n, int64_t m,
    int64_t d, int64_t k, scalar_t scale, int64_t cols_per_chunk, scalar_t* __restrict__ out) {
  using acc_t = scalar_t;
  __shared__ TileSmem<scalar_t> smem;
  extern __shared__ unsigned char dynamic_smem[];
  // weights[r][c] and vals[c][v], padded by one to avoid bank conflicts.
  auto* weights = reinterpret_cast<scalar_t(*)[kBlockCols + 1]>(dynamic_smem);
  auto* vals = reinterpret_cast<scalar_t(*)[kValueCols + 1]>(dynamic_smem + sizeof(scalar_t) * kBlockRows * (kBlockCols + 1));

  const auto [tx, ty, row0, col_begin, col_end] = block_span(m, cols_per_chunk, blockIdx.z);
  const int64_t v0 = static_cast<int64_t>(blockIdx.y) * kValueCols;

  acc_t row_lse[kThreadRows];
#pragma unroll
  for (int i = 0; i < kThreadRows; ++i) {
    const int64_t row = row0 + ty * kThreadRows + i;
    row_lse[i] = row < n ? static_cast<acc_t>(lse[row]) : neg_inf<acc_t>();
  }
  acc_t acc[kThreadRows][kThreadCols] = {};

  for (int64_t col0 = col_begin; col0 < col_end; col0 += kBlockCols) {
    acc_t dot[kThreadRows][kThreadCols];
    tile_dot(x, y, n, col_end, d, row0, col0, smem, dot);
#pragma unroll
    for (int j = 0; j < kThreadCols; ++j) {
      const int64_t gc = col0 + tx * kThreadCols + j;
      const acc_t bias = gc < col_end ? static_cast<acc_t>(h[gc]) : neg_inf<acc_t>();
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i) {
        // Rows without mass (lse = -inf) and dropped columns get weight 0, never NaN.
        const bool live = bias != neg_inf<acc_t>() && row_lse[i] != neg_inf<acc_t>();
        weights[ty * kThreadRows + i][tx * kThreadCols + j] =
            live ? exp(scale * dot[i][j] + bias - row_lse[i]) : acc_t(0);
      }
    }
    for (int e = threadIdx.x; e < kBlockCols * kValueCols; e += kThreads) {
      const int c = e / kValueCols, v = e % kValueCols;
      const int64_t gc = col0 + c, gv = v0 + v;
      vals[c][v] = (gc < col_end && gv < k) ? values[gc * k + gv] : scalar_t(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kBlockCols; ++c) {
      acc_t w[kThreadRows], b[kThreadCols];
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i) w[i] = weights[ty * kThreadRows + i][c];
#pragma unroll
      for (int j = 0; j < kThreadCols; ++j) b[j] = vals[c][tx * kThreadCols + j];
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i)
#pragma unroll
        for (int j = 0; j < kThreadCols; ++j) acc[i][j] += w[i] * b[j];
    }
    __syncthreads();
  }

  scalar_t* chunk_out = out + static_cast<int64_t>(blockIdx.z) * n * k;
#pragma unroll
  for (int i = 0; i < kThreadRows; ++i) {
    const int64_t row = row0 + ty * kThreadRows + i;
    if (row >= n) continue;
#pragma unroll
    for (int j = 0; j < kThreadCols; ++j) {
      const int64_t gv = v0 + tx * kThreadCols + j;
      if (gv < k) chunk_out[row * k + gv] = acc[i][j];
    }
  }
}

std::tuple<at::Tensor, at::Tensor> barycentric_engine_kernel(const at::Tensor& x, const at::Tensor& y,
                                                             const at::Tensor& h, double scale,
                                                             const at::Tensor& values, Precision precision) {
  return cuda::engine::barycentric_tensor_cores(x, y, h, scale, values, cuda::engine::dot_mode(precision));
}

std::tuple<at::Tensor, at::Tensor> barycentric_engine_batched_kernel(const at::Tensor& x, const at::Tensor& y,
                                                                     const at::Tensor& h,
                                                                     const std::vector<double>& scales,
                                                                     const at::Tensor& values, Precision precision) {
  return cuda::engine::barycentric_tensor_cores_batched(x, y, h, scales, values, cuda::engine::dot_mode(precision));
}

// The tensor-core engine's single pass when it is switched on (engine.h) and the inputs are not
// float64: batched inputs are one launch. Otherwise the two FMA passes below, and batched inputs
// a C++ loop of their 2-D launches on the current stream (run_barycentric).
std::tuple<at::Tensor, at::Tensor> barycentric_cuda(const at::Tensor& x, const at::Tensor& y,
                                                    const std::optional<at::Tensor>& h, double scale,
                                                    const std::optional<at::Tensor>& values,
                                                    std::optional<c10::ArrayRef<double>> scales,
                                                    c10::string_view precision) {
  if (cuda::engine::engine_takes(x.scalar_type())) {
    return run_barycentric(x, y, h, scale, values, scales, precision, &barycentric_engine_kernel,
                           &barycentric_engine_batched_kernel);
  }
  return run_barycentric(x, y, h, scale, values, scales, precision, &barycentric_cuda_kernel);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> barycentric_cuda_kernel(const at::Tensor& x, const at::Tensor& y,
                                                           const at::Tensor& h, double scale,
                                                           const at::Tensor& values, Precision precision) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1), k = values.size(1);
  at::Tensor lse = lse_cuda_kernel(x, y, h, scale, precision);
  const int64_t value_blocks = (k + kValueCols - 1) / kValueCols;
  const auto* props = at::cuda::getCurrentDeviceProperties();
  // The value columns already multiply the blocks; split columns only for what remains.
  const ChunkPlan plan = plan_chunks(n * value_blocks, m, props->multiProcessorCount);
  const int64_t row_blocks = (n + kBlockRows - 1) / kBlockRows;
  TORCH_CHECK(row_blocks <= std::numeric_limits<int32_t>::max() && value_blocks <= 65535,
              "ot_flow.barycentric: problem too large for one launch");
  at::Tensor partial = plan.chunks == 1 ? at::empty({n, k}, x.options())
                                        : at::empty({plan.chunks, n, k}, x.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(value_blocks),
                  static_cast<unsigned>(plan.chunks));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_flow_barycentric_cuda", [&] {
    const size_t smem_bytes = sizeof(scalar_t) * (kBlockRows * (kBlockCols + 1) + kBlockCols * (kValueCols + 1));
    auto kernel = barycentric_weighted_sum_kernel<scalar_t>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem_bytes)));
    launch_kernel(kernel, grid, kThreads, smem_bytes, stream, x.const_data_ptr<scalar_t>(),
                  y.const_data_ptr<scalar_t>(), h.const_data_ptr<scalar_t>(), lse.const_data_ptr<scalar_t>(),
                  values.const_data_ptr<scalar_t>(), n, m, d, k, static_cast<scalar_t>(scale), plan.cols_per_chunk,
                  partial.data_ptr<scalar_t>());
  });
  at::Tensor out = plan.chunks == 1 ? partial : partial.sum(0);
  return {out, lse};
}

TORCH_LIBRARY_IMPL(ot_flow, CUDA, m) { m.impl("barycentric", &barycentric_cuda); }

}  // namespace ot_flow
