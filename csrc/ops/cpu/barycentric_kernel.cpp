// CPU kernel of ot_flow::barycentric, flash-attention style: per tile, the logits come from
// one GEMM, are turned into exp(logit - running max) in place, and a second GEMM adds
// weights @ values into the running accumulator, which is rescaled whenever a row's max
// grows. Column chunks keep partial (max, sum, accumulator) and are merged in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../barycentric.h"
#include "tiling.h"

namespace ot_flow {
namespace {

template <typename scalar_t>
void barycentric_cpu_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h, double scale,
                          const at::Tensor& values, at::Tensor& out, at::Tensor& lse) {
  using namespace cpu;
  const TilePlan plan = TilePlan::make(x.size(0), y.size(0));
  const int64_t n = plan.n, k = values.size(1);
  std::vector<double> part_max(plan.col_chunks * n, kNegInf);
  std::vector<double> part_sum(plan.col_chunks * n, 0.0);
  at::Tensor part_acc = at::zeros({plan.col_chunks, n, k}, x.options());

  parallel_tasks(plan, [&](int64_t task_begin, int64_t task_end) {
    at::Tensor buffer = at::empty({kRowBlock * kColTile}, x.options());
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t r0 = plan.row_begin(task), rows = plan.rows(task), chunk = plan.chunk(task);
      const at::Tensor x_block = x.narrow(0, r0, rows);
      at::Tensor acc = part_acc[chunk].narrow(0, r0, rows);
      scalar_t* acc_data = acc.data_ptr<scalar_t>();
      double* run_max = part_max.data() + chunk * n + r0;
      double* run_sum = part_sum.data() + chunk * n + r0;
      for (int64_t tile = plan.tile_begin(task); tile < plan.tile_end(task); ++tile) {
        const int64_t c0 = plan.col_begin(tile), cols = plan.cols(tile);
        at::Tensor weights = logits_tile(buffer, x_block, y, h, scale, c0, cols);
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
        acc.addmm_(weights, values.narrow(0, c0, cols));
      }
    }
  });

  // Merge the chunks: out_i = sum_c acc_c,i e^{max_c,i - M_i} / sum_c sum_c,i e^{max_c,i - M_i}.
  scalar_t* o = out.data_ptr<scalar_t>();
  scalar_t* l = lse.data_ptr<scalar_t>();
  const scalar_t* pa = part_acc.const_data_ptr<scalar_t>();
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    std::vector<double> row(k);
    for (int64_t i = begin; i < end; ++i) {
      double max = kNegInf;
      for (int64_t c = 0; c < plan.col_chunks; ++c) max = std::max(max, part_max[c * n + i]);
      std::fill(row.begin(), row.end(), 0.0);
      if (max == kNegInf) {
        l[i] = static_cast<scalar_t>(kNegInf);
        for (int64_t j = 0; j < k; ++j) o[i * k + j] = 0;
        continue;
      }
      double sum = 0.0;
      for (int64_t c = 0; c < plan.col_chunks; ++c) {
        if (part_max[c * n + i] == kNegInf) continue;
        const double factor = std::exp(part_max[c * n + i] - max);
        sum += part_sum[c * n + i] * factor;
        const scalar_t* a = pa + (c * n + i) * k;
        for (int64_t j = 0; j < k; ++j) row[j] += a[j] * factor;
      }
      l[i] = static_cast<scalar_t>(max + std::log(sum));
      for (int64_t j = 0; j < k; ++j) o[i * k + j] = static_cast<scalar_t>(row[j] / sum);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> barycentric_cpu_kernel(const at::Tensor& x, const at::Tensor& y,
                                                          const at::Tensor& h, double scale,
                                                          const at::Tensor& values) {
  at::Tensor out = at::empty({x.size(0), values.size(1)}, x.options());
  at::Tensor lse = at::empty({x.size(0)}, x.options());
  // Detached for the reason given in lse_kernel.cpp.
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_flow_barycentric_cpu", [&] {
    barycentric_cpu_impl<scalar_t>(x.detach(), y.detach(), h.detach(), scale, values.detach(), out, lse);
  });
  return {out, lse};
}

}  // namespace ot_flow
