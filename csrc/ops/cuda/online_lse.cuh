// Online log-sum-exp on the GPU: a running (max, sum of exp(. - max)) pair, how two pairs
// merge, and the kernel that merges per-chunk partial pairs into max + log(sum).
#pragma once

#include <cuda/std/limits>

#include <cstdint>

#include "ptx_instructions.cuh"

namespace ot_flow::cuda {

template <typename T>
constexpr T neg_inf() {
  return -::cuda::std::numeric_limits<T>::infinity();
}

// The engine's exponential: 2^v by the hardware's ex2 (MUFU.EX2), results below 2^-126
// flushed to 0. exp2f gives those subnormal results by a range test and two multiplies around
// every ex2: three more instructions on the FMA pipe, which also runs the epilogues' FFMA, FMNMX
// and FADD and, at small d, bounds the engine before the tensor cores do. Everything the engine
// exponentiates is a term relative to a running max (whose own term is 1), so a flushed term
// lies below 2^-126 of a sum >= 1 (in the barycentric numerator: below m 2^-126 max|v|, in
// absolute terms); every other result is exp2f's, bit for bit.
__device__ __forceinline__ float exp2_ftz(float v) { return ptx::ex2_approx_ftz(v); }

// The exponential a (max, sum) pair is kept in: e^v for the FMA kernels, 2^v for the engine
// (its scores are in log2 units, and exp2 is the hardware's native exponential).
struct NaturalExp {
  template <typename T>
  __device__ __forceinline__ T operator()(T v) const {
    return exp(v);
  }
};
struct Base2Exp {
  __device__ __forceinline__ float operator()(float v) const { return exp2_ftz(v); }
};

// Folds (other_max, other_sum) into a running (max, sum) of Exp(. - max).
template <class Exp = NaturalExp, typename acc_t>
__device__ __forceinline__ void merge_lse(acc_t& max, acc_t& sum, acc_t other_max, acc_t other_sum) {
  if (other_max == neg_inf<acc_t>()) return;
  if (other_max > max) {
    sum = sum * Exp{}(max - other_max) + other_sum;
    max = other_max;
  } else {
    sum += other_sum * Exp{}(other_max - max);
  }
}

// out[i] = log-sum-exp of chunks partial pairs part_*[c * n + i], c < chunks.
template <typename scalar_t>
__global__ void lse_merge_chunks_kernel(const scalar_t* __restrict__ part_max,
                                        const scalar_t* __restrict__ part_sum, int64_t n,
                                        int64_t chunks, scalar_t* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n) return;
  scalar_t max = neg_inf<scalar_t>(), sum = 0;
  for (int64_t c = 0; c < chunks; ++c) merge_lse(max, sum, part_max[c * n + row], part_sum[c * n + row]);
  out[row] = max == neg_inf<scalar_t>() ? neg_inf<scalar_t>() : max + log(sum);
}

}  // namespace ot_flow::cuda
