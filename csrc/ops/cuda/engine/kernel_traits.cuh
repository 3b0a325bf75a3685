// Shapes of the tensor-core streaming engine, chosen at compile time per launch.
//
// A block of kWarps warps owns kBlockRows rows of x; each warp owns 16 of them (one m16 MMA row
// block) and all kBlockCols columns of the current tile of y, so a row's scores stay inside one
// warp and its reductions are quad shuffles (the 4 lanes that share a fragment row). The dot
// products are summed over d in slices of kSliceK, each slice staged in shared memory by
// asynchronous copies kStages steps ahead of the MMAs that read it.
#pragma once

#include <cstdint>

#include "../../host_device.h"

namespace ot_flow::cuda::engine {

// How a dot-product tile is computed on the tensor cores (the ops' `precision=`):
//   kSplitTF32 "highest": x = hi + lo with hi, lo TF32 (11 + 11 significant bits); the tile is
//              hi*hi + hi*lo + lo*hi on the tensor cores, float32-accurate (the dropped lo*lo is
//              below 2^-22 of each product);
//   kTF32      "tf32": one TF32 product, about 2^-11 relative per product;
//   kBF16      "bf16": bfloat16 operands (8 significant bits), float32 accumulation; x and y
//              rounded once per call into a packed array of bfloat16 pairs (streamed_operands.h),
//              32 values in 16 words, staged and fed to the MMAs as they are: half the bytes of
//              float32 staging through L2 and shared memory, and no conversion in the loop.
//   kSplitF16  "highest" as well, at twice the tensor-core rate (opt-in, OT_FLOW_ENGINE_HIGHEST):
//              each problem's x scaled by a power of two so that max|x| lies in [2^14, 2^15),
//              then x = hi + lo with hi, lo float16, split once per call into a packed array
//              (streamed_operands.h) that the loop stages and feeds to the MMAs without converting;
//              the tile is hi*hi + hi*lo + lo*hi (m16n8k16.f16) times the inverse scales. The
//              errors are split TF32's (11 + 11 bits), plus float16's subnormal range: an
//              absolute 2^-25 per scaled coordinate, at most 2^-39 max|x| (not relative to
//              each row's own norm, so mips keeps split TF32).
enum class DotMode { kSplitTF32, kTF32, kBF16, kSplitF16 };

// A bound on |computed - exact| of one engine dot product <x, y> over d terms, as a multiple of
// |x| |y| (Cauchy-Schwarz bounds sum_k |x_k y_k|): the operands' rounding per product (split
// TF32: the dropped lo*lo and the rounding left in each lo, 3 x 2^-22; TF32 2^-10 and bfloat16
// 2^-7, twice the unit roundoff of each operand's format, with margin) plus one float32
// accumulation of at most 2^-22 per MMA and term (the tensor cores may truncate; split TF32 adds
// three MMAs per k-step). Exact searches (mips) rescore every column within twice this of a
// row's best, so the factor 2 is margin, not part of the bound. (Not for kSplitF16, whose
// subnormal term is not relative to |x_i|: mips runs it as kSplitTF32.)
OT_FLOW_HOST_DEVICE constexpr float dot_error_bound(DotMode mode, int64_t d) {
  const float operands = mode == DotMode::kSplitTF32 ? 3 * 0x1p-22f : (mode == DotMode::kTF32 ? 0x1p-10f : 0x1p-7f);
  const float mmas_per_step = mode == DotMode::kSplitTF32 ? 3.0f : 1.0f;
  return operands + mmas_per_step * static_cast<float>(d) * 0x1p-22f;
}

// Warps: 4 (64-row blocks) or 8 (128-row blocks, the opt-in OT_FLOW_ENGINE_BLOCK_ROWS=128 of lse
// and mips top-1, launch.cuh). Every block reads all of its chunk's y from L2 (y's copies
// bypass L1), so y's L2 traffic is the row blocks times y: at d = 64, n = m = 65,536, 16 GB a
// pass in 64-row blocks, 8 GB in 128-row ones, for the same registers a thread (lse: two blocks
// of 8 warps a multiprocessor instead of four of 4) and a barrier across twice the warps. Which is faster needs a GPU
// (bench_engine.py times both). 128 rows take 16-word slices: packed 32-word stages would pass
// the 48 KB below.
template <DotMode Mode, int SliceK, int Warps = 4>
struct KernelTraits {
  static constexpr DotMode kMode = Mode;
  static constexpr int kWarps = Warps;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kWarpRows = 16;
  static constexpr int kBlockRows = kWarps * kWarpRows;  // 64 or 128
  static constexpr int kBlockCols = 64;
  static constexpr int kColFrags = kBlockCols / 8;  // n8 MMA column blocks per tile
  // Split float16 and bfloat16 stage packed 16-bit operands (streamed_operands.h): 16 words
  // hold 16 values' hi and lo halves, or 32 bfloat16 values.
  static constexpr bool kPacked = Mode == DotMode::kSplitF16 || Mode == DotMode::kBF16;
  // Words of a slice that one MMA k-step reads (packed: 16 words hold one split float16 k-step
  // of 16 values, or two bfloat16 k-steps).
  static constexpr int kMmaK = kPacked ? 16 : 8;
  // Floats (32-bit words) of a row per staged slice: SliceK values of d, or SliceK words of
  // packed pairs: in split float16 per 16 values 8 words of hi pairs, then 8 of lo pairs; in
  // bfloat16 per 32 values 8 words of the first 16's pairs, then 8 of the next 16's.
  static constexpr int kSliceK = SliceK;
  // Row strides of the staged slices of x (the MMAs' A operand) and y (B) in floats: 4 words of
  // padding put the 8 rows x 4 columns that a warp's 32-bit fragment load touches in 32
  // different banks. Packed operands load a lane's 4 words of a row of y at once (mma_tile.cuh):
  // each quarter of the warp reads 16 words of two rows, in 32 different banks when the rows
  // are an odd multiple of 16 words apart.
  static constexpr int kStrideX = kSliceK + 4;
  static constexpr int kStrideY = !kPacked ? kSliceK + 4 : (kSliceK % 32 == 16 ? kSliceK : kSliceK + 16);
  // Steps staged ahead of the MMAs, plus the one they read. Packed 32-word slices stage twice
  // the words a step, and their padded y rows take 48 words: two stages (43 KB of shared
  // memory a block) stay under the 48 KB of static shared memory and leave room for three blocks
  // on a multiprocessor (lse_engine.cu's register bound); as many words stay in flight as with
  // three stages of 16.
  static constexpr int kStages = kPacked && kSliceK == 32 ? 2 : 3;
  static_assert(kSliceK % kMmaK == 0, "a slice holds whole MMA k-steps");
  static_assert(kWarps == 4 || kWarps == 8, "64- or 128-row blocks");
  static_assert(sizeof(float) * kStages * (kBlockRows * kStrideX + kBlockCols * kStrideY) <= 48 * 1024,
                "the staging buffers are static shared memory: at most 48 KB a block");
};

}  // namespace ot_flow::cuda::engine
