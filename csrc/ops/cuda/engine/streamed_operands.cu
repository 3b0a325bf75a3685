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

constexpr int64_t kSliceWords = 16;
constexpr int kPackThreads = 256;

// Values of d in a packed slice of 16 words: split float16's 16 values as hi and lo halves, or
// 32 bfloat16 values.
constexpr int64_t slice_values(DotMode mode) { return mode == DotMode::kSplitF16 ? 16 : 32; }

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

// Where pair w (0..7) of a slice's first 8 pairs, and of its next 8, go among the slice's 16
// words: for the MMAs' A operand (x) in k order, the first pairs then the next; for B (y) in
// lane order, words 4t to 4t + 3 holding first pairs t and t + 4, then next pairs t and t + 4
// (mma_tile.cuh). First and next: split float16's hi and lo halves of 16 values (pair w: values
// 2w, 2w + 1), bfloat16's values 2w, 2w + 1 and 16 + 2w, 17 + 2w.
struct PairWords {
  int first, next;
};
__device__ __forceinline__ PairWords pair_words(int w, bool lane_order) {
  if (lane_order) return {4 * (w % 4) + w / 4, 4 * (w % 4) + 2 + w / 4};
  return {w, 8 + w};
}

// Thread (row, slice) of problem blockIdx.y writes the slice's 16 words of `packed` (pairs with
// the lower k in the lower half, placed by pair_words; values past d are 0):
//   kSplitF16: float16 hi parts of its 16 scaled values v s, and their lo parts, lo = v s - hi
//              (exact in float32) rounded to float16; thread 0 of each problem also writes its
//              exponent (amax: each problem's largest |value|);
//   kBF16:     its 32 values rounded to bfloat16 (to nearest even, as cvt.rn does).
template <DotMode Mode>
__global__ void __launch_bounds__(kPackThreads)
    pack_kernel(const float* __restrict__ src, int64_t problem_stride, int64_t rows, int64_t d, int64_t slices,
                bool lane_order, const float* __restrict__ amax, int32_t* __restrict__ exponents,
                float* __restrict__ packed) {
  constexpr int64_t kValues = slice_values(Mode);
  const int64_t problem = blockIdx.y;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int exponent = 0;
  if constexpr (Mode == DotMode::kSplitF16) {
    exponent = split_exponent(amax[problem]);
    if (item == 0) exponents[problem] = exponent;
  }
  if (item >= rows * slices) return;
  const int64_t row = item / slices, k0 = (item % slices) * kValues;
  const float* __restrict__ in = src + problem * problem_stride + row * d;
  float* __restrict__ out = packed + (problem * rows + row) * slices * kSliceWords + (item % slices) * kSliceWords;
  auto value = [&](int64_t k) { return k < d ? in[k] : 0.0f; };
#pragma unroll
  for (int w = 0; w < 8; ++w) {
    const PairWords at = pair_words(w, lane_order);
    const int64_t k = k0 + 2 * w;
    if constexpr (Mode == DotMode::kSplitF16) {
      const float s = ldexpf(1.0f, exponent);
      const float v0 = value(k) * s, v1 = value(k + 1) * s;
      const uint32_t hi = ptx::cvt_rn_f16x2_f32(v1, v0);
      const uint32_t lo =
          ptx::cvt_rn_f16x2_f32(v1 - ptx::cvt_f32_f16(hi >> 16), v0 - ptx::cvt_f32_f16(hi & 0xffffu));
      out[at.first] = __uint_as_float(hi);
      out[at.next] = __uint_as_float(lo);
    } else {
      out[at.first] = __uint_as_float(ptx::cvt_rn_bf16x2_f32(value(k + 1), value(k)));
      out[at.next] = __uint_as_float(ptx::cvt_rn_bf16x2_f32(value(k + 17), value(k + 16)));
    }
  }
}

// (packed (B, r, words) with words = d in whole slices of 16, exponents (B,) int32, split
// float16 only) for t (B, r, d), each problem contiguous: the packing launch, after, in split
// float16, the largest |value| of each problem.
std::pair<at::Tensor, at::Tensor> pack(const at::Tensor& t, DotMode mode, bool lane_order) {
  const int64_t problems = t.size(0), rows = t.size(1), d = t.size(2);
  const int64_t slices = (d + slice_values(mode) - 1) / slice_values(mode);
  TORCH_CHECK(problems <= 65535, "ot_flow: the engine packs at most 65,535 problems a call, got ", problems);
  at::Tensor packed = at::empty({problems, rows, slices * kSliceWords}, t.options());
  at::Tensor exponents;
  if (mode == DotMode::kSplitF16) exponents = at::zeros({problems}, t.options().dtype(at::kInt));
  const int64_t items = rows * slices;
  if (problems == 0 || items == 0) return {packed, exponents};
  const dim3 grid(static_cast<unsigned>((items + kPackThreads - 1) / kPackThreads), static_cast<unsigned>(problems));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (mode == DotMode::kSplitF16) {
    const at::Tensor amax =
        at::linalg_vector_norm(t, INFINITY, at::IntArrayRef{1, 2}, false, std::nullopt).contiguous();
    launch_kernel(pack_kernel<DotMode::kSplitF16>, grid, kPackThreads, 0, stream, t.const_data_ptr<float>(),
                  t.stride(0), rows, d, slices, lane_order, amax.const_data_ptr<float>(), exponents.data_ptr<int32_t>(),
                  packed.data_ptr<float>());
  } else {
    launch_kernel(pack_kernel<DotMode::kBF16>, grid, kPackThreads, 0, stream, t.const_data_ptr<float>(), t.stride(0),
                  rows, d, slices, lane_order, nullptr, nullptr, packed.data_ptr<float>());
  }
  return {packed, exponents};
}

}  // namespace

SplitF16Operands split_f16_operands(const at::Tensor& x, const at::Tensor& y) {
  auto [xs, x_exponent] = pack(x, DotMode::kSplitF16, false);
  auto [ys, y_exponent] = pack(y, DotMode::kSplitF16, true);
  const int64_t d_pad = xs.size(2);
  return {std::move(xs), std::move(ys), x_exponent + y_exponent, d_pad};
}

StreamedOperands streamed_operands(const at::Tensor& x, const at::Tensor& y, DotMode mode) {
  if (mode == DotMode::kSplitF16) {
    SplitF16Operands split = split_f16_operands(x, y);
    return {std::move(split.x), std::move(split.y), std::move(split.scale_exponent), split.d_pad, true};
  }
  if (mode == DotMode::kBF16) {
    at::Tensor xs = pack(x, mode, false).first, ys = pack(y, mode, true).first;
    const int64_t words = xs.size(2);
    return {std::move(xs), std::move(ys), at::Tensor(), words, true};
  }
  // launch.cuh's test of the bases and d, and every problem's rows 16-byte apart too.
  return {x, y, at::Tensor(), x.size(2), rows_aligned16(x, y) && x.stride(0) % 4 == 0 && y.stride(0) % 4 == 0};
}

}  // namespace ot_flow::cuda::engine
