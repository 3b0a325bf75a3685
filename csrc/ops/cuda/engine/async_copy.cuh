// Asynchronous global -> shared copies (cp.async, sm_80+) of row slices, zero-filled past the
// matrix: the staging half of the engine's pipeline.
#pragma once

#include <cstdint>

#include "../ptx_instructions.cuh"

namespace ot_flow::cuda::engine {

// Copies Width floats (4 or 16 bytes) from global `src` to shared `dst`, or writes zeros when
// !valid (src-size 0: nothing is read, `src` need only be a mapped address).
template <int Width>
__device__ __forceinline__ void copy_async_or_zero(float* dst, const float* src, bool valid) {
  ptx::cp_async<4 * Width>(dst, src, valid ? 4 * Width : 0);
}

__device__ __forceinline__ void commit_async_copies() { ptx::cp_async_commit_group(); }

// Waits until at most Pending of the committed groups are still in flight.
template <int Pending>
__device__ __forceinline__ void wait_async_copies() {
  ptx::cp_async_wait_group<Pending>();
}

// Stages rows [row0, row0 + Rows) x columns [k0, k0 + SliceK) of the row-major (rows, d) matrix
// `src` into dst[Rows][Stride]; rows >= rows_end and columns >= d read as zero, so that padded
// rows and dimensions add nothing to a dot product. Width 4 needs d % 4 == 0 and a 16-byte
// aligned `src` (then a 4-vector is wholly inside or wholly outside the matrix).
template <int Rows, int SliceK, int Stride, int Threads, int Width>
__device__ __forceinline__ void stage_rows(float* dst, const float* __restrict__ src, int64_t row0,
                                           int64_t rows_end, int64_t k0, int64_t d) {
  constexpr int kVectorsPerRow = SliceK / Width;
  constexpr int kVectors = Rows * kVectorsPerRow;
  static_assert(kVectors % Threads == 0, "every thread copies the same number of vectors");
  // A fixed count of copies per thread (not a loop from threadIdx.x), so that the loop unrolls
  // without the remainder loop and branches the compiler adds for an unknown trip count: whole
  // for 16-byte copies (2 a thread), in pairs for 4-byte ones (8), whose whole unrolling keeps
  // enough addresses live to spill the lse kernels' registers on sm_80.
  constexpr int kCopies = kVectors / Threads;
#pragma unroll(kCopies <= 4 ? kCopies : 2)
  for (int i = 0; i < kCopies; ++i) {
    const int e = static_cast<int>(threadIdx.x) + i * Threads;
    const int r = e / kVectorsPerRow;
    const int k = (e % kVectorsPerRow) * Width;
    const int64_t gr = row0 + r, gk = k0 + k;
    const bool valid = gr < rows_end && gk < d;
    copy_async_or_zero<Width>(dst + r * Stride + k, valid ? src + gr * d + gk : src, valid);
  }
}

}  // namespace ot_flow::cuda::engine
