// CUDA kernel of ot_flow::lse. A block owns kBlockRows rows and walks a chunk of columns
// tile by tile (tile_dot.cuh); each tile is folded into a per-thread online
// (max, sum-of-exp) for each of the thread's rows, and the threads of a row group merge
// their partials with shuffles at the end. When the rows alone give too few blocks to fill
// the GPU, the columns are split across blockIdx.y and a second kernel merges the partials.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../lse.h"
#include "engine/engine.h"
#include "kernel_launch.cuh"
#include "tile_dot.cuh"

namespace ot_flow {
namespace {

using namespace ot_flow::cuda;

// Writes max + log(sum) to `out` when it is given (one chunk), else the partial pair.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) lse_tiles_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, const scalar_t* __restrict__ h,
    int64_t n, int64_t m, int64_t d, scalar_t scale, int64_t cols_per_chunk,
    scalar_t* __restrict__ out, scalar_t* __restrict__ part_max, scalar_t* __restrict__ part_sum) {
  using acc_t = scalar_t;
  __shared__ TileSmem<scalar_t> smem;
  const auto [tx, ty, row0, col_begin, col_end] = block_span(m, cols_per_chunk, blockIdx.y);

  acc_t run_max[kThreadRows], run_sum[kThreadRows];
#pragma unroll
  for (int i = 0; i < kThreadRows; ++i) {
    run_max[i] = neg_inf<acc_t>();
    run_sum[i] = 0;
  }

  for (int64_t col0 = col_begin; col0 < col_end; col0 += kBlockCols) {
    acc_t dot[kThreadRows][kThreadCols];
    tile_dot(x, y, n, col_end, d, row0, col0, smem, dot);
    acc_t bias[kThreadCols];
    tile_bias(h, col0, col_end, tx, bias);
#pragma unroll
    for (int i = 0; i < kThreadRows; ++i) {
      acc_t v[kThreadCols];
      acc_t tile_max = neg_inf<acc_t>();
#pragma unroll
      for (int j = 0; j < kThreadCols; ++j) {
        v[j] = scale * dot[i][j] + bias[j];
        tile_max = max(tile_max, v[j]);
      }
      if (tile_max == neg_inf<acc_t>()) continue;
      acc_t tile_sum = 0;
#pragma unroll
      for (int j = 0; j < kThreadCols; ++j) tile_sum += exp(v[j] - tile_max);
      merge_lse(run_max[i], run_sum[i], tile_max, tile_sum);
    }
  }

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
        out[row] = run_max[i] == neg_inf<acc_t>() ? neg_inf<acc_t>() : run_max[i] + log(run_sum[i]);
      } else {
        part_max[blockIdx.y * n + row] = run_max[i];
        part_sum[blockIdx.y * n + row] = run_sum[i];
      }
    }
  }
}

at::Tensor lse_engine_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double scale,
                             Precision precision) {
  return cuda::engine::lse_tensor_cores(x, y, h, scale, cuda::engine::dot_mode(precision));
}

at::Tensor lse_engine_batched_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                                     const std::vector<double>& scales, Precision precision) {
  return cuda::engine::lse_tensor_cores_batched(x, y, h, scales, cuda::engine::dot_mode(precision));
}

// The tensor-core engine when it is switched on (OT_FLOW_CUDA_ENGINE, engine.h) and the inputs
// are not float64: batched inputs are one launch. Otherwise the FMA kernel below, and batched
// inputs a C++ loop of its 2-D launches on the current stream (run_lse, no host synchronisation).
at::Tensor lse_cuda(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& h,
                    double scale, std::optional<c10::ArrayRef<double>> scales, c10::string_view precision,
                    bool validate) {
  if (cuda::engine::engine_takes(x.scalar_type())) {
    return run_lse(x, y, h, scale, scales, precision, validate, &lse_engine_kernel, &lse_engine_batched_kernel);
  }
  return run_lse(x, y, h, scale, scales, precision, validate, &lse_cuda_kernel);
}

}  // namespace

// The FMA kernels are float32-exact in every mode: `precision` is the engine's.
at::Tensor lse_cuda_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                           double scale, Precision /*precision*/) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  at::Tensor out = at::empty({n}, x.options());
  const ChunkPlan plan = plan_chunks(n, m, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  TORCH_CHECK(plan.row_blocks <= std::numeric_limits<int32_t>::max(), "ot_flow.lse: too many rows");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(plan.row_blocks), static_cast<unsigned>(plan.chunks));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_flow_lse_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* hp = h.const_data_ptr<scalar_t>();
    if (plan.chunks == 1) {
      launch_kernel(lse_tiles_kernel<scalar_t>, grid, kThreads, 0, stream, xp, yp, hp, n, m, d,
                    static_cast<scalar_t>(scale), plan.cols_per_chunk, out.data_ptr<scalar_t>(), nullptr, nullptr);
      return;
    }
    at::Tensor partials = at::empty({2, plan.chunks, n}, x.options());
    scalar_t* part_max = partials[0].data_ptr<scalar_t>();
    scalar_t* part_sum = partials[1].data_ptr<scalar_t>();
    launch_kernel(lse_tiles_kernel<scalar_t>, grid, kThreads, 0, stream, xp, yp, hp, n, m, d,
                  static_cast<scalar_t>(scale), plan.cols_per_chunk, nullptr, part_max, part_sum);
    constexpr int kMergeThreads = 256;
    const unsigned merge_blocks = static_cast<unsigned>((n + kMergeThreads - 1) / kMergeThreads);
    launch_kernel(lse_merge_chunks_kernel<scalar_t>, merge_blocks, kMergeThreads, 0, stream, part_max, part_sum, n,
                  plan.chunks, out.data_ptr<scalar_t>());
  });
  return out;
}

TORCH_LIBRARY_IMPL(ot_flow, CUDA, m) { m.impl("lse", &lse_cuda); }

}  // namespace ot_flow
