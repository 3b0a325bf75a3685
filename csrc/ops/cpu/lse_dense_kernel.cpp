// CPU kernel of ot_flow::lse_dense. Along rows (dim = 1) each row is two vectorised passes
// (max, then sum of exp) over its m entries. Along columns (dim = 0) a task owns a strip of
// kStripCols columns and walks the rows in blocks: a vectorised column max over the block,
// one rescale per column, then the vectorised sum of exp, so there is one exp per entry and
// the strip stays in cache. Both are split by sizes only, so results do not depend on the
// thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../lse_dense.h"
#include "tiling.h"

namespace ot_flow {
namespace {

using cpu::kNegInf;

constexpr int64_t kStripCols = 256;
constexpr int64_t kBlockRows = 32;
constexpr int64_t kSumChunk = 1024;  // float partial sums are folded into double this often

template <typename scalar_t>
scalar_t biased_max(const scalar_t* d, const scalar_t* h, int64_t len, scalar_t s) {
  scalar_t best = -std::numeric_limits<scalar_t>::infinity();
#pragma omp simd reduction(max : best)
  for (int64_t j = 0; j < len; ++j) {
    const scalar_t v = s * d[j] + h[j];
    best = v > best ? v : best;
  }
  return best;
}

template <typename scalar_t>
scalar_t biased_sum_exp(const scalar_t* d, const scalar_t* h, int64_t len, scalar_t s, scalar_t shift) {
  scalar_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < len; ++j) total += fast_exp(s * d[j] + h[j] - shift);
  return total;
}

template <typename scalar_t>
void rows_impl(const scalar_t* dots, const scalar_t* h, int64_t n, int64_t m, scalar_t s, scalar_t* out) {
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* row = dots + i * m;
      const scalar_t best = biased_max(row, h, m, s);
      if (best == -std::numeric_limits<scalar_t>::infinity()) {
        out[i] = best;
        continue;
      }
      double total = 0;
      for (int64_t c0 = 0; c0 < m; c0 += kSumChunk) {
        total += biased_sum_exp(row + c0, h + c0, std::min(kSumChunk, m - c0), s, best);
      }
      out[i] = static_cast<scalar_t>(best + std::log(total));
    }
  });
}

template <typename scalar_t>
void columns_impl(const scalar_t* dots, const scalar_t* h, int64_t n, int64_t m, scalar_t s, scalar_t* out) {
  const int64_t strips = (m + kStripCols - 1) / kStripCols;
  at::parallel_for(0, strips, 1, [&](int64_t strip_begin, int64_t strip_end) {
    std::vector<scalar_t> run_max(kStripCols), block_max(kStripCols), shift(kStripCols), block_sum(kStripCols);
    std::vector<double> run_sum(kStripCols);
    for (int64_t strip = strip_begin; strip < strip_end; ++strip) {
      const int64_t c0 = strip * kStripCols, width = std::min(kStripCols, m - c0);
      std::fill(run_max.begin(), run_max.end(), -std::numeric_limits<scalar_t>::infinity());
      std::fill(run_sum.begin(), run_sum.end(), 0.0);
      for (int64_t r0 = 0; r0 < n; r0 += kBlockRows) {
        const int64_t r1 = std::min(n, r0 + kBlockRows);
        std::copy(run_max.begin(), run_max.end(), block_max.begin());
        for (int64_t i = r0; i < r1; ++i) {
          const scalar_t* row = dots + i * m + c0;
          const scalar_t hi = h[i];
          scalar_t* bm = block_max.data();
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) {
            const scalar_t v = s * row[c] + hi;
            bm[c] = v > bm[c] ? v : bm[c];
          }
        }
        for (int64_t c = 0; c < width; ++c) {
          if (block_max[c] > run_max[c]) {
            // Before any mass the sum holds only clamped exps of -inf (about 1e-38 each): drop them.
            run_sum[c] = run_max[c] == -std::numeric_limits<scalar_t>::infinity()
                             ? 0.0
                             : run_sum[c] * std::exp(double(run_max[c]) - block_max[c]);
            run_max[c] = block_max[c];
          }
          // A column with no mass yet keeps shift 0; its max stays -inf and so does its result.
          shift[c] = run_max[c] == -std::numeric_limits<scalar_t>::infinity() ? scalar_t(0) : run_max[c];
          block_sum[c] = 0;
        }
        for (int64_t i = r0; i < r1; ++i) {
          const scalar_t* row = dots + i * m + c0;
          const scalar_t hi = h[i];
          scalar_t* bs = block_sum.data();
          const scalar_t* sh = shift.data();
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) bs[c] += fast_exp(s * row[c] + hi - sh[c]);
        }
        for (int64_t c = 0; c < width; ++c) run_sum[c] += block_sum[c];
      }
      for (int64_t c = 0; c < width; ++c) {
        out[c0 + c] = run_max[c] == -std::numeric_limits<scalar_t>::infinity()
                          ? run_max[c]
                          : static_cast<scalar_t>(run_max[c] + std::log(run_sum[c]));
      }
    }
  });
}

}  // namespace

at::Tensor lse_dense_cpu_kernel(const at::Tensor& dots, const at::Tensor& h, double scale, int64_t dim) {
  const int64_t n = dots.size(0), m = dots.size(1);
  at::Tensor out = at::empty({dim == 1 ? n : m}, dots.options());
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "ot_flow_lse_dense_cpu", [&] {
    const scalar_t* d = dots.const_data_ptr<scalar_t>();
    const scalar_t* hp = h.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    if (dim == 1) {
      rows_impl<scalar_t>(d, hp, n, m, static_cast<scalar_t>(scale), o);
    } else {
      columns_impl<scalar_t>(d, hp, n, m, static_cast<scalar_t>(scale), o);
    }
  });
  return out;
}

}  // namespace ot_flow
