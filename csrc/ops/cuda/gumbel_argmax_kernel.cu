// CUDA kernel of ot_flow::gumbel_argmax. The tiles of lse (tile_dot.cuh); each thread keeps a
// running (value, index) for each of its rows, draws noise only for the elements of its
// columns that can still win (the bound of gumbel_noise.h), and the threads of a row group
// merge their pairs with shuffles, ties to the lower column. Column chunks, when the rows
// alone give too few blocks, write partial pairs that a second kernel merges in chunk order.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../gumbel_argmax.h"
#include "../gumbel_noise.h"
#include "engine/engine.h"
#include "gumbel_merge.cuh"
#include "kernel_launch.cuh"
#include "tile_dot.cuh"

namespace ot_flow {
namespace {

using namespace ot_flow::cuda;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) gumbel_argmax_tiles_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, const scalar_t* __restrict__ h,
    int64_t n, int64_t m, int64_t d, scalar_t scale, int64_t cols_per_chunk, GumbelKey key,
    double* __restrict__ part_value, int64_t* __restrict__ part_index) {
  using acc_t = scalar_t;
  __shared__ TileSmem<scalar_t> smem;
  const auto [tx, ty, row0, col_begin, col_end] = block_span(m, cols_per_chunk, blockIdx.y);

  const NoiseKey stream = noise_key(static_cast<uint64_t>(key.seed), static_cast<uint64_t>(key.offset));
  double best[kThreadRows];
  int64_t best_j[kThreadRows];
#pragma unroll
  for (int i = 0; i < kThreadRows; ++i) {
    best[i] = neg_inf<double>();
    best_j[i] = -1;
  }

  for (int64_t col0 = col_begin; col0 < col_end; col0 += kBlockCols) {
    acc_t dot[kThreadRows][kThreadCols];
    tile_dot(x, y, n, col_end, d, row0, col0, smem, dot);
    acc_t bias[kThreadCols];
    tile_bias(h, col0, col_end, tx, bias);
#pragma unroll
    for (int i = 0; i < kThreadRows; ++i) {
      const int64_t row = row0 + ty * kThreadRows + i;
      acc_t v[kThreadCols];
      acc_t local_max = neg_inf<acc_t>();
#pragma unroll
      for (int j = 0; j < kThreadCols; ++j) {
        v[j] = scale * dot[i][j] + bias[j];
        local_max = max(local_max, v[j]);
      }
      if (row >= n || local_max == neg_inf<acc_t>()) continue;
      const double bound = fmax(best[i], static_cast<double>(local_max) + kGumbelMin) - kGumbelMax;
      if (static_cast<double>(local_max) < bound) continue;
      GumbelRow noise(stream, static_cast<uint64_t>(key.row_offset + row));
#pragma unroll
      for (int j = 0; j < kThreadCols; ++j) {
        if (static_cast<double>(v[j]) < bound) continue;
        const int64_t col = col0 + tx * kThreadCols + j;
        const double perturbed = static_cast<double>(v[j]) + noise.at(static_cast<uint64_t>(key.col_offset + col));
        if (perturbed > best[i]) {
          best[i] = perturbed;
          best_j[i] = col;
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kThreadRows; ++i) {
#pragma unroll
    for (int offset = kThreadsX / 2; offset > 0; offset /= 2) {
      const double other_value = __shfl_xor_sync(0xffffffffu, best[i], offset);
      const int64_t other_index = __shfl_xor_sync(0xffffffffu, best_j[i], offset);
      keep_better(best[i], best_j[i], other_value, other_index);
    }
    const int64_t row = row0 + ty * kThreadRows + i;
    if (tx == 0 && row < n) {
      part_value[blockIdx.y * n + row] = best[i];
      part_index[blockIdx.y * n + row] = best_j[i];
    }
  }
}

std::tuple<at::Tensor, at::Tensor> gumbel_argmax_engine_kernel(const at::Tensor& x, const at::Tensor& y,
                                                               const at::Tensor& h, double scale,
                                                               const GumbelKey& key, Precision precision) {
  return cuda::engine::gumbel_argmax_tensor_cores(x, y, h, scale, key, cuda::engine::dot_mode(precision));
}

std::tuple<at::Tensor, at::Tensor> gumbel_argmax_engine_batched_kernel(const at::Tensor& x, const at::Tensor& y,
                                                                       const at::Tensor& h,
                                                                       const std::vector<double>& scales,
                                                                       const std::vector<GumbelKey>& keys,
                                                                       Precision precision) {
  return cuda::engine::gumbel_argmax_tensor_cores_batched(x, y, h, scales, keys, cuda::engine::dot_mode(precision));
}

// The tensor-core engine when it is switched on (engine.h) and the inputs are not float64:
// batched inputs are one launch. Otherwise the FMA kernel below, and batched inputs a C++ loop
// of its 2-D launches on the current stream (run_gumbel_argmax).
std::tuple<at::Tensor, at::Tensor> gumbel_argmax_cuda(const at::Tensor& x, const at::Tensor& y,
                                                      const std::optional<at::Tensor>& h, double scale,
                                                      int64_t seed, int64_t offset, int64_t row_offset,
                                                      int64_t col_offset, std::optional<c10::ArrayRef<double>> scales,
                                                      at::OptionalIntArrayRef seeds, c10::string_view precision,
                                                      bool validate) {
  if (cuda::engine::engine_takes(x.scalar_type())) {
    return run_gumbel_argmax(x, y, h, scale, seed, offset, row_offset, col_offset, scales, seeds, precision,
                             validate, &gumbel_argmax_engine_kernel, &gumbel_argmax_engine_batched_kernel);
  }
  return run_gumbel_argmax(x, y, h, scale, seed, offset, row_offset, col_offset, scales, seeds, precision, validate,
                           &gumbel_argmax_cuda_kernel);
}

}  // namespace

// The FMA kernel is float32-exact in every mode: `precision` is the engine's.
std::tuple<at::Tensor, at::Tensor> gumbel_argmax_cuda_kernel(const at::Tensor& x, const at::Tensor& y,
                                                             const at::Tensor& h, double scale,
                                                             const GumbelKey& key, Precision /*precision*/) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  at::Tensor index = at::empty({n}, x.options().dtype(at::kLong));
  at::Tensor value = at::empty({n}, x.options().dtype(at::kDouble));
  const ChunkPlan plan = plan_chunks(n, m, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  TORCH_CHECK(plan.row_blocks <= std::numeric_limits<int32_t>::max(), "ot_flow.gumbel_argmax: too many rows");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(plan.row_blocks), static_cast<unsigned>(plan.chunks));
  // With one chunk the tiles kernel writes the result directly.
  at::Tensor part_value = plan.chunks == 1 ? value : at::empty({plan.chunks, n}, value.options());
  at::Tensor part_index = plan.chunks == 1 ? index : at::empty({plan.chunks, n}, index.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_flow_gumbel_argmax_cuda", [&] {
    launch_kernel(gumbel_argmax_tiles_kernel<scalar_t>, grid, kThreads, 0, stream, x.const_data_ptr<scalar_t>(),
                  y.const_data_ptr<scalar_t>(), h.const_data_ptr<scalar_t>(), n, m, d, static_cast<scalar_t>(scale),
                  plan.cols_per_chunk, key, part_value.data_ptr<double>(), part_index.data_ptr<int64_t>());
  });
  if (plan.chunks > 1) {
    merge_gumbel_chunks(part_value.data_ptr<double>(), part_index.data_ptr<int64_t>(), n, plan.chunks,
                        value.data_ptr<double>(), index.data_ptr<int64_t>(), stream);
  }
  return {index, value};
}

TORCH_LIBRARY_IMPL(ot_flow, CUDA, m) { m.impl("gumbel_argmax", &gumbel_argmax_cuda); }

}  // namespace ot_flow
