// CPU kernel of ot_flow::lse_dense, for B problems (a 2-D call is B = 1). Along rows (dim = 1) a row is two vectorised passes (max,
// then sum of exp) over its m entries. Along columns (dim = 0) a task owns a strip of
// columns and walks the rows in blocks: a vectorised column max over the block,
// one rescale per column, then the vectorised sum of exp, so there is one exp per entry and
// the strip stays in cache.
//
// With a shift hint (the previous Sinkhorn iterate's result, which moves little between
// iterations) the max pass is skipped: one pass sums exp(v - shift), and only a row or strip
// whose sum leaves a safe range (kSafe*: no overflow, and the clamped exps of fast_exp far
// below rounding) is recomputed with the two-pass method. Every row's and column's sum runs in
// the same order whatever the split, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../lse_dense.h"
#include "tiling.h"

namespace ot_flow {
namespace {

// Strips as wide as the thread count allows (wide strips read long runs of each row: about
// 2x faster than 256 columns at m = 4096), down to 64 columns, so that small matrices still use
// every thread (m = 256 on two threads: 25-30 us a call against 42-52 in one strip); a column's
// sum is the same for any width.
constexpr int64_t kMinStripCols = 64;
constexpr int64_t kMaxStripCols = 2048;
constexpr int64_t kBlockRows = 32;
constexpr int64_t kSumChunk = 1024;  // float partial sums are folded into double this often

template <typename scalar_t>
struct SafeSum;  // sums of exp(v - shift) accepted without a max pass
template <>
struct SafeSum<float> {
  static constexpr double lo = 1e-20, hi = 1e20;
};
template <>
struct SafeSum<double> {
  static constexpr double lo = 1e-200, hi = 1e200;
};

template <typename scalar_t>
bool safe(double total) {
  return total >= SafeSum<scalar_t>::lo && total <= SafeSum<scalar_t>::hi;
}

template <typename scalar_t>
constexpr scalar_t neg_inf() {
  return -std::numeric_limits<scalar_t>::infinity();
}

template <typename scalar_t>
scalar_t biased_max(const scalar_t* d, const scalar_t* h, int64_t len, scalar_t s) {
  scalar_t best = neg_inf<scalar_t>();
#pragma omp simd reduction(max : best)
  for (int64_t j = 0; j < len; ++j) {
    const scalar_t v = s * d[j] + h[j];
    best = v > best ? v : best;
  }
  return best;
}

// sum_j exp(s d_j + h_j - shift), float partial sums folded into double every kSumChunk.
template <typename scalar_t>
double biased_sum_exp(const scalar_t* d, const scalar_t* h, int64_t len, scalar_t s, scalar_t shift) {
  double total = 0;
  for (int64_t c0 = 0; c0 < len; c0 += kSumChunk) {
    const int64_t c1 = std::min(len, c0 + kSumChunk);
    scalar_t part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t j = c0; j < c1; ++j) part += fast_exp(s * d[j] + h[j] - shift);
    total += part;
  }
  return total;
}

template <typename scalar_t>
scalar_t row_lse(const scalar_t* row, const scalar_t* h, int64_t m, scalar_t s, const scalar_t* hint) {
  if (hint != nullptr) {
    const double total = biased_sum_exp(row, h, m, s, *hint);
    if (safe<scalar_t>(total)) return static_cast<scalar_t>(*hint + std::log(total));
  }
  const scalar_t best = biased_max(row, h, m, s);
  if (best == neg_inf<scalar_t>()) return best;
  return static_cast<scalar_t>(best + std::log(biased_sum_exp(row, h, m, s, best)));
}

// Rows of every problem: one task dimension over the B * n rows (a row's sum does not depend
// on the split, so problem b is computed as its 2-D call).
template <typename scalar_t>
void rows_impl(const scalar_t* dots, const scalar_t* h, int64_t batch, int64_t n, int64_t m,
               const std::vector<double>& scales, const scalar_t* shift, scalar_t* out) {
  at::parallel_for(0, batch * n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / n;
      out[r] = row_lse(dots + r * m, h + b * m, m, static_cast<scalar_t>(scales[b]),
                       shift == nullptr ? nullptr : shift + r);
    }
  });
}

int64_t strip_width(int64_t m) {
  const int64_t per_thread = (m + at::get_num_threads() - 1) / at::get_num_threads();
  return std::clamp((per_thread + 63) / 64 * 64, kMinStripCols, kMaxStripCols);
}

// One strip of columns [c0, c0 + width) with a shift hint: a single pass; returns false if a
// column's sum left the safe range (the caller then runs the two-pass method).
template <typename scalar_t>
bool strip_with_shift(const scalar_t* dots, const scalar_t* h, int64_t n, int64_t m, scalar_t s,
                      const scalar_t* shift, int64_t c0, int64_t width, scalar_t* block_sum,
                      double* total, scalar_t* out) {
  std::fill(total, total + width, 0.0);
  for (int64_t r0 = 0; r0 < n; r0 += kBlockRows) {
    const int64_t r1 = std::min(n, r0 + kBlockRows);
    std::fill(block_sum, block_sum + width, scalar_t(0));
    for (int64_t i = r0; i < r1; ++i) {
      const scalar_t* row = dots + i * m + c0;
      const scalar_t hi = h[i];
      const scalar_t* sh = shift + c0;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) block_sum[c] += fast_exp(s * row[c] + hi - sh[c]);
    }
    for (int64_t c = 0; c < width; ++c) total[c] += block_sum[c];
  }
  for (int64_t c = 0; c < width; ++c) {
    if (!safe<scalar_t>(total[c])) return false;
  }
  for (int64_t c = 0; c < width; ++c) out[c0 + c] = static_cast<scalar_t>(shift[c0 + c] + std::log(total[c]));
  return true;
}

