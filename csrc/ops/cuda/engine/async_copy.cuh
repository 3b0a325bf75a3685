// Asynchronous global -> shared copies (cp.async, sm_80+) of row slices, zero-filled past the
// matrix: the staging half of the engine's pipeline.
#pragma once

#include <cstdint>

#include "../ptx_instructions.cuh"

namespace ot_flow::cuda::engine {

// Copies Width floats (4 or 16 bytes) from global `src` to shared `dst`, or writes zeros when
// !valid (src-size 0: nothing is read, `src` need only be a mapped address); KeepInL1: cached in
// L1 on the way (ptx::cp_async).
template <int Width, bool KeepInL1>
__device__ __forceinline__ void copy_async_or_zero(float* dst, const float* src, bool valid) {
  ptx::cp_async<4 * Width, KeepInL1>(dst, src, valid ? 4 * Width : 0);
}

__device__ __forceinline__ void commit_async_copies() { ptx::cp_async_commit_group(); }

// Waits until at most Pending of the committed groups are still in flight.
template <int Pending>
__device__ __forceinline__ void wait_async_copies() {
  ptx::cp_async_wait_group<Pending>();
}

// Stages slices of the row-major (rows, d) matrix `src` into dst[Rows][Stride], one block-wide
// call per step: rows [first + r) x columns [k0, k0 + SliceK) for r < Rows, where rows and
// columns past the matrix read as zero, so that padded rows and dimensions add nothing to a dot
// product. Width 4 needs d % 4 == 0 and a 16-byte aligned `src` (then a 4-vector is wholly
// inside or wholly outside the matrix).
//
// Each thread copies the same column k of the rows row, row + kRowsPerPass, ... of every slice,
// so its addresses are one pointer, which the loop moves from slice to slice by additions, plus
// a fixed stride: per copy a 64-bit add, one compare and the copy. (Forming each address from
// the step's tile and slice cost ~30 instructions a copy in 64-bit multiplies and compares: at
// d <= 8, 4-byte copies, 121 of the ~570 a step issues.)
//
// KeepInL1: the copies are cached in L1 (for a matrix whose slices the block stages again).
template <int Rows, int SliceK, int Stride, int Threads, int Width, bool KeepInL1 = false>
class SliceStager {
  static constexpr int kVectorsPerRow = SliceK / Width;
  static_assert(Threads % kVectorsPerRow == 0, "a thread copies one column of the slice");
  static constexpr int kRowsPerPass = Threads / kVectorsPerRow;
  static_assert(Rows % kRowsPerPass == 0, "every thread copies the same number of vectors");
  static constexpr int kCopies = Rows / kRowsPerPass;

  const float* __restrict__ matrix_;  // a mapped address for the copies that read nothing
  const float* __restrict__ next_;    // this thread's first copy of the next slice
  int64_t pass_stride_;               // kRowsPerPass rows of the matrix, in floats
  int row_, k_;                       // this thread's first row and its column within a slice

 public:
  // Starts at the slice of columns [0, SliceK) of rows [first, first + Rows).
  __device__ __forceinline__ SliceStager(const float* __restrict__ src, int64_t first, int64_t d)
      : matrix_(src),
        pass_stride_(kRowsPerPass * d),
        row_(static_cast<int>(threadIdx.x) / kVectorsPerRow),
        k_((static_cast<int>(threadIdx.x) % kVectorsPerRow) * Width) {
    next_ = src + (first + row_) * d + k_;
  }

  // Stages the current slice: rows_left rows of the matrix remain from its first row, and
  // cols_left = d - k0 columns from its first column.
  __device__ __forceinline__ void stage(float* dst, int64_t rows_left, int64_t cols_left) const {
    const int rows = static_cast<int>(rows_left < Rows ? rows_left : Rows);
    const bool k_inside = k_ < cols_left;
    const float* src = next_;
    float* to = dst + row_ * Stride + k_;
    // Whole unrolling for 16-byte copies, in pairs for 4-byte ones (8 a thread), whose whole
    // unrolling keeps enough addresses live to spill the lse kernels' registers on sm_80.
#pragma unroll(kCopies <= 4 ? kCopies : 2)
    for (int i = 0; i < kCopies; ++i) {
      const bool valid = k_inside && row_ + i * kRowsPerPass < rows;
      copy_async_or_zero<Width, KeepInL1>(to + i * kRowsPerPass * Stride, valid ? src : matrix_, valid);
      src += pass_stride_;
    }
  }

  // Moves to the slice `floats` further on in the matrix (rows * d + columns).
  __device__ __forceinline__ void advance(int64_t floats) { next_ += floats; }
};

}  // namespace ot_flow::cuda::engine
