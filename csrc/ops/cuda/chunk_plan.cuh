// How a streaming launch splits its columns: when the row blocks alone give too few blocks to
// fill the GPU, the columns are cut into chunks (blockIdx.y) whose partial results a second
// kernel merges. Shared by the FMA kernels and the tensor-core engine.
#pragma once

#include <cstdint>

namespace ot_flow::cuda {

struct ChunkPlan {
  int64_t row_blocks, chunks, cols_per_chunk;
};

// Column chunks so that row blocks x chunks fill the GPU about twice; each chunk covers whole
// column tiles of block_cols.
inline ChunkPlan plan_chunks(int64_t n, int64_t m, int multiprocessors, int64_t block_rows,
                             int64_t block_cols) {
  const int64_t row_blocks = (n + block_rows - 1) / block_rows;
  const int64_t col_tiles = (m + block_cols - 1) / block_cols;
  const int64_t target_blocks = 2 * static_cast<int64_t>(multiprocessors);
  int64_t chunks = (target_blocks + row_blocks - 1) / row_blocks;
  chunks = chunks < 1 ? 1 : (chunks > col_tiles ? col_tiles : chunks);
  chunks = chunks > 65535 ? 65535 : chunks;
  const int64_t tiles_per_chunk = (col_tiles + chunks - 1) / chunks;
  chunks = (col_tiles + tiles_per_chunk - 1) / tiles_per_chunk;
  return {row_blocks, chunks, tiles_per_chunk * block_cols};
}

}  // namespace ot_flow::cuda