// The same strip in two passes per row block: column max, one rescale, sum of exp.
template <typename scalar_t>
void strip_two_pass(const scalar_t* dots, const scalar_t* h, int64_t n, int64_t m, scalar_t s,
                    int64_t c0, int64_t width, scalar_t* run_max, scalar_t* block_max, scalar_t* shift,
                    scalar_t* block_sum, double* run_sum, scalar_t* out) {
  std::fill(run_max, run_max + width, neg_inf<scalar_t>());
  std::fill(run_sum, run_sum + width, 0.0);
  for (int64_t r0 = 0; r0 < n; r0 += kBlockRows) {
    const int64_t r1 = std::min(n, r0 + kBlockRows);
    std::copy(run_max, run_max + width, block_max);
    for (int64_t i = r0; i < r1; ++i) {
      const scalar_t* row = dots + i * m + c0;
      const scalar_t hi = h[i];
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) {
        const scalar_t v = s * row[c] + hi;
        block_max[c] = v > block_max[c] ? v : block_max[c];
      }
    }
    for (int64_t c = 0; c < width; ++c) {
      if (block_max[c] > run_max[c]) {
        // Before any mass the sum holds only clamped exps of -inf (about 1e-38 each): drop them.
        run_sum[c] = run_max[c] == neg_inf<scalar_t>() ? 0.0 : run_sum[c] * std::exp(double(run_max[c]) - block_max[c]);
        run_max[c] = block_max[c];
      }
      // A column with no mass yet keeps shift 0; its max stays -inf and so does its result.
      shift[c] = run_max[c] == neg_inf<scalar_t>() ? scalar_t(0) : run_max[c];
      block_sum[c] = 0;
    }
    for (int64_t i = r0; i < r1; ++i) {
      const scalar_t* row = dots + i * m + c0;
      const scalar_t hi = h[i];
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) block_sum[c] += fast_exp(s * row[c] + hi - shift[c]);
    }
    for (int64_t c = 0; c < width; ++c) run_sum[c] += block_sum[c];
  }
  for (int64_t c = 0; c < width; ++c) {
    out[c0 + c] = run_max[c] == neg_inf<scalar_t>() ? run_max[c] : static_cast<scalar_t>(run_max[c] + std::log(run_sum[c]));
  }
}

// Strips of every problem: one task dimension over B * strips (a column's sum runs over the
// rows in one order whatever the strip, so problem b is computed as its 2-D call).
template <typename scalar_t>
void columns_impl(const scalar_t* dots, const scalar_t* h, int64_t batch, int64_t n, int64_t m,
                  const std::vector<double>& scales, const scalar_t* shift, scalar_t* out) {
  const int64_t strip_cols = strip_width(m);
  const int64_t strips = (m + strip_cols - 1) / strip_cols;
  at::parallel_for(0, batch * strips, 1, [&](int64_t task_begin, int64_t task_end) {
    std::vector<scalar_t> run_max(strip_cols), block_max(strip_cols), strip_shift(strip_cols), block_sum(strip_cols);
    std::vector<double> sums(strip_cols);
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t b = task / strips, strip = task % strips;
      const scalar_t* d = dots + b * n * m;
      const scalar_t* hb = h + b * n;
      const scalar_t s = static_cast<scalar_t>(scales[b]);
      scalar_t* o = out + b * m;
      const int64_t c0 = strip * strip_cols, width = std::min(strip_cols, m - c0);
      if (shift != nullptr &&
          strip_with_shift(d, hb, n, m, s, shift + b * m, c0, width, block_sum.data(), sums.data(), o)) {
        continue;
      }
      strip_two_pass(d, hb, n, m, s, c0, width, run_max.data(), block_max.data(), strip_shift.data(),
                     block_sum.data(), sums.data(), o);
    }
  });
}

}  // namespace

at::Tensor lse_dense_cpu_kernel(const at::Tensor& dots, const at::Tensor& h, const std::vector<double>& scales,
                                int64_t dim, const std::optional<at::Tensor>& shift) {
  const int64_t batch = dots.size(0), n = dots.size(1), m = dots.size(2);
  at::Tensor out = at::empty({batch, dim == 1 ? n : m}, dots.options());
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "ot_flow_lse_dense_cpu", [&] {
    const scalar_t* d = dots.const_data_ptr<scalar_t>();
    const scalar_t* hp = h.const_data_ptr<scalar_t>();
    const scalar_t* sp = shift.has_value() ? shift->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.data_ptr<scalar_t>();
    if (dim == 1) {
      rows_impl<scalar_t>(d, hp, batch, n, m, scales, sp, o);
    } else {
      columns_impl<scalar_t>(d, hp, batch, n, m, scales, sp, o);
    }
  });
  return out;
}

}  // namespace ot_flow
