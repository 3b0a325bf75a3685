// CPU kernel of ot_flow::barycentric, flash-attention style: per tile, the logits come from
// one GEMM, are turned into exp(logit - running max) in place, and a second GEMM adds
// weights @ values into the running accumulator, which is rescaled whenever a row's max
// grows. Column chunks keep partial (max, sum, accumulator) and are merged in a fixed order.
// Batched calls run the problems as the outer task dimension (tiling.h); a 2-D call is the
// batch of one.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../barycentric.h"
#include "tiling.h"

namespace ot_flow {
namespace {

// x (B, n, d), y (B, m, d), h (B, m), values (B, m, k); out (B, n, k), lse (B, n).
template <typename scalar_t>
void barycentric_cpu_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                          const std::vector<double>& scales, const at::Tensor& values, at::Tensor& out,
                          at::Tensor& lse) {
  using namespace cpu;
  const TilePlan plan = TilePlan::make(x.size(1), y.size(1), x.size(0));
  const int64_t n = plan.n, k = values.size(2), slots = plan.batch * plan.col_chunks;
  std::vector<double> part_max(slots * n, kNegInf);
  std::vector<double> part_sum(slots * n, 0.0);
  // Problem b's accumulators start on a 64-byte boundary, laid out as in the 2-D call (chunk c
  // at c * n * k): the BLAS rounds by its operands' alignment, and problem b must get the bits
  // of the 2-D call on it.
  const int64_t align = std::max<int64_t>(1, 64 / static_cast<int64_t>(sizeof(scalar_t)));
  const int64_t problem_stride = (plan.col_chunks * n * k + align - 1) / align * align;
  at::Tensor part_acc = at::zeros({plan.batch * problem_stride}, x.options());
  const auto acc_offset = [&](int64_t b, int64_t chunk) { return b * problem_stride + chunk * n * k; };

  parallel_tasks(plan, [&](int64_t task_begin, int64_t task_end) {
    at::Tensor buffer = at::empty({kRowBlock * kColTile}, x.options());
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t b = plan.problem(task), r0 = plan.row_begin(task), rows = plan.rows(task);
      const int64_t slot = plan.slot(task);
      const at::Tensor x_block = x[b].narrow(0, r0, rows);
      const at::Tensor yb = y[b], hb = h[b], vb = values[b];
      at::Tensor acc = part_acc.narrow(0, acc_offset(b, plan.chunk(task)), n * k).view({n, k}).narrow(0, r0, rows);
      scalar_t* acc_data = acc.data_ptr<scalar_t>();
      double* run_max = part_max.data() + slot * n + r0;
      double* run_sum = part_sum.data() + slot * n + r0;
      for (int64_t tile = plan.tile_begin(task); tile < plan.tile_end(task); ++tile) {
        const int64_t c0 = plan.col_begin(tile), cols = plan.cols(tile);
        at::Tensor weights = logits_tile(buffer, x_block, yb, hb, scales[b], c0, cols);
        scalar_t* w = weights.data_ptr<scalar_t>();
        for (int64_t i = 0; i < rows; ++i, w += cols) {
          const double tile_max = row_max(w, cols);
          const double new_max = std::max(run_max[i], tile_max);
          if (new_max == kNegInf) {  // no live column yet: this row contributes nothing
            std::fill(w, w + cols, scalar_t(0));
            continue;
          }
          const double factor = run_max[i] == kNegInf ? 0.0 : std::exp(run_max[i] - new_max);
          if (factor != 1.0) {
            scalar_t* a = acc_data + i * k;
            for (int64_t c = 0; c < k; ++c) a[c] *= static_cast<scalar_t>(factor);
          }
          run_sum[i] = run_sum[i] * factor + row_exp_inplace(w, cols, static_cast<scalar_t>(new_max));
          run_max[i] = new_max;
        }
        acc.addmm_(weights, vb.narrow(0, c0, cols));
      }
    }
  });

  // Merge the chunks of row r = b * n + i: out_r = sum_c acc_c,r e^{max_c,r - M_r} / sum_c sum_c,r e^{max_c,r - M_r}.
  scalar_t* o = out.data_ptr<scalar_t>();
  scalar_t* l = lse.data_ptr<scalar_t>();
  const scalar_t* pa = part_acc.const_data_ptr<scalar_t>();
  at::parallel_for(0, plan.batch * n, 256, [&](int64_t begin, int64_t end) {
    std::vector<double> row(k);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t first = r / n * plan.col_chunks * n + r % n;  // part index of chunk 0 of row r
      double max = kNegInf;
      for (int64_t c = 0; c < plan.col_chunks; ++c) max = std::max(max, part_max[first + c * n]);
      std::fill(row.begin(), row.end(), 0.0);
      if (max == kNegInf) {
        l[r] = static_cast<scalar_t>(kNegInf);
        for (int64_t j = 0; j < k; ++j) o[r * k + j] = 0;
        continue;
      }
      double sum = 0.0;
      for (int64_t c = 0; c < plan.col_chunks; ++c) {
        const int64_t at = first + c * n;
        if (part_max[at] == kNegInf) continue;
        const double factor = std::exp(part_max[at] - max);
        sum += part_sum[at] * factor;
        const scalar_t* a = pa + acc_offset(r / n, c) + (r % n) * k;
        for (int64_t j = 0; j < k; ++j) row[j] += a[j] * factor;
      }
      l[r] = static_cast<scalar_t>(max + std::log(sum));
      for (int64_t j = 0; j < k; ++j) o[r * k + j] = static_cast<scalar_t>(row[j] / sum);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> barycentric_cpu_batched_kernel(const at::Tensor& x, const at::Tensor& y,
                                                                  const at::Tensor& h,
                                                                  const std::vector<double>& scales,
                                                                  const at::Tensor& values) {
  at::Tensor out = at::empty({x.size(0), x.size(1), values.size(2)}, x.options());
  at::Tensor lse = at::empty({x.size(0), x.size(1)}, x.options());
  // Detached for the reason given in lse_kernel.cpp.
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_flow_barycentric_cpu", [&] {
    barycentric_cpu_impl<scalar_t>(x.detach(), y.detach(), h.detach(), scales, values.detach(), out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> barycentric_cpu_kernel(const at::Tensor& x, const at::Tensor& y,
                                                          const at::Tensor& h, double scale,
                                                          const at::Tensor& values) {
  auto [out, lse] = barycentric_cpu_batched_kernel(x.unsqueeze(0), y.unsqueeze(0), h.unsqueeze(0), {scale},
                                                   values.unsqueeze(0));
  return {out[0], lse[0]};
}

}  // namespace ot_flow
