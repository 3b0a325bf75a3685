// CPU kernel of ot_flow::lse: each task computes one tile of biased dot products at a time
// with a GEMM (addmm folds the bias and the scale in) and folds it into an online
// (max, sum-of-exp) per row; the column chunks' partial pairs are merged in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../lse.h"
#include "tiling.h"

namespace ot_flow {
namespace {

template <typename scalar_t>
void lse_cpu_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double scale,
                  at::Tensor& out) {
  using namespace cpu;
  const TilePlan plan = TilePlan::make(x.size(0), y.size(0));
  const int64_t n = plan.n;
  std::vector<double> part_max(plan.col_chunks * n, kNegInf);
  std::vector<double> part_sum(plan.col_chunks * n, 0.0);

  parallel_tasks(plan, [&](int64_t task_begin, int64_t task_end) {
    at::Tensor buffer = at::empty({kRowBlock * kColTile}, x.options());
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t r0 = plan.row_begin(task), rows = plan.rows(task);
      const at::Tensor x_block = x.narrow(0, r0, rows);
      double* run_max = part_max.data() + plan.chunk(task) * n + r0;
      double* run_sum = part_sum.data() + plan.chunk(task) * n + r0;
      for (int64_t tile = plan.tile_begin(task); tile < plan.tile_end(task); ++tile) {
        const int64_t cols = plan.cols(tile);
        const at::Tensor logits = logits_tile(buffer, x_block, y, h, scale, plan.col_begin(tile), cols);
        const scalar_t* v = logits.const_data_ptr<scalar_t>();
        for (int64_t i = 0; i < rows; ++i, v += cols) {
          const scalar_t tile_max = row_max(v, cols);
          if (tile_max == -std::numeric_limits<scalar_t>::infinity()) continue;
          merge_lse(run_max[i], run_sum[i], tile_max, row_sum_exp(v, cols, tile_max));
        }
      }
    }
  });

  scalar_t* o = out.data_ptr<scalar_t>();
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double max = kNegInf, sum = 0.0;
      for (int64_t c = 0; c < plan.col_chunks; ++c) merge_lse(max, sum, part_max[c * n + i], part_sum[c * n + i]);
      o[i] = static_cast<scalar_t>(max == kNegInf ? kNegInf : max + std::log(sum));
    }
  });
}

}  // namespace

at::Tensor lse_cpu_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                          double scale) {
  at::Tensor out = at::empty({x.size(0)}, x.options());
  // Detached: the tiles' ATen calls run on worker threads, which do not inherit the
  // "below autograd" dispatch state, and must not see inputs that require grad.
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_flow_lse_cpu", [&] {
    lse_cpu_impl<scalar_t>(x.detach(), y.detach(), h.detach(), scale, out);
  });
  return out;
}

}  // namespace ot_flow
