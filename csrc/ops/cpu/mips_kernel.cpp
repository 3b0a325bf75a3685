// CPU kernel of ot_flow::mips: the GEMM tiles of lse (tiling.h) with a selection instead of a
// log-sum-exp. A tile row is scanned only when its (vectorised) maximum beats the row's k-th
// best so far, which after the first tiles is rare; top-1 then just locates that maximum.
// The column chunks' lists are merged in a fixed order, so results do not depend on the
// thread count, and ties go to the lowest column everywhere.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../mips.h"
#include "../top_k_list.h"
#include "tiling.h"

namespace ot_flow {
namespace {

template <typename scalar_t>
void mips_cpu_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& bias, int64_t k,
                   at::Tensor& values, at::Tensor& indices) {
  using namespace cpu;
  constexpr scalar_t kLowest = -std::numeric_limits<scalar_t>::infinity();
  const TilePlan plan = TilePlan::make(x.size(0), y.size(0));
  const int64_t n = plan.n;
  std::vector<scalar_t> part_values(plan.col_chunks * n * k, kLowest);
  std::vector<int64_t> part_indices(plan.col_chunks * n * k, -1);

  parallel_tasks(plan, [&](int64_t task_begin, int64_t task_end) {
    at::Tensor buffer = at::empty({kRowBlock * kColTile}, x.options());
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t r0 = plan.row_begin(task), rows = plan.rows(task);
      const at::Tensor x_block = x.narrow(0, r0, rows);
      const int64_t list0 = (plan.chunk(task) * n + r0) * k;
      for (int64_t tile = plan.tile_begin(task); tile < plan.tile_end(task); ++tile) {
        const int64_t c0 = plan.col_begin(tile), cols = plan.cols(tile);
        const at::Tensor logits = logits_tile(buffer, x_block, y, bias, 1.0, c0, cols);
        const scalar_t* v = logits.const_data_ptr<scalar_t>();
        for (int64_t i = 0; i < rows; ++i, v += cols) {
          scalar_t* best = part_values.data() + list0 + i * k;
          int64_t* best_j = part_indices.data() + list0 + i * k;
          const scalar_t tile_max = row_max(v, cols);
          if (!(tile_max > best[k - 1])) continue;  // nothing here beats the k-th (or all -inf)
          if (k == 1) {
            // Bounded: a scan for a maximum that is not found must stop at the row's end, not
            // read on past the tile (the first suspect of issue #16's crash; see mips_kernel.cu).
            const int64_t j = std::find(v, v + cols, tile_max) - v;
            if (j < cols) {
              best[0] = tile_max;
              best_j[0] = c0 + j;
            }
            continue;
          }
          for (int64_t j = 0; j < cols; ++j) {
            if (v[j] > best[k - 1]) top_k_insert(best, best_j, k, v[j], c0 + j);
          }
        }
      }
    }
  });

  scalar_t* out_values = values.data_ptr<scalar_t>();
  int64_t* out_indices = indices.data_ptr<int64_t>();
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t* best = out_values + i * k;
      int64_t* best_j = out_indices + i * k;
      std::fill(best, best + k, kLowest);
      std::fill(best_j, best_j + k, int64_t{-1});
      for (int64_t c = 0; c < plan.col_chunks; ++c) {
        const int64_t list = (c * n + i) * k;
        for (int64_t e = 0; e < k; ++e) top_k_insert(best, best_j, k, part_values[list + e], part_indices[list + e]);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mips_cpu_kernel(const at::Tensor& x, const at::Tensor& y,
                                                   const at::Tensor& bias, int64_t k) {
  at::Tensor values = at::empty({x.size(0), k}, x.options());
  at::Tensor indices = at::empty({x.size(0), k}, x.options().dtype(at::kLong));
  // Detached for the same reason as lse: the tiles run on worker threads.
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_flow_mips_cpu", [&] {
    mips_cpu_impl<scalar_t>(x.detach(), y.detach(), bias.detach(), k, values, indices);
  });
  return {values, indices};
}

}  // namespace ot_flow
