// ot_flow::mips with k = 1 on the tensor-core engine, exact: pass 1 finds each row's best
// computed score, pass 2 rescores in float64 every column that could be the exact best
// (mips_epilogue.cuh). Both passes are the streaming loop with their epilogue; column chunks
// merge as max (pass 1) and as (value, index) in chunk order (pass 2, gumbel_merge.cuh).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <limits>

#include "engine.h"
#include "launch.cuh"
#include "mips_epilogue.cuh"
#include "stream_loop.cuh"

namespace ot_flow::cuda::engine {
namespace {

template <class Traits, int Width>
__global__ void __launch_bounds__(Traits::kThreads)
    mips_row_max_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ bias,
                        int64_t n, int64_t m, int64_t d, int64_t cols_per_chunk, float* __restrict__ part_max) {
  __shared__ __align__(16) StagingBuffers<Traits> smem;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * Traits::kBlockRows;
  const int64_t col_begin = static_cast<int64_t>(blockIdx.y) * cols_per_chunk;
  const int64_t col_end = min(m, col_begin + cols_per_chunk);
  RowMaxEpilogue<Traits> epi(bias);
  stream_column_tiles<Traits, Width>(x, y, n, d, row0, col_begin, col_end, smem, epi);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  epi.finish(row0 + warp * Traits::kWarpRows, n, lane, part_max, blockIdx.y);
}

template <class Traits, int Width>
__global__ void __launch_bounds__(Traits::kThreads, 2)
    mips_rescore_kernel(const RescoreInputs inputs, int64_t n, int64_t m, int64_t cols_per_chunk,
                        double* __restrict__ part_value, int64_t* __restrict__ part_index) {
  __shared__ __align__(16) StagingBuffers<Traits> smem;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * Traits::kBlockRows;
  const int64_t col_begin = static_cast<int64_t>(blockIdx.y) * cols_per_chunk;
  const int64_t col_end = min(m, col_begin + cols_per_chunk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  RescoreEpilogue<Traits> epi(inputs, row0 + warp * Traits::kWarpRows, n, lane);
  stream_column_tiles<Traits, Width>(inputs.x, inputs.y, n, inputs.d, row0, col_begin, col_end, smem, epi);
  epi.finish(n, lane, part_value, part_index, blockIdx.y);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mips_top1_tensor_cores(const at::Tensor& x, const at::Tensor& y,
                                                          const at::Tensor& bias, DotMode mode) {
  TORCH_CHECK(engine_handles(x), "ot_flow.mips: the tensor-core engine takes float32 inputs, got ", x.scalar_type());
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  at::Tensor value = at::empty({n}, x.options().dtype(at::kDouble));
  at::Tensor index = at::empty({n}, x.options().dtype(at::kLong));
  if (n == 0) return {value.to(at::kFloat).unsqueeze(1), index.unsqueeze(1)};
  // The bounds' ingredients stay on the device: no host synchronisation.
  const at::Tensor x_norm = at::linalg_vector_norm(x, 2, {1}, false, std::nullopt).contiguous();
  const at::Tensor y_norm_max = at::linalg_vector_norm(y, 2, {1}, false, std::nullopt).max();
  const at::Tensor bias_max = at::linalg_vector_norm(bias.masked_fill(at::isneginf(bias), 0), INFINITY);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  with_traits(mode, d, rows_aligned16(x, y), [&](auto traits, auto width) {
    using Traits = decltype(traits);
    constexpr int kWidth = decltype(width)::value;
    const ChunkPlan plan = plan_launch<Traits>(n, m);
    TORCH_CHECK(plan.row_blocks <= std::numeric_limits<int32_t>::max(), "ot_flow.mips: too many rows");
    const dim3 grid(static_cast<unsigned>(plan.row_blocks), static_cast<unsigned>(plan.chunks));
    at::Tensor part_max = at::empty({plan.chunks, n}, x.options());
    mips_row_max_kernel<Traits, kWidth><<<grid, Traits::kThreads, 0, stream>>>(
        x.const_data_ptr<float>(), y.const_data_ptr<float>(), bias.const_data_ptr<float>(), n, m, d,
        plan.cols_per_chunk, part_max.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor row_best = plan.chunks == 1 ? part_max[0] : part_max.amax(0);
    const RescoreInputs inputs{x.const_data_ptr<float>(), y.const_data_ptr<float>(), bias.const_data_ptr<float>(),
                               row_best.const_data_ptr<float>(), x_norm.const_data_ptr<float>(),
                               y_norm_max.const_data_ptr<float>(), bias_max.const_data_ptr<float>(), d,
                               dot_error_bound(mode, d)};
    // With one chunk the rescoring kernel writes the result directly.
    at::Tensor part_value = plan.chunks == 1 ? value : at::empty({plan.chunks, n}, value.options());
    at::Tensor part_index = plan.chunks == 1 ? index : at::empty({plan.chunks, n}, index.options());
    mips_rescore_kernel<Traits, kWidth><<<grid, Traits::kThreads, 0, stream>>>(
        inputs, n, m, plan.cols_per_chunk, part_value.data_ptr<double>(), part_index.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (plan.chunks > 1) {
      merge_gumbel_chunks(part_value.data_ptr<double>(), part_index.data_ptr<int64_t>(), n, plan.chunks,
                          value.data_ptr<double>(), index.data_ptr<int64_t>(), stream);
    }
  });
  return {value.to(at::kFloat).unsqueeze(1), index.unsqueeze(1)};
}

}  // namespace ot_flow::cuda::engine
