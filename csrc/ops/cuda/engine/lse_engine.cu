// ot_flow::lse on the tensor-core engine: the streaming loop with the log-sum-exp epilogue,
// and the merge of column chunks when the rows alone do not fill the GPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "../online_lse.cuh"
#include "engine.h"
#include "launch.cuh"
#include "lse_epilogue.cuh"
#include "stream_loop.cuh"

namespace ot_flow::cuda::engine {
namespace {

// One chunk of columns per blockIdx.y: writes out[row] when there is one chunk, else the
// chunk's partial (max, sum) pair.
template <class Traits, int Width>
__global__ void __launch_bounds__(Traits::kThreads)
    lse_engine_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ h,
                      int64_t n, int64_t m, int64_t d, float scale, int64_t cols_per_chunk,
                      float* __restrict__ out, float* __restrict__ part_max, float* __restrict__ part_sum) {
  __shared__ __align__(16) StagingBuffers<Traits> smem;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * Traits::kBlockRows;
  const int64_t col_begin = static_cast<int64_t>(blockIdx.y) * cols_per_chunk;
  const int64_t col_end = min(m, col_begin + cols_per_chunk);
  LseEpilogue<Traits> epi(scale, h);
  stream_column_tiles<Traits, Width>(x, y, n, d, row0, col_begin, col_end, smem, epi);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  epi.finish(row0 + warp * Traits::kWarpRows, n, lane, out, part_max, part_sum, blockIdx.y);
}

}  // namespace

at::Tensor lse_tensor_cores(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double scale,
                            DotMode mode) {
  TORCH_CHECK(engine_handles(x), "ot_flow.lse: the tensor-core engine takes float32 inputs, got ",
              x.scalar_type());
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  at::Tensor out = at::empty({n}, x.options());
  if (n == 0) return out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  with_traits(mode, d, rows_aligned16(x, y), [&](auto traits, auto width) {
    using Traits = decltype(traits);
    constexpr int kWidth = decltype(width)::value;
    const ChunkPlan plan = plan_launch<Traits>(n, m);
    TORCH_CHECK(plan.row_blocks <= std::numeric_limits<int32_t>::max(), "ot_flow.lse: too many rows");
    const dim3 grid(static_cast<unsigned>(plan.row_blocks), static_cast<unsigned>(plan.chunks));
    const float s = static_cast<float>(scale);
    if (plan.chunks == 1) {
      lse_engine_kernel<Traits, kWidth><<<grid, Traits::kThreads, 0, stream>>>(
          x.const_data_ptr<float>(), y.const_data_ptr<float>(), h.const_data_ptr<float>(), n, m, d, s,
          plan.cols_per_chunk, out.data_ptr<float>(), nullptr, nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    at::Tensor partials = at::empty({2, plan.chunks, n}, x.options());
    float* part_max = partials[0].data_ptr<float>();
    float* part_sum = partials[1].data_ptr<float>();
    lse_engine_kernel<Traits, kWidth><<<grid, Traits::kThreads, 0, stream>>>(
        x.const_data_ptr<float>(), y.const_data_ptr<float>(), h.const_data_ptr<float>(), n, m, d, s,
        plan.cols_per_chunk, nullptr, part_max, part_sum);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    constexpr int kMergeThreads = 256;
    const unsigned merge_blocks = static_cast<unsigned>((n + kMergeThreads - 1) / kMergeThreads);
    lse_merge_chunks_kernel<float><<<merge_blocks, kMergeThreads, 0, stream>>>(part_max, part_sum, n, plan.chunks,
                                                                              out.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace ot_flow::cuda::engine
