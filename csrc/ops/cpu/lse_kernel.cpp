// CPU kernel of ot_flow::lse: each task computes one tile of biased dot products at a time
// with a GEMM (addmm folds the bias and the scale in) and folds it into an online
// (max, sum-of-exp) per row; the column chunks' partial pairs are merged in a fixed order.
// Batched calls run the problems as the outer task dimension (tiling.h); a 2-D call is the
// batch of one.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../lse.h"
#include "tiling.h"

namespace ot_flow {
namespace {

// x (B, n, d), y (B, m, d), h (B, m), out (B, n).
template <typename scalar_t>
void lse_cpu_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, const std::vector<double>& scales,
                  at::Tensor& out) {
  using namespace cpu;
  const TilePlan plan = TilePlan::make(x.size(1), y.size(1), x.size(0));
  const int64_t n = plan.n, slots = plan.batch * plan.col_chunks;
  std::vector<double> part_max(slots * n, kNegInf);
  std::vector<double> part_sum(slots * n, 0.0);

  parallel_tasks(plan, [&](int64_t task_begin, int64_t task_end) {
    at::Tensor buffer = at::empty({kRowBlock * kColTile}, x.options());
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t b = plan.problem(task), r0 = plan.row_begin(task), rows = plan.rows(task);
      const at::Tensor x_block = x[b].narrow(0, r0, rows);
      const at::Tensor yb = y[b], hb = h[b];
      double* run_max = part_max.data() + plan.slot(task) * n + r0;
      double* run_sum = part_sum.data() + plan.slot(task) * n + r0;
      for (int64_t tile = plan.tile_begin(task); tile < plan.tile_end(task); ++tile) {
        const int64_t cols = plan.cols(tile);
        const at::Tensor logits = logits_tile(buffer, x_block, yb, hb, scales[b], plan.col_begin(tile), cols);
        const scalar_t* v = logits.const_data_ptr<scalar_t>();
        for (int64_t i = 0; i < rows; ++i, v += cols) {
          const scalar_t tile_max = row_max(v, cols);
          if (tile_max == -std::numeric_limits<scalar_t>::infinity()) continue;
          merge_lse(run_max[i], run_sum[i], tile_max, row_sum_exp(v, cols, tile_max));
        }
      }
    }
  });

  // Row r = b * n + i of out, from the chunks (b, 0), (b, 1), ... in order.
  scalar_t* o = out.data_ptr<scalar_t>();
  at::parallel_for(0, plan.batch * n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / n, i = r % n;
      double max = kNegInf, sum = 0.0;
      for (int64_t c = 0; c < plan.col_chunks; ++c) {
        const int64_t at = (b * plan.col_chunks + c) * n + i;
        merge_lse(max, sum, part_max[at], part_sum[at]);
      }
      o[r] = static_cast<scalar_t>(max == kNegInf ? kNegInf : max + std::log(sum));
    }
  });
}

}  // namespace

at::Tensor lse_cpu_batched_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                                  const std::vector<double>& scales) {
  at::Tensor out = at::empty({x.size(0), x.size(1)}, x.options());
  // Detached: the tiles' ATen calls run on worker threads, which do not inherit the
  // "below autograd" dispatch state, and must not see inputs that require grad.
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_flow_lse_cpu", [&] {
    lse_cpu_impl<scalar_t>(x.detach(), y.detach(), h.detach(), scales, out);
  });
  return out;
}

at::Tensor lse_cpu_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                          double scale) {
  return lse_cpu_batched_kernel(x.unsqueeze(0), y.unsqueeze(0), h.unsqueeze(0), {scale})[0];
}

}  // namespace ot_flow
