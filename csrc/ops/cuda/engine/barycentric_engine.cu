// ot_flow::barycentric on the tensor-core engine, in one pass: the streaming loop with the
// softmax-weighted-sum epilogue (barycentric_epilogue.cuh); the row log-sum-exp comes out of
// the same pass. Grid: row blocks x column chunks x value blocks of ValueCols columns.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "barycentric_epilogue.cuh"
#include "engine.h"
#include "launch.cuh"
#include "stream_loop.cuh"

namespace ot_flow::cuda::engine {
namespace {

template <class Traits, int Width, int ValueCols>
__global__ void __launch_bounds__(Traits::kThreads, 2) barycentric_engine_kernel(
    const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ h,
    const float* __restrict__ values, int64_t n, int64_t m, int64_t d, int64_t k, float scale,
    int64_t cols_per_chunk, float* __restrict__ mean, float* __restrict__ lse, float* __restrict__ part_weighted,
    float* __restrict__ part_max, float* __restrict__ part_sum) {
  __shared__ __align__(16) StagingBuffers<Traits> smem;
  __shared__ __align__(16) ValueTile<Traits, ValueCols> value_tile;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * Traits::kBlockRows;
  const int64_t col_begin = static_cast<int64_t>(blockIdx.y) * cols_per_chunk;
  const int64_t col_end = min(m, col_begin + cols_per_chunk);
  const int64_t v0 = static_cast<int64_t>(blockIdx.z) * ValueCols;
  BarycentricEpilogue<Traits, ValueCols> epi(scale, h, values, k, v0, value_tile);
  stream_column_tiles<Traits, Width>(x, y, n, d, row0, col_begin, col_end, smem, epi);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  epi.finish(row0 + warp * Traits::kWarpRows, n, lane, mean, lse, part_weighted, part_max, part_sum, blockIdx.y);
}

// mean[i][v] and lse[i] from the chunks' partial (weighted, max, sum): one thread per (i, v).
__global__ void barycentric_merge_chunks_kernel(const float* __restrict__ part_weighted,
                                                const float* __restrict__ part_max,
                                                const float* __restrict__ part_sum, int64_t n, int64_t k,
                                                int64_t chunks, float* __restrict__ mean, float* __restrict__ lse) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * k) return;
  const int64_t row = e / k, v = e % k;
  float max = neg_inf_f();
  for (int64_t c = 0; c < chunks; ++c) max = fmaxf(max, part_max[c * n + row]);
  float sum = 0.0f, weighted = 0.0f;
  if (max != neg_inf_f()) {
    for (int64_t c = 0; c < chunks; ++c) {
      const float chunk_max = part_max[c * n + row];
      if (chunk_max == neg_inf_f()) continue;
      const float factor = expf(chunk_max - max);
      sum += part_sum[c * n + row] * factor;
      weighted += part_weighted[(c * n + row) * k + v] * factor;
    }
  }
  mean[e] = sum > 0.0f ? weighted / sum : 0.0f;
  if (v == 0) lse[row] = max == neg_inf_f() ? neg_inf_f() : max + logf(sum);
}

// Calls fn(std::integral_constant<int, ValueCols>) with the value block width for k columns.
template <class Fn>
void with_value_cols(int64_t k, Fn&& fn) {
  if (k <= 16) return fn(std::integral_constant<int, 16>{});
  fn(std::integral_constant<int, 64>{});
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> barycentric_tensor_cores(const at::Tensor& x, const at::Tensor& y,
                                                            const at::Tensor& h, double scale,
                                                            const at::Tensor& values, DotMode mode) {
  TORCH_CHECK(engine_handles(x), "ot_flow.barycentric: the tensor-core engine takes float32 inputs, got ",
              x.scalar_type());
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1), k = values.size(1);
  at::Tensor mean = at::empty({n, k}, x.options());
  at::Tensor lse = at::empty({n}, x.options());
  if (n == 0) return {mean, lse};
  if (k == 0) {
    // No value columns: the blocks would not exist; the lse alone is what is asked for.
    return {mean, lse_tensor_cores(x, y, h, scale, mode)};
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  with_traits(mode, d, rows_aligned16(x, y), [&](auto traits, auto width) {
    with_value_cols(k, [&](auto value_cols) {
      using Traits = decltype(traits);
      constexpr int kWidth = decltype(width)::value;
      constexpr int kValueCols = decltype(value_cols)::value;
      const int64_t value_blocks = (k + kValueCols - 1) / kValueCols;
      // The value blocks already multiply the blocks; split columns only for what remains.
      const ChunkPlan plan = plan_launch<Traits>(n * value_blocks, m);
      const int64_t row_blocks = (n + Traits::kBlockRows - 1) / Traits::kBlockRows;
      TORCH_CHECK(row_blocks <= std::numeric_limits<int32_t>::max() && value_blocks <= 65535,
                  "ot_flow.barycentric: problem too large for one launch");
      const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(plan.chunks),
                      static_cast<unsigned>(value_blocks));
      const float s = static_cast<float>(scale);
      auto kernel = barycentric_engine_kernel<Traits, kWidth, kValueCols>;
      if (plan.chunks == 1) {
        kernel<<<grid, Traits::kThreads, 0, stream>>>(
            x.const_data_ptr<float>(), y.const_data_ptr<float>(), h.const_data_ptr<float>(),
            values.const_data_ptr<float>(), n, m, d, k, s, plan.cols_per_chunk, mean.data_ptr<float>(),
            lse.data_ptr<float>(), nullptr, nullptr, nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      at::Tensor part_weighted = at::empty({plan.chunks, n, k}, x.options());
      at::Tensor part_stats = at::empty({2, plan.chunks, n}, x.options());
      float* part_max = part_stats[0].data_ptr<float>();
      float* part_sum = part_stats[1].data_ptr<float>();
      kernel<<<grid, Traits::kThreads, 0, stream>>>(
          x.const_data_ptr<float>(), y.const_data_ptr<float>(), h.const_data_ptr<float>(),
          values.const_data_ptr<float>(), n, m, d, k, s, plan.cols_per_chunk, nullptr, nullptr,
          part_weighted.data_ptr<float>(), part_max, part_sum);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      constexpr int kMergeThreads = 256;
      const unsigned merge_blocks = static_cast<unsigned>((n * k + kMergeThreads - 1) / kMergeThreads);
      barycentric_merge_chunks_kernel<<<merge_blocks, kMergeThreads, 0, stream>>>(
          part_weighted.const_data_ptr<float>(), part_max, part_sum, n, k, plan.chunks, mean.data_ptr<float>(),
          lse.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {mean, lse};
}

}  // namespace ot_flow::cuda::engine
