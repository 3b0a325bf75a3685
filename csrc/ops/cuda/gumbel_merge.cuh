// The merge rules of the Gumbel-max kernels (the FMA kernel and the engine's epilogue): a
// running (value, index) pair keeps the larger value, ties to the lower column; column chunks
// are merged in chunk order with the same rule.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernel_launch.cuh"
#include "online_lse.cuh"

namespace ot_flow::cuda {

__device__ __forceinline__ void keep_better(double& value, int64_t& index, double other_value,
                                            int64_t other_index) {
  if (other_value > value || (other_value == value && other_index >= 0 && other_index < index)) {
    value = other_value;
    index = other_index;
  }
}

// Merges a (value, index) pair over each aligned group of `Lanes` lanes of the warp (4: a quad,
// 32: the warp) by keep_better; every lane of a group ends with the group's winner. All 32
// lanes must call it.
template <int Lanes>
__device__ __forceinline__ void keep_better_over_lanes(double& value, int64_t& index) {
#pragma unroll
  for (int offset = 1; offset < Lanes; offset *= 2) {
    const double other_value = __shfl_xor_sync(0xffffffffu, value, offset);
    const int64_t other_index = __shfl_xor_sync(0xffffffffu, index, offset);
    keep_better(value, index, other_value, other_index);
  }
}

// The engine's epilogues hold each of a lane's two rows (rows[r], r = 0, 1) as a (value, index)
// pair spread over the 4 lanes of a quad (the accumulator layout): merged by keep_better over
// the quad, the winner stored from the quad's first lane at part_*[base + rows[r]] (rows past n,
// the padding of the last block, store nothing).
__device__ __forceinline__ void store_best_over_quad(double (&value)[2], int64_t (&index)[2], const int64_t (&rows)[2],
                                                     int64_t n, int lane, double* __restrict__ part_value,
                                                     int64_t* __restrict__ part_index, int64_t base) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    keep_better_over_lanes<4>(value[r], index[r]);
    if ((lane & 3) == 0 && rows[r] < n) {
      part_value[base + rows[r]] = value[r];
      part_index[base + rows[r]] = index[r];
    }
  }
}

// Chunk c of row i at part_*[c * n + i]; merged in chunk order, so ties keep the lower column.
// (static: each translation unit that launches it has its own copy.)
static __global__ void gumbel_merge_chunks_kernel(const double* __restrict__ part_value,
                                           const int64_t* __restrict__ part_index, int64_t n,
                                           int64_t chunks, double* __restrict__ value,
                                           int64_t* __restrict__ index) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n) return;
  double best = neg_inf<double>();
  int64_t best_j = -1;
  for (int64_t c = 0; c < chunks; ++c) {
    if (part_value[c * n + row] > best) {
      best = part_value[c * n + row];
      best_j = part_index[c * n + row];
    }
  }
  value[row] = best;
  index[row] = best_j;
}

// Launches gumbel_merge_chunks_kernel on `stream` for n rows and `chunks` partial pairs.
static void merge_gumbel_chunks(const double* part_value, const int64_t* part_index, int64_t n, int64_t chunks,
                                double* value, int64_t* index, cudaStream_t stream) {
  constexpr int kMergeThreads = 256;
  const unsigned blocks = static_cast<unsigned>((n + kMergeThreads - 1) / kMergeThreads);
  launch_kernel(gumbel_merge_chunks_kernel, blocks, kMergeThreads, 0, stream, part_value, part_index, n, chunks, value,
                index);
}

}  // namespace ot_flow::cuda
