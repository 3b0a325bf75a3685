// ot_flow::barycentric on the tensor-core engine, in one pass: the streaming loop with the
// softmax-weighted-sum epilogue (barycentric_epilogue.cuh); the row log-sum-exp comes out of
// the same pass. Grid: row blocks x column chunks x (problems x value blocks of ValueCols
// columns); a 2-D call is a batch of one.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../kernel_launch.cuh"
#include "barycentric_epilogue.cuh"
#include "engine.h"
#include "launch.cuh"
#include "problem_batch.cuh"
#include "stream_loop.cuh"
#include "streamed_operands.h"

namespace ot_flow::cuda::engine {
namespace {

// Problem b's values (m, k) also lie at values + b * values_stride.
struct BarycentricBatch : ProblemBatch {
  int64_t values_stride = 0;
};

// Two blocks a multiprocessor: the staging buffers and the value tile in shared memory, the
// weighted sums in registers.
constexpr int kBarycentricBlocksPerMultiprocessor = 2;

// blockIdx.z = problem * value_blocks + value block; rows of blockIdx.x, one chunk of columns per
// blockIdx.y. Writes mean and lse when there is one chunk, else the chunk's partials (finish).
template <class Traits, int Width, int ValueCols>
__global__ void __launch_bounds__(Traits::kThreads, kBarycentricBlocksPerMultiprocessor)
    barycentric_engine_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ h,
                              const float* __restrict__ values, int64_t n, int64_t m, int64_t d, int64_t k,
                              const BarycentricBatch batch, const int32_t* __restrict__ scale_exponent, unsigned value_blocks,
                              int64_t cols_per_chunk, float* __restrict__ mean, float* __restrict__ lse,
                              float* __restrict__ part_weighted, float* __restrict__ part_max,
                              float* __restrict__ part_sum, int64_t chunk_stride) {
  __shared__ __align__(16) StagingBuffers<Traits> smem;
  __shared__ __align__(16) ValueTile<Traits, ValueCols> value_tile;
  const int64_t problem = blockIdx.z / value_blocks;
  const int64_t v0 = static_cast<int64_t>(blockIdx.z % value_blocks) * ValueCols;
  const auto [row0, col_begin, col_end] = block_tiles<Traits>(m, cols_per_chunk);
  BarycentricEpilogue<Traits, ValueCols> epi(dot_scale(batch, problem, scale_exponent), h + problem * batch.h_stride,
                                             values + problem * batch.values_stride, k, v0, value_tile);
  stream_column_tiles<Traits, Width>(x + problem * batch.x_stride, y + problem * batch.y_stride, n, d, row0,
                                     col_begin, col_end, smem, epi);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t rows_before = problem * n;  // rows of the problems before this one
  const bool whole = mean != nullptr;
  epi.finish(row0 + warp * Traits::kWarpRows, n, lane, whole ? mean + rows_before * k : nullptr,
             whole ? lse + rows_before : nullptr, whole ? nullptr : part_weighted + rows_before * k,
             whole ? nullptr : part_max + rows_before, whole ? nullptr : part_sum + rows_before, blockIdx.y,
             chunk_stride);
}

// mean[i][v] and lse[i] from the chunks' partial (weighted, max, sum): one thread per (i, v); the
// rows of a batch's problems are one axis of n rows here.
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

// mean (B, n, k) and lse (B, n) for x (B, n, d), y (B, m, d), h (B, m), values (B, m, k), each
// problem contiguous, k >= 1; problem b with scales[b].
void launch_barycentric(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& h,
                        const std::vector<double>& scales, const at::Tensor& values, DotMode mode, at::Tensor& mean,
                        at::Tensor& lse) {
  const int64_t problems = x_in.size(0), n = x_in.size(1), m = y_in.size(1), k = values.size(2);
  if (problems == 0 || n == 0) return;
  const StreamedOperands operands = streamed_operands(x_in, y_in, mode);
  const at::Tensor &x = operands.x, &y = operands.y;
  const int64_t d = operands.d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  with_traits<16>(mode, d, operands.rows_aligned16, [&](auto traits, auto width) {
    with_value_cols(k, [&](auto value_cols) {
      using Traits = decltype(traits);
      constexpr int kWidth = decltype(width)::value;
      constexpr int kValueCols = decltype(value_cols)::value;
      const int64_t value_blocks = (k + kValueCols - 1) / kValueCols;
      // The problems and value blocks already multiply the blocks; columns are split only for
      // what remains.
      const BatchedLaunches launches =
          plan_batched_launches<Traits, kBarycentricBlocksPerMultiprocessor>("ot_flow.barycentric", problems, n, m,
                                                                               value_blocks);
      const ChunkPlan& plan = launches.plan;
      at::Tensor part_weighted, part_stats;
      if (plan.chunks > 1) {
        part_weighted = at::empty({plan.chunks, problems, n, k}, x.options());
        part_stats = at::empty({2, plan.chunks, problems, n}, x.options());
      }
      auto kernel = barycentric_engine_kernel<Traits, kWidth, kValueCols>;
      launches.for_each([&](int64_t first, int64_t count, dim3 grid) {
        BarycentricBatch batch;
        batch.set(x.stride(0), y.stride(0), h.stride(0), scales, first, count);
        batch.values_stride = values.stride(0);
        const float* xp = x.const_data_ptr<float>() + first * x.stride(0);
        const float* yp = y.const_data_ptr<float>() + first * y.stride(0);
        const float* hp = h.const_data_ptr<float>() + first * h.stride(0);
        const float* vp = values.const_data_ptr<float>() + first * values.stride(0);
        const int64_t rows_before = first * n;
        if (plan.chunks == 1) {
          launch_kernel(kernel, grid, Traits::kThreads, 0, stream, xp, yp, hp, vp, n, m, d, k, batch,
                        operands.scale_exponent_from(first), static_cast<unsigned>(value_blocks), plan.cols_per_chunk,
                        mean.data_ptr<float>() + rows_before * k, lse.data_ptr<float>() + rows_before, nullptr, nullptr,
                        nullptr, 0);
        } else {
          launch_kernel(kernel, grid, Traits::kThreads, 0, stream, xp, yp, hp, vp, n, m, d, k, batch,
                        operands.scale_exponent_from(first), static_cast<unsigned>(value_blocks), plan.cols_per_chunk, nullptr,
                        nullptr, part_weighted.data_ptr<float>() + rows_before * k,
                        part_stats[0].data_ptr<float>() + rows_before, part_stats[1].data_ptr<float>() + rows_before,
                        problems * n);
        }
      });
      if (plan.chunks == 1) return;
      // Rows of all problems are one (B n)-long axis of the partials: one merge for the batch.
      constexpr int kMergeThreads = 256;
      const int64_t rows = problems * n;
      const unsigned merge_blocks = static_cast<unsigned>((rows * k + kMergeThreads - 1) / kMergeThreads);
      launch_kernel(barycentric_merge_chunks_kernel, merge_blocks, kMergeThreads, 0, stream,
                    part_weighted.const_data_ptr<float>(), part_stats[0].const_data_ptr<float>(),
                    part_stats[1].const_data_ptr<float>(), rows, k, plan.chunks, mean.data_ptr<float>(),
                    lse.data_ptr<float>());
    });
  });
}

void check_float32(const at::Tensor& x) {
  TORCH_CHECK(engine_handles(x), "ot_flow.barycentric: the tensor-core engine takes float32 inputs, got ",
              x.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> barycentric_tensor_cores(const at::Tensor& x, const at::Tensor& y,
                                                            const at::Tensor& h, double scale,
                                                            const at::Tensor& values, DotMode mode) {
  auto [mean, lse] = barycentric_tensor_cores_batched(x.unsqueeze(0), y.unsqueeze(0), h.unsqueeze(0), {scale},
                                                      values.unsqueeze(0), mode);
  return {mean.squeeze(0), lse.squeeze(0)};
}

std::tuple<at::Tensor, at::Tensor> barycentric_tensor_cores_batched(const at::Tensor& x, const at::Tensor& y,
                                                                    const at::Tensor& h,
                                                                    const std::vector<double>& scales,
                                                                    const at::Tensor& values, DotMode mode) {
  check_float32(x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t k = values.size(2);
  at::Tensor mean = at::empty({x.size(0), x.size(1), k}, x.options());
  if (k == 0) {
    // No value columns: the blocks would not exist; the lse alone is what is asked for.
    return {mean, lse_tensor_cores_batched(x, y, h, scales, mode)};
  }
  at::Tensor lse = at::empty({x.size(0), x.size(1)}, x.options());
  launch_barycentric(x, y, h, scales, values, mode, mean, lse);
  return {mean, lse};
}

}  // namespace ot_flow::cuda::engine
