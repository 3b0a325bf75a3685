// How a streaming launch splits its columns: when the row blocks alone give too few blocks to
// fill the GPU, the columns are cut into chunks (blockIdx.y) whose partial results a second
// kernel merges. The FMA kernels' rule and the tensor-core engine's.
#pragma once

#include <cstdint>

namespace ot_flow::cuda {

struct ChunkPlan {
  int64_t row_blocks, chunks, cols_per_chunk;
};

namespace detail {

// Whole column tiles of block_cols per chunk, about `chunks` chunks (fewer where the tiles divide
// so), at least one and at most grid y's 65,535.
inline ChunkPlan cut_columns(int64_t row_blocks, int64_t m, int64_t chunks, int64_t block_cols) {
  const int64_t col_tiles = (m + block_cols - 1) / block_cols;
  chunks = chunks < 1 ? 1 : (chunks > col_tiles ? col_tiles : chunks);
  chunks = chunks > 65535 ? 65535 : chunks;
  const int64_t tiles_per_chunk = (col_tiles + chunks - 1) / chunks;
  chunks = (col_tiles + tiles_per_chunk - 1) / tiles_per_chunk;
  return {row_blocks, chunks, tiles_per_chunk * block_cols};
}

}  // namespace detail

// Column chunks so that row blocks x chunks fill the GPU about twice; each chunk covers whole
// column tiles of block_cols. (The FMA kernels'.)
inline ChunkPlan plan_chunks(int64_t n, int64_t m, int multiprocessors, int64_t block_rows,
                             int64_t block_cols) {
  const int64_t row_blocks = (n + block_rows - 1) / block_rows;
  const int64_t target_blocks = 2 * static_cast<int64_t>(multiprocessors);
  return detail::cut_columns(row_blocks, m, (target_blocks + row_blocks - 1) / row_blocks, block_cols);
}

// The engine's: as many column chunks as keep row blocks x chunks within one wave of the GPU's
// `slots` resident blocks (multiprocessors x the kernel's blocks per multiprocessor), at least
// one. Every block of a launch does the same work, so a launch takes as long as its number of
// waves rounded up: 4,096 mips queries (64 row blocks) in five chunks are 320 blocks, 1.2 waves
// of 264 slots that cost two; in four, 256 blocks and one. Row blocks beyond one wave keep
// one chunk (1,024 of them, n = 65,536, are 1.94 waves of 528).
inline ChunkPlan plan_chunks_in_one_wave(int64_t n, int64_t m, int64_t slots, int64_t block_rows,
                                         int64_t block_cols) {
  const int64_t row_blocks = (n + block_rows - 1) / block_rows;
  return detail::cut_columns(row_blocks, m, row_blocks == 0 ? 1 : slots / row_blocks, block_cols);
}

}  // namespace ot_flow::cuda
