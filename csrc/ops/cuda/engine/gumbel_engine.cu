// ot_flow::gumbel_argmax on the tensor-core engine: the streaming loop with the Gumbel-max
// epilogue (gumbel_epilogue.cuh); each column chunk writes its (value, index) pair per row and
// gumbel_merge.cuh merges them in chunk order (or the single chunk writes the result). Batched
// problems are the grid's z dimension (a 2-D call is a batch of one).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../../gumbel_noise.h"
#include "../kernel_launch.cuh"
#include "engine.h"
#include "gumbel_epilogue.cuh"
#include "launch.cuh"
#include "problem_batch.cuh"
#include "stream_loop.cuh"
#include "streamed_operands.h"

namespace ot_flow::cuda::engine {
namespace {

// Each problem also draws from its own noise stream, the key of its (seed, offset), hashed once
// on the host: problem b's draws are those of the 2-D call with its seed (the noise is keyed on
// seed, offset, row and column only, as on the CPU).
struct GumbelBatch : ProblemBatch {
  NoiseKey noise[kMaxProblems];
};
static_assert(sizeof(GumbelBatch) <= 3584, "a kernel's parameters are limited to 4 KB");

// Two blocks a multiprocessor (the kernels take 134-214 registers a thread on sm_90).
constexpr int kGumbelBlocksPerMultiprocessor = 2;

// Problem blockIdx.z, rows of blockIdx.x, one chunk of columns per blockIdx.y: writes the
// chunk's pair of each row at part_*[chunk * chunk_stride + problem * n + row].
template <class Traits, int Width>
__global__ void __launch_bounds__(Traits::kThreads, kGumbelBlocksPerMultiprocessor)
    gumbel_engine_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ h,
                         int64_t n, int64_t m, int64_t d, const GumbelBatch batch, const int32_t* __restrict__ scale_exponent,
                         int64_t row_offset, int64_t col_offset, int64_t cols_per_chunk,
                         double* __restrict__ part_value, int64_t* __restrict__ part_index, int64_t chunk_stride) {
  __shared__ __align__(16) StagingBuffers<Traits> smem;
  const int64_t problem = blockIdx.z;
  const auto [row0, col_begin, col_end] = block_tiles<Traits>(m, cols_per_chunk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  GumbelEpilogue<Traits> epi(dot_scale(batch, problem, scale_exponent), h + problem * batch.h_stride, batch.noise[problem],
                             row_offset, col_offset, row0 + warp * Traits::kWarpRows, n, lane);
  stream_column_tiles<Traits, Width>(x + problem * batch.x_stride, y + problem * batch.y_stride, n, d, row0,
                                     col_begin, col_end, smem, epi);
  epi.finish(n, lane, part_value + problem * n, part_index + problem * n, blockIdx.y, chunk_stride);
}

// index, value (B, n) for x (B, n, d), y (B, m, d), h (B, m), each problem contiguous; problem b
// with scales[b] and keys[b].
void launch_gumbel_argmax(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& h,
                          const std::vector<double>& scales, const std::vector<GumbelKey>& keys, DotMode mode,
                          at::Tensor& index, at::Tensor& value) {
  const int64_t problems = x_in.size(0), n = x_in.size(1), m = y_in.size(1);
  if (problems == 0 || n == 0) return;
  // The row and column offsets are the call's (run_gumbel_argmax): only seeds differ per problem.
  const int64_t row_offset = keys[0].row_offset, col_offset = keys[0].col_offset;
  for (const GumbelKey& key : keys) {
    TORCH_INTERNAL_ASSERT(key.row_offset == row_offset && key.col_offset == col_offset,
                          "ot_flow.gumbel_argmax: the problems of a batch share their row and column offsets");
  }
  const StreamedOperands operands = streamed_operands(x_in, y_in, mode);
  const at::Tensor &x = operands.x, &y = operands.y;
  const int64_t d = operands.d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  with_traits(mode, d, operands.rows_aligned16, [&](auto traits, auto width) {
    using Traits = decltype(traits);
    constexpr int kWidth = decltype(width)::value;
    const BatchedLaunches launches =
        plan_batched_launches<Traits, kGumbelBlocksPerMultiprocessor>("ot_flow.gumbel_argmax", problems, n, m);
    const ChunkPlan& plan = launches.plan;
    // With one chunk the kernel writes the result directly.
    at::Tensor part_value = plan.chunks == 1 ? value : at::empty({plan.chunks, problems, n}, value.options());
    at::Tensor part_index = plan.chunks == 1 ? index : at::empty({plan.chunks, problems, n}, index.options());
    launches.for_each([&](int64_t first, int64_t count, dim3 grid) {
      GumbelBatch batch;
      batch.set(x.stride(0), y.stride(0), h.stride(0), scales, first, count);
      for (int64_t b = 0; b < count; ++b) {
        const GumbelKey& key = keys[first + b];
        batch.noise[b] = noise_key(static_cast<uint64_t>(key.seed), static_cast<uint64_t>(key.offset));
      }
      launch_kernel(gumbel_engine_kernel<Traits, kWidth>, grid, Traits::kThreads, 0, stream,
                    x.const_data_ptr<float>() + first * x.stride(0), y.const_data_ptr<float>() + first * y.stride(0),
                    h.const_data_ptr<float>() + first * h.stride(0), n, m, d, batch, operands.scale_exponent_from(first),
                    row_offset, col_offset, plan.cols_per_chunk, part_value.data_ptr<double>() + first * n,
                    part_index.data_ptr<int64_t>() + first * n, problems * n);
    });
    if (plan.chunks > 1) {
      // Rows of all problems are one (B n)-long axis of the partials: one merge for the batch.
      merge_gumbel_chunks(part_value.data_ptr<double>(), part_index.data_ptr<int64_t>(), problems * n, plan.chunks,
                          value.data_ptr<double>(), index.data_ptr<int64_t>(), stream);
    }
  });
}

void check_float32(const at::Tensor& x) {
  TORCH_CHECK(engine_handles(x), "ot_flow.gumbel_argmax: the tensor-core engine takes float32 inputs, got ",
              x.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gumbel_argmax_tensor_cores(const at::Tensor& x, const at::Tensor& y,
                                                              const at::Tensor& h, double scale, const GumbelKey& key,
                                                              DotMode mode) {
  check_float32(x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor index = at::empty({1, x.size(0)}, x.options().dtype(at::kLong));
  at::Tensor value = at::empty({1, x.size(0)}, x.options().dtype(at::kDouble));
  launch_gumbel_argmax(x.unsqueeze(0), y.unsqueeze(0), h.unsqueeze(0), {scale}, {key}, mode, index, value);
  return {index.squeeze(0), value.squeeze(0)};
}

std::tuple<at::Tensor, at::Tensor> gumbel_argmax_tensor_cores_batched(const at::Tensor& x, const at::Tensor& y,
                                                                      const at::Tensor& h,
                                                                      const std::vector<double>& scales,
                                                                      const std::vector<GumbelKey>& keys,
                                                                      DotMode mode) {
  check_float32(x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor index = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kLong));
  at::Tensor value = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kDouble));
  launch_gumbel_argmax(x, y, h, scales, keys, mode, index, value);
  return {index, value};
}

}  // namespace ot_flow::cuda::engine
