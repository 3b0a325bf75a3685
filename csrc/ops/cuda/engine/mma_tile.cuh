// One warp's tile of dot products on the tensor cores: acc[j][.] += <x_r, y_c> over one staged
// slice of d, for the warp's 16 rows r and the tile's kBlockCols columns c (mma.sync, sm_80+).
//
// Fragment layout (PTX ISA, m16n8k8 and m16n8k16 with .row.col): lane = 4 g + t. The
// accumulator of column block j holds, per lane, rows g and g + 8 and columns 8 j + 2 t + {0, 1}:
//   acc[j][0] = (g, 8j+2t)    acc[j][1] = (g, 8j+2t+1)
//   acc[j][2] = (g+8, 8j+2t)  acc[j][3] = (g+8, 8j+2t+1)
// The epilogues read the scores in this layout.
#pragma once

#include <cstdint>

#include "../ptx_instructions.cuh"
#include "kernel_traits.cuh"

namespace ot_flow::cuda::engine {

// v rounded to TF32 (10 explicit mantissa bits), to nearest with ties away from zero: half of
// the dropped unit added to the magnitude's bits, then the low 13 bits cleared. These are the
// bits cvt.rna.tf32.f32 gives for every finite v and for +-inf (sm_80/sm_90 compile that
// conversion to this same add and mask, behind a test for non-finite input and a select: four
// instructions per operand where this is two, and the split below converts every operand
// value of every k-step). Every operand here is finite (the ops check their inputs, and the
// engine forms no NaN); a NaN would come out as +-0 or +-inf (checked over all 2^32 patterns).
__device__ __forceinline__ uint32_t to_tf32(float v) { return (__float_as_uint(v) + 0x1000u) & 0xffffe000u; }

// v = hi + lo + O(2^-22 |v|), hi and lo TF32 values (v - hi is exact in float32).
__device__ __forceinline__ void split_tf32(float v, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32(v);
  lo = to_tf32(v - __uint_as_float(hi));
}

// Two floats as bfloat16x2, `first` in the low half (the lower k index of a fragment register).
__device__ __forceinline__ uint32_t to_bf16x2(float first, float second) {
  return ptx::cvt_rn_bf16x2_f32(second, first);
}

// v as the MMA of `Mode` sees it (TF32 or bfloat16 rounding; split TF32 keeps v to 2^-22, and
// so does split float16, whose weights the barycentric epilogue multiplies in split TF32), for
// sums that must match what the tensor cores multiplied (the barycentric normaliser).
template <DotMode Mode>
__device__ __forceinline__ float as_operand(float v) {
  if constexpr (Mode == DotMode::kTF32) {
    return __uint_as_float(to_tf32(v));
  } else if constexpr (Mode == DotMode::kBF16) {
    return __uint_as_float(to_bf16x2(v, 0.0f) << 16);
  } else {
    return v;
  }
}

// c = a . b + c on the tensor cores; from_zero: c = a . b, its zero accumulator taken from the
// zero register (a fresh sum needs no instructions to clear it). Callers pass a condition on
// unrolled loop indices, which the compiler resolves, so either way it is one MMA instruction.
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                         bool from_zero = false) {
  const float c_in[4] = {from_zero ? 0.0f : c[0], from_zero ? 0.0f : c[1], from_zero ? 0.0f : c[2],
                         from_zero ? 0.0f : c[3]};
  ptx::mma_m16n8k8_tf32(c, a, b, c_in);
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                         bool from_zero = false) {
  const float c_in[4] = {from_zero ? 0.0f : c[0], from_zero ? 0.0f : c[1], from_zero ? 0.0f : c[2],
                         from_zero ? 0.0f : c[3]};
  ptx::mma_m16n8k16_bf16(c, a, b, c_in);
}

__device__ __forceinline__ void mma_f16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                        bool from_zero = false) {
  const float c_in[4] = {from_zero ? 0.0f : c[0], from_zero ? 0.0f : c[1], from_zero ? 0.0f : c[2],
                         from_zero ? 0.0f : c[3]};
  ptx::mma_m16n8k16_f16(c, a, b, c_in);
}

// Words p[0..3] of shared memory in one 128-bit load (LDS.128); p 16-byte aligned.
__device__ __forceinline__ uint4 load_shared_words4(const float* p) {
#if defined(OT_FLOW_DEVICE_EMULATION)
  ::ot_flow::emulation::check_aligned(p, 16, "misaligned 128-bit shared-memory load");
#endif
  return *reinterpret_cast<const uint4*>(p);
}

