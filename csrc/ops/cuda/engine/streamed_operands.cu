// What the streaming loop reads (streamed_operands.h).
#include "streamed_operands.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <utility>

#include "../kernel_launch.cuh"
#include "../ptx_instructions.cuh"
#include "launch.cuh"

namespace ot_flow::cuda::engine {
namespace {

constexpr int64_t kSliceValues = 16;
constexpr int kPackThreads = 256;

// The power of two s = 2^exponent a problem whose largest |value| is amax is scaled by:
// amax = f 2^e with f in [0.5, 1) gives s = 2^(15 - e), so that max |v s| lies in [2^14, 2^15)
// (float16's largest finite is 65504); 0 for an all-zero problem; at most 120, so that s is a
// float32 (data below 2^-105 lose range, not values).
__device__ __forceinline__ int split_exponent(float amax) {
  if (!(amax > 0.0f)) return 0;
  int e;
  frexpf(amax, &e);
  return min(15 - e, 120);
}

// Where pair w (k = 2w, 2w + 1) of a slice's hi halves, and of its lo halves, go among the
// slice's 16 words: for the MMAs' A operand (x) in k order, hi pairs then lo pairs; for B (y) in
// lane order, words 4t to 4t + 3 holding hi pairs t and t + 4, then lo pairs t and t + 4
// (mma_tile.cuh).
struct PairWords {
  int hi, lo;
};
__device__ __forceinline__ PairWords pair_words(int w, bool lane_order) {
  if (lane_order) return {4 * (w % 4) + w / 4, 4 * (w % 4) + 2 + w / 4};
  return {w, 8 + w};
}

// Thread (row, slice) of problem blockIdx.y writes the slice's 16 words of `packed`: the pairs
// (the lower k in the lower half) of float16 hi parts of its 16 scaled values v s and of their lo
// parts, lo = v s - hi (exact in float32) rounded to float16, placed by pair_words; values past d
// are 0. Thread 0 of each problem also writes its exponent.
__global__ void __launch_bounds__(kPackThreads)
    pack_split_f16_kernel(const float* __restrict__ src, int64_t problem_stride, int64_t rows, int64_t d,
                          int64_t slices, bool lane_order, const float* __restrict__ amax,
                          int32_t* __restrict__ exponents, float* __restrict__ packed) {
  const int64_t problem = blockIdx.y;
  const int exponent = split_exponent(amax[problem]);
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item == 0) exponents[problem] = exponent;
  if (item >= rows * slices) return;
  const int64_t row = item / slices, k0 = (item % slices) * kSliceValues;
  const float s = ldexpf(1.0f, exponent);
  const float* __restrict__ in = src + problem * problem_stride + row * d;
  float* __restrict__ out = packed + (problem * rows + row) * slices * kSliceValues + k0;
#pragma unroll
  for (int w = 0; w < 8; ++w) {
    const int64_t k = k0 + 2 * w;
    const float v0 = k < d ? in[k] * s : 0.0f, v1 = k + 1 < d ? in[k + 1] * s : 0.0f;
    const uint32_t hi = ptx::cvt_rn_f16x2_f32(v1, v0);
    const uint32_t lo =
        ptx::cvt_rn_f16x2_f32(v1 - ptx::cvt_f32_f16(hi >> 16), v0 - ptx::cvt_f32_f16(hi & 0xffffu));
    const PairWords at = pair_words(w, lane_order);
    out[at.hi] = __uint_as_float(hi);
    out[at.lo] = __uint_as_float(lo);
  }
}

// (packed (B, r, d_pad) words, exponents (B,) int32) for t (B, r, d), each problem contiguous:
// two launches (the largest |value| of each problem, then the packing).
std::pair<at::Tensor, at::Tensor> pack(const at::Tensor& t, int64_t d_pad, bool lane_order) {
  const int64_t problems = t.size(0), rows = t.size(1), d = t.size(2), slices = d_pad / kSliceValues;
  TORCH_CHECK(problems <= 65535, "ot_flow: split float16 packs at most 65,535 problems a call, got ", problems);
  at::Tensor packed = at::empty({problems, rows, d_pad}, t.options());
  at::Tensor exponents = at::zeros({problems}, t.options().dtype(at::kInt));
  const int64_t items = rows * slices;
  if (problems == 0 || items == 0) return {packed, exponents};
  const at::Tensor amax = at::linalg_vector_norm(t, INFINITY, at::IntArrayRef{1, 2}, false, std::nullopt).contiguous();
  const dim3 grid(static_cast<unsigned>((items + kPackThreads - 1) / kPackThreads), static_cast<unsigned>(problems));
  launch_kernel(pack_split_f16_kernel, grid, kPackThreads, 0, at::cuda::getCurrentCUDAStream(),
                t.const_data_ptr<float>(), t.stride(0), rows, d, slices, lane_order, amax.const_data_ptr<float>(),
                exponents.data_ptr<int32_t>(), packed.data_ptr<float>());
  return {packed, exponents};
}

}  // namespace

SplitF16Operands split_f16_operands(const at::Tensor& x, const at::Tensor& y) {
  const int64_t d_pad = (x.size(2) + kSliceValues - 1) / kSliceValues * kSliceValues;
  auto [xs, x_exponent] = pack(x, d_pad, false);
  auto [ys, y_exponent] = pack(y, d_pad, true);
  return {std::move(xs), std::move(ys), x_exponent + y_exponent, d_pad};
}

StreamedOperands streamed_operands(const at::Tensor& x, const at::Tensor& y, DotMode mode) {
  if (mode == DotMode::kSplitF16) {
    SplitF16Operands split = split_f16_operands(x, y);
    return {std::move(split.x), std::move(split.y), std::move(split.scale_exponent), split.d_pad, true};
  }
  // launch.cuh's test of the bases and d, and every problem's rows 16-byte apart too.
  return {x, y, at::Tensor(), x.size(2), rows_aligned16(x, y) && x.stride(0) % 4 == 0 && y.stride(0) % 4 == 0};
}

}  // namespace ot_flow::cuda::engine
