// ot_flow::gumbel_argmax on the tensor-core engine: the streaming loop with the Gumbel-max
// epilogue (gumbel_epilogue.cuh); each column chunk writes its (value, index) pair per row and
// gumbel_merge.cuh merges them in chunk order (or the single chunk writes the result).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "engine.h"
#include "gumbel_epilogue.cuh"
#include "launch.cuh"
#include "stream_loop.cuh"

namespace ot_flow::cuda::engine {
namespace {

template <class Traits, int Width>
__global__ void __launch_bounds__(Traits::kThreads, 2)
    gumbel_engine_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ h,
                         int64_t n, int64_t m, int64_t d, float scale, int64_t cols_per_chunk, const GumbelKey key,
                         double* __restrict__ part_value, int64_t* __restrict__ part_index) {
  __shared__ __align__(16) StagingBuffers<Traits> smem;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * Traits::kBlockRows;
  const int64_t col_begin = static_cast<int64_t>(blockIdx.y) * cols_per_chunk;
  const int64_t col_end = min(m, col_begin + cols_per_chunk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  GumbelEpilogue<Traits> epi(scale, h, key, row0 + warp * Traits::kWarpRows, n, lane);
  stream_column_tiles<Traits, Width>(x, y, n, d, row0, col_begin, col_end, smem, epi);
  epi.finish(n, lane, part_value, part_index, blockIdx.y);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gumbel_argmax_tensor_cores(const at::Tensor& x, const at::Tensor& y,
                                                              const at::Tensor& h, double scale, const GumbelKey& key,
                                                              DotMode mode) {
  TORCH_CHECK(engine_handles(x), "ot_flow.gumbel_argmax: the tensor-core engine takes float32 inputs, got ",
              x.scalar_type());
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  at::Tensor index = at::empty({n}, x.options().dtype(at::kLong));
  at::Tensor value = at::empty({n}, x.options().dtype(at::kDouble));
  if (n == 0) return {index, value};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  with_traits(mode, d, rows_aligned16(x, y), [&](auto traits, auto width) {
    using Traits = decltype(traits);
    constexpr int kWidth = decltype(width)::value;
    const ChunkPlan plan = plan_launch<Traits>(n, m);
    TORCH_CHECK(plan.row_blocks <= std::numeric_limits<int32_t>::max(), "ot_flow.gumbel_argmax: too many rows");
    const dim3 grid(static_cast<unsigned>(plan.row_blocks), static_cast<unsigned>(plan.chunks));
    // With one chunk the kernel writes the result directly.
    at::Tensor part_value = plan.chunks == 1 ? value : at::empty({plan.chunks, n}, value.options());
    at::Tensor part_index = plan.chunks == 1 ? index : at::empty({plan.chunks, n}, index.options());
    gumbel_engine_kernel<Traits, kWidth><<<grid, Traits::kThreads, 0, stream>>>(
        x.const_data_ptr<float>(), y.const_data_ptr<float>(), h.const_data_ptr<float>(), n, m, d,
        static_cast<float>(scale), plan.cols_per_chunk, key, part_value.data_ptr<double>(),
        part_index.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (plan.chunks > 1) {
      merge_gumbel_chunks(part_value.data_ptr<double>(), part_index.data_ptr<int64_t>(), n, plan.chunks,
                          value.data_ptr<double>(), index.data_ptr<int64_t>(), stream);
    }
  });
  return {index, value};
}

}  // namespace ot_flow::cuda::engine