// acc += x_slice[warp rows] . y_slice^T for one staged slice; FromZero: acc = that product (the
// first MMA of each column block starts from the zero register). xs points at the warp's first
// row of the staged x slice ([.][kStrideX]), ys at the tile's first column of the staged y slice
// ([.][kStrideY]).
template <class Traits, bool FromZero>
__device__ __forceinline__ void mma_slice(const float* xs, const float* ys, int lane,
                                          float (&acc)[Traits::kColFrags][4]) {
  constexpr int S = Traits::kStrideX, SY = Traits::kStrideY;
  const int g = lane >> 2, t = lane & 3;
  if constexpr (Traits::kPacked) {
    // The slice of a row is already the MMAs' operands (streamed_operands.h), no conversion in
    // the loop. Per 16 words, x's words are 8 pairs (k = 2w, 2w + 1) in k order, then 8 more:
    // split float16's hi halves then lo halves of 16 values, or bfloat16's first 16 values then
    // the next 16. A lane's A fragments (rows g and g + 8 interleaved) are 8 single-word loads,
    // straight into place. y's words are in lane order, 4t to 4t + 3 the pairs t and t + 4 of the
    // first 8 (k = 2t, 2t + 1 and 2t + 8, 2t + 9), then of the next 8: a lane's B fragments of a
    // column block are one 128-bit load, whose pairs land in the registers the MMAs take them
    // in. (A in lane order too, as a 128-bit load per row, costs ~50 register moves a step to
    // interleave the rows.)
    static_assert(Traits::kSliceK % 16 == 0, "a packed slice is whole 16s of words");
#pragma unroll
    for (int kk = 0; kk < Traits::kSliceK; kk += 16) {
      const float* x0 = xs + g * S + kk + t;
      const float* x1 = x0 + 8 * S;
      const uint32_t a_first[4] = {__float_as_uint(x0[0]), __float_as_uint(x1[0]), __float_as_uint(x0[4]),
                                   __float_as_uint(x1[4])};
      const uint32_t a_next[4] = {__float_as_uint(x0[8]), __float_as_uint(x1[8]), __float_as_uint(x0[12]),
                                  __float_as_uint(x1[12])};
#pragma unroll
      for (int j = 0; j < Traits::kColFrags; ++j) {
        const uint4 y0 = load_shared_words4(ys + (8 * j + g) * SY + kk + 4 * t);
        const uint32_t b_first[2] = {y0.x, y0.y};
        const uint32_t b_next[2] = {y0.z, y0.w};
        if constexpr (Traits::kMode == DotMode::kSplitF16) {  // first: hi, next: lo; small terms first
          mma_f16(acc[j], a_next, b_first, FromZero && kk == 0);
          mma_f16(acc[j], a_first, b_next);
          mma_f16(acc[j], a_first, b_first);
        } else {  // bfloat16: two k-steps of 16 values
          mma_bf16(acc[j], a_first, b_first, FromZero && kk == 0);
          mma_bf16(acc[j], a_next, b_next);
        }
      }
    }
  } else {
#pragma unroll
    for (int kk = 0; kk < Traits::kSliceK; kk += Traits::kMmaK) {
      const float av[4] = {xs[g * S + kk + t], xs[(g + 8) * S + kk + t], xs[g * S + kk + t + 4],
                           xs[(g + 8) * S + kk + t + 4]};
      uint32_t a_hi[4], a_lo[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) split_tf32(av[i], a_hi[i], a_lo[i]);
#pragma unroll
      for (int j = 0; j < Traits::kColFrags; ++j) {
        const float* y0 = ys + (8 * j + g) * SY + kk + t;
        uint32_t b_hi[2], b_lo[2];
        split_tf32(y0[0], b_hi[0], b_lo[0]);
        split_tf32(y0[4], b_hi[1], b_lo[1]);
        const bool fresh = FromZero && kk == 0;
        if constexpr (Traits::kMode == DotMode::kSplitTF32) {  // small terms first
          mma_tf32(acc[j], a_lo, b_hi, fresh);
          mma_tf32(acc[j], a_hi, b_lo);
          mma_tf32(acc[j], a_hi, b_hi);
        } else {
          mma_tf32(acc[j], a_hi, b_hi, fresh);
        }
      }
    }
  }
}

}  // namespace ot_flow::cuda::engine
