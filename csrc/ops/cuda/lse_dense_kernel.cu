// CUDA kernel of ot_flow::lse_dense. Along rows (dim = 1): one warp per row, each lane keeps
// an online (max, sum) over a strided slice, merged by shuffles. Along columns (dim = 0): one
// thread per column (adjacent threads read adjacent entries), rows split over blockIdx.y
// when the columns alone give too few threads, partial pairs merged by a second kernel.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../lse_dense.h"
#include "kernel_launch.cuh"
#include "online_lse.cuh"

namespace ot_flow {
namespace {

using namespace ot_flow::cuda;

constexpr int kThreads = 256;

template <typename acc_t>
__device__ __forceinline__ void push(acc_t& max, acc_t& sum, acc_t v) {
  if (v == neg_inf<acc_t>()) return;
  if (v > max) {
    sum = sum * exp(max - v) + acc_t(1);
    max = v;
  } else {
    sum += exp(v - max);
  }
}

template <typename scalar_t>
__global__ void lse_dense_rows_kernel(const scalar_t* __restrict__ dots, const scalar_t* __restrict__ h,
                                      int64_t n, int64_t m, scalar_t scale, scalar_t* __restrict__ out) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (row >= n) return;  // whole warps leave together
  scalar_t max = neg_inf<scalar_t>(), sum = 0;
  const scalar_t* d = dots + row * m;
  for (int64_t j = lane; j < m; j += 32) push(max, sum, scale * d[j] + h[j]);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const scalar_t other_max = __shfl_xor_sync(0xffffffffu, max, offset);
    const scalar_t other_sum = __shfl_xor_sync(0xffffffffu, sum, offset);
    merge_lse(max, sum, other_max, other_sum);
  }
  if (lane == 0) out[row] = max == neg_inf<scalar_t>() ? max : max + log(sum);
}

template <typename scalar_t>
__global__ void lse_dense_columns_kernel(const scalar_t* __restrict__ dots, const scalar_t* __restrict__ h,
                                         int64_t n, int64_t m, scalar_t scale, int64_t rows_per_chunk,
                                         scalar_t* __restrict__ part_max, scalar_t* __restrict__ part_sum) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= m) return;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = min(n, r0 + rows_per_chunk);
  scalar_t max = neg_inf<scalar_t>(), sum = 0;
  for (int64_t i = r0; i < r1; ++i) push(max, sum, scale * dots[i * m + col] + h[i]);
  part_max[blockIdx.y * m + col] = max;
  part_sum[blockIdx.y * m + col] = sum;
}

at::Tensor lse_dense_cuda(const at::Tensor& dots, const at::Tensor& h, double scale, int64_t dim,
                          const std::optional<at::Tensor>& shift, bool validate,
                          std::optional<c10::ArrayRef<double>> scales) {
  return run_lse_dense(dots, h, scale, dim, shift, validate, scales, &lse_dense_cuda_kernel);
}

// One problem: rows (dim = 1) or columns (dim = 0) of the (n, m) matrix `d`.
template <typename scalar_t>
void launch_problem(const scalar_t* d, const scalar_t* hp, int64_t n, int64_t m, scalar_t s, int64_t dim, int sms,
                    scalar_t* out, const at::Tensor& like, cudaStream_t stream) {
  if (dim == 1) {
    const int64_t blocks = (n * 32 + kThreads - 1) / kThreads;
    launch_kernel(lse_dense_rows_kernel<scalar_t>, static_cast<unsigned>(blocks), kThreads, 0, stream, d, hp, n, m, s,
                  out);
    return;
  }
  const int64_t col_blocks = (m + kThreads - 1) / kThreads;
  // Enough row chunks for about 8 blocks per multiprocessor.
  int64_t chunks = std::min<int64_t>(std::max<int64_t>(1, 8 * sms / col_blocks), std::min<int64_t>(n, 65535));
  const int64_t rows_per_chunk = (n + chunks - 1) / chunks;
  chunks = (n + rows_per_chunk - 1) / rows_per_chunk;
  at::Tensor partials = at::empty({2, chunks, m}, like.options());
  scalar_t* part_max = partials[0].data_ptr<scalar_t>();
  scalar_t* part_sum = partials[1].data_ptr<scalar_t>();
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks));
  launch_kernel(lse_dense_columns_kernel<scalar_t>, grid, kThreads, 0, stream, d, hp, n, m, s, rows_per_chunk, part_max,
                part_sum);
  launch_kernel(lse_merge_chunks_kernel<scalar_t>, static_cast<unsigned>(col_blocks), kThreads, 0, stream, part_max,
                part_sum, m, chunks, out);
}

}  // namespace

// The kernels here make one online pass already, so the shift hint is not needed. A batch is
// a loop of per-problem launches on the current stream (the cached path is opt-in on GPUs).
at::Tensor lse_dense_cuda_kernel(const at::Tensor& dots, const at::Tensor& h, const std::vector<double>& scales,
                                 int64_t dim, const std::optional<at::Tensor>& /*shift*/) {
  const c10::cuda::CUDAGuard device_guard(dots.device());
  const int64_t batch = dots.size(0), n = dots.size(1), m = dots.size(2);
  const int64_t len_h = dim == 1 ? m : n, len_out = dim == 1 ? n : m;
  at::Tensor out = at::empty({batch, len_out}, dots.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "ot_flow_lse_dense_cuda", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      launch_problem<scalar_t>(dots.const_data_ptr<scalar_t>() + b * n * m, h.const_data_ptr<scalar_t>() + b * len_h,
                               n, m, static_cast<scalar_t>(scales[b]), dim, sms,
                               out.data_ptr<scalar_t>() + b * len_out, dots, stream);
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(ot_flow, CUDA, m) { m.impl("lse_dense", &lse_dense_cuda); }

}  // namespace ot_flow
