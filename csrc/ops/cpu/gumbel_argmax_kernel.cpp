// CPU kernel of ot_flow::gumbel_argmax: the tiles of lse (tiling.h), each row of a tile
// scanned for the elements that can still win. An element is a candidate only when its logit
// plus the largest possible noise reaches both the row's running best and the tile's best
// logit plus the smallest possible noise (gumbel_noise.h); only candidates draw their noise,
// a handful per row at low entropy, a third of the row at E = 0.2, in one vectorised batch. The column chunks' (value, index) pairs are then
// merged in chunk order, so ties go to the lowest column whatever the thread count. Batched
// calls run the problems as the outer task dimension (tiling.h), each with its own key.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../gumbel_argmax.h"
#include "../gumbel_noise.h"
#include "tiling.h"

namespace ot_flow {
namespace {

// draws[e] = G(row, col0 + candidates[e]): a loop the compiler vectorises (Philox and the
// logarithm are plain integer and floating-point arithmetic).
void draw_noise(NoiseKey key, int64_t row, int64_t col0, const int64_t* candidates, int64_t count,
                double* draws) {
#pragma omp simd
  for (int64_t e = 0; e < count; ++e) {
    draws[e] = gumbel_noise(key, static_cast<uint64_t>(row), static_cast<uint64_t>(col0 + candidates[e]));
  }
}

// x (B, n, d), y (B, m, d), h (B, m); index, value (B, n); problem b with scales[b], keys[b].
template <typename scalar_t>
void gumbel_argmax_cpu_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& h,
                            const std::vector<double>& scales, const std::vector<GumbelKey>& keys,
                            at::Tensor& index, at::Tensor& value) {
  using namespace cpu;
  const TilePlan plan = TilePlan::make(x.size(1), y.size(1), x.size(0));
  const int64_t n = plan.n, slots = plan.batch * plan.col_chunks;
  std::vector<double> part_value(slots * n, kNegInf);
  std::vector<int64_t> part_index(slots * n, -1);

  std::vector<NoiseKey> noises;
  for (const GumbelKey& key : keys) noises.push_back(noise_key(key.seed, key.offset));
  parallel_tasks(plan, [&](int64_t task_begin, int64_t task_end) {
    at::Tensor buffer = at::empty({kRowBlock * kColTile}, x.options());
    std::vector<int64_t> candidates(kColTile);
    std::vector<double> draws(kColTile);
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t b = plan.problem(task), r0 = plan.row_begin(task), rows = plan.rows(task);
      const GumbelKey& key = keys[b];
      const NoiseKey noise = noises[b];
      const at::Tensor x_block = x[b].narrow(0, r0, rows);
      const at::Tensor yb = y[b], hb = h[b];
      double* best = part_value.data() + plan.slot(task) * n + r0;
      int64_t* best_j = part_index.data() + plan.slot(task) * n + r0;
      for (int64_t tile = plan.tile_begin(task); tile < plan.tile_end(task); ++tile) {
        const int64_t c0 = plan.col_begin(tile), cols = plan.cols(tile);
        const at::Tensor logits = logits_tile(buffer, x_block, yb, hb, scales[b], c0, cols);
        const scalar_t* v = logits.const_data_ptr<scalar_t>();
        for (int64_t i = 0; i < rows; ++i, v += cols) {
          const double tile_max = row_max(v, cols);
          if (tile_max == kNegInf) continue;
          const double bound = std::max(best[i], tile_max + kGumbelMin) - kGumbelMax;
          int64_t count = 0;
          for (int64_t j = 0; j < cols; ++j) {
            candidates[count] = j;
            count += v[j] >= bound;
          }
          draw_noise(noise, key.row_offset + r0 + i, key.col_offset + c0, candidates.data(), count, draws.data());
          for (int64_t e = 0; e < count; ++e) {
            const double perturbed = v[candidates[e]] + draws[e];
            if (perturbed > best[i]) {
              best[i] = perturbed;
              best_j[i] = c0 + candidates[e];
            }
          }
        }
      }
    }
  });

  int64_t* out_index = index.data_ptr<int64_t>();
  double* out_value = value.data_ptr<double>();
  at::parallel_for(0, plan.batch * n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t first = r / n * plan.col_chunks * n + r % n;  // chunk 0 of row r
      double v = kNegInf;
      int64_t j = -1;
      for (int64_t c = 0; c < plan.col_chunks; ++c) {
        if (part_value[first + c * n] > v) {
          v = part_value[first + c * n];
          j = part_index[first + c * n];
        }
      }
      out_value[r] = v;
      out_index[r] = j;
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gumbel_argmax_cpu_batched_kernel(const at::Tensor& x, const at::Tensor& y,
                                                                    const at::Tensor& h,
                                                                    const std::vector<double>& scales,
                                                                    const std::vector<GumbelKey>& keys) {
  at::Tensor index = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kLong));
  at::Tensor value = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kDouble));
  // Detached for the same reason as lse: the tiles run on worker threads.
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ot_flow_gumbel_argmax_cpu", [&] {
    gumbel_argmax_cpu_impl<scalar_t>(x.detach(), y.detach(), h.detach(), scales, keys, index, value);
  });
  return {index, value};
}

std::tuple<at::Tensor, at::Tensor> gumbel_argmax_cpu_kernel(const at::Tensor& x, const at::Tensor& y,
                                                            const at::Tensor& h, double scale,
                                                            const GumbelKey& key) {
  auto [index, value] = gumbel_argmax_cpu_batched_kernel(x.unsqueeze(0), y.unsqueeze(0), h.unsqueeze(0), {scale},
                                                         {key});
  return {index[0], value[0]};
}

}  // namespace ot_flow
