// ot_flow::lse on the tensor-core engine: the streaming loop with the log-sum-exp epilogue,
// the merge of column chunks when the rows alone do not fill the GPU, and batched problems as
// the grid's z dimension (a 2-D call is a batch of one).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../kernel_launch.cuh"
#include "../online_lse.cuh"
#include "engine.h"
#include "launch.cuh"
#include "lse_epilogue.cuh"
#include "problem_batch.cuh"
#include "stream_loop.cuh"
#include "streamed_operands.h"

namespace ot_flow::cuda::engine {
namespace {

// Problem blockIdx.z, rows of blockIdx.x, one chunk of columns per blockIdx.y: writes out[row]
// when there is one chunk, else the chunk's partial (max, sum) pair at [chunk][problem][row].
// Sixteen warps per multiprocessor (at most 128 registers a thread: four blocks of 4 warps, two
// of 8): with the thread count alone ptxas capped the 4-warp kernels at 96 registers on sm_90
// and spilled. Split float16's 32-word slices hold two k-steps' fragments beside the running and
// the slice sums and spilled at 128 (sm_90): three blocks of 4 warps (168 registers).
template <class Traits>
constexpr int lse_blocks_per_multiprocessor() {
  return Traits::kMode == DotMode::kSplitF16 && Traits::kSliceK == 32 ? 3 : 16 / Traits::kWarps;
}

template <class Traits, int Width>
__global__ void __launch_bounds__(Traits::kThreads, lse_blocks_per_multiprocessor<Traits>())
    lse_engine_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ h, int64_t n,
                      int64_t m, int64_t d, const ProblemBatch batch, const int32_t* __restrict__ scale_exponent,
                      int64_t cols_per_chunk, float* __restrict__ out, float* __restrict__ part_max,
                      float* __restrict__ part_sum, int64_t chunk_stride) {
  __shared__ __align__(16) StagingBuffers<Traits> smem;
  const int64_t problem = blockIdx.z;
  const auto [row0, col_begin, col_end] = block_tiles<Traits>(m, cols_per_chunk);
  LseEpilogue<Traits> epi(dot_scale(batch, problem, scale_exponent), h + problem * batch.h_stride);
  stream_column_tiles<Traits, Width>(x + problem * batch.x_stride, y + problem * batch.y_stride, n, d, row0,
                                     col_begin, col_end, smem, epi);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t offset = problem * n;
  epi.finish(row0 + warp * Traits::kWarpRows, n, lane, out == nullptr ? nullptr : out + offset,
             part_max == nullptr ? nullptr : part_max + offset, part_sum == nullptr ? nullptr : part_sum + offset,
             blockIdx.y, chunk_stride);
}

// out (B, n) for x (B, n, d), y (B, m, d), h (B, m), each problem contiguous (problems_contiguous).
void launch_lse(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& h, const std::vector<double>& scales,
                DotMode mode, at::Tensor& out) {
  const int64_t problems = x_in.size(0), n = x_in.size(1), m = y_in.size(1);
  if (problems == 0 || n == 0) return;
  const StreamedOperands operands = streamed_operands(x_in, y_in, mode);
  const at::Tensor &x = operands.x, &y = operands.y;
  const int64_t d = operands.d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto launch = [&](auto traits, auto width) {
    using Traits = decltype(traits);
    constexpr int kWidth = decltype(width)::value;
    const BatchedLaunches launches =
        plan_batched_launches<Traits, lse_blocks_per_multiprocessor<Traits>()>("ot_flow.lse", problems, n, m);
    const ChunkPlan& plan = launches.plan;
    at::Tensor partials;
    if (plan.chunks > 1) partials = at::empty({2, plan.chunks, problems, n}, x.options());
    launches.for_each([&](int64_t first, int64_t count, dim3 grid) {
      ProblemBatch batch;
      batch.set(x.stride(0), y.stride(0), h.stride(0), scales, first, count);
      const float* xp = x.const_data_ptr<float>() + first * x.stride(0);
      const float* yp = y.const_data_ptr<float>() + first * y.stride(0);
      const float* hp = h.const_data_ptr<float>() + first * h.stride(0);
      if (plan.chunks == 1) {
        launch_kernel(lse_engine_kernel<Traits, kWidth>, grid, Traits::kThreads, 0, stream, xp, yp, hp, n, m, d, batch,
                      operands.scale_exponent_from(first), plan.cols_per_chunk, out.data_ptr<float>() + first * n, nullptr,
                      nullptr, 0);
      } else {
        launch_kernel(lse_engine_kernel<Traits, kWidth>, grid, Traits::kThreads, 0, stream, xp, yp, hp, n, m, d, batch,
                      operands.scale_exponent_from(first), plan.cols_per_chunk, nullptr,
                      partials[0].data_ptr<float>() + first * n, partials[1].data_ptr<float>() + first * n,
                      problems * n);
      }
    });
    if (plan.chunks > 1) {
      // Rows of all problems are one (B n)-long axis of the partials: one merge for the batch.
      constexpr int kMergeThreads = 256;
      const int64_t rows = problems * n;
      const unsigned merge_blocks = static_cast<unsigned>((rows + kMergeThreads - 1) / kMergeThreads);
      launch_kernel(lse_merge_chunks_kernel<float>, merge_blocks, kMergeThreads, 0, stream,
                    partials[0].data_ptr<float>(), partials[1].data_ptr<float>(), rows, plan.chunks,
                    out.data_ptr<float>());
    }
  };
  if (tall_blocks_selected()) {
    with_traits<32, 8>(mode, d, operands.rows_aligned16, launch);
  } else {
    with_traits<32, 4>(mode, d, operands.rows_aligned16, launch);
  }
}

void check_float32(const at::Tensor& x) {
  TORCH_CHECK(engine_handles(x), "ot_flow.lse: the tensor-core engine takes float32 inputs, got ",
              x.scalar_type());
}

}  // namespace

at::Tensor lse_tensor_cores(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double scale,
                            DotMode mode) {
  check_float32(x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty({1, x.size(0)}, x.options());
  launch_lse(x.unsqueeze(0), y.unsqueeze(0), h.unsqueeze(0), {scale}, mode, out);
  return out.squeeze(0);
}

at::Tensor lse_tensor_cores_batched(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                                    const std::vector<double>& scales, DotMode mode) {
  check_float32(x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty({x.size(0), x.size(1)}, x.options());
  launch_lse(x, y, h, scales, mode, out);
  return out;
}

}  // namespace ot_flow::cuda::engine
