// CPU kernel of ot_flow::assignment_dense: Jonker-Volgenant (LAPJV) on a dense float64 matrix.
//
// Invariant of every phase (what makes the last one exact): v is any vector of column
// potentials, and every assigned row i holds a column of least reduced cost C[i, j] - v[j].
// Then u[i] = min_j (C[i, j] - v[j]) makes (u, v) dual feasible and every assigned edge tight,
// and a Dijkstra from a free row over reduced costs augments along a shortest path and moves v
// so that the invariant holds again with one more row assigned.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <utility>
#include <vector>

#include "../assignment.h"

namespace ot_flow {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

class Lapjv {
 public:
  Lapjv(const double* cost, int64_t n, double* v) : c_(cost), n_(n), v_(v), x_(n, -1), y_(n, -1) {}

  // Column reduction (v[j] = min_i C[i, j], the argmin row takes the column when it has none
  // yet), then reduction transfer: a row holding one column lowers that column's potential by
  // its second-least reduced cost, so later bids see the true margin.
  void column_reduction() {
    std::vector<int64_t> argmin(n_, 0);
    std::copy(c_, c_ + n_, v_);
    for (int64_t i = 1; i < n_; ++i) {
      const double* row = c_ + i * n_;
      for (int64_t j = 0; j < n_; ++j) {
        const bool lower = row[j] < v_[j];
        v_[j] = lower ? row[j] : v_[j];
        argmin[j] = lower ? i : argmin[j];
      }
    }
    std::vector<int64_t> matches(n_, 0);
    for (int64_t j = n_ - 1; j >= 0; --j) {
      const int64_t i = argmin[j];
      if (matches[i]++ == 0) assign(i, j);
    }
    for (int64_t i = 0; i < n_; ++i) {
      if (matches[i] == 0) {
        free_.push_back(i);
      } else if (matches[i] == 1) {
        const int64_t j1 = x_[i];
        const double* row = c_ + i * n_;
        double least = kInf;
        for (int64_t j = 0; j < n_; ++j) {
          if (j != j1) least = std::min(least, row[j] - v_[j]);
        }
        v_[j1] -= least;
      }
    }
  }

  // Warm start from given potentials: each row takes its column of least reduced cost when
  // no earlier row has it.
  void greedy() {
    for (int64_t i = 0; i < n_; ++i) {
      const double* row = c_ + i * n_;
      int64_t best = 0;
      double least = row[0] - v_[0];
      for (int64_t j = 1; j < n_; ++j) {
        const double r = row[j] - v_[j];
        if (r < least) least = r, best = j;
      }
      if (y_[best] < 0) {
        assign(i, best);
      } else {
        free_.push_back(i);
      }
    }
  }

  // Augmenting row reduction: each free row bids for its best column, lowering its potential
  // by the margin to the second best and evicting the holder, who bids next at once. A bid
  // whose price change rounds away (margin below an ulp of v) leaves the row free for the
  // exact phase; so does everything past a budget of bids (price wars between near-equal rows).
  void augmenting_row_reduction(int64_t budget) {
    std::vector<int64_t> rows;
    rows.swap(free_);
    int64_t k = 0, bids = 0;
    const int64_t count = static_cast<int64_t>(rows.size());
    while (k < count) {
      const int64_t i = rows[k++];
      if (bids++ >= budget) {
        free_.push_back(i);
        continue;
      }
      const double* row = c_ + i * n_;
      double u1 = row[0] - v_[0], u2 = kInf;
      int64_t j1 = 0, j2 = -1;
      for (int64_t j = 1; j < n_; ++j) {
        const double r = row[j] - v_[j];
        if (r < u2) {
          if (r >= u1) {
            u2 = r, j2 = j;
          } else {
            u2 = u1, j2 = j1;
            u1 = r, j1 = j;
          }
        }
      }
      int64_t i0 = y_[j1];
      const double lowered = v_[j1] - (u2 - u1);
      if (lowered < v_[j1]) {  // a strict margin that survives rounding: take j1 at the lower price
        v_[j1] = lowered;
        assign(i, j1);
        if (i0 >= 0) rows[--k] = i0;  // the evicted row bids next
      } else if (i0 < 0) {
        assign(i, j1);  // j1 is free: no price change needed
      } else if (u1 == u2) {
        i0 = y_[j2];  // a tie: the second best is as good, take it
        assign(i, j2);
        if (i0 >= 0) free_.push_back(i0);
      } else {
        free_.push_back(i);  // the margin rounds away: leave it to the shortest paths
      }
    }
  }

  // One shortest augmenting path from free row `start` (Dijkstra over reduced costs, columns
  // finalised a whole level of equal distance at a time), then the potentials and the path.
  void augment(int64_t start) {
    std::vector<int64_t>& cols = cols_;
    std::vector<double>& d = dist_;
    std::vector<int64_t>& pred = pred_;
    const double* row0 = c_ + start * n_;
    for (int64_t j = 0; j < n_; ++j) {
      cols[j] = j;
      pred[j] = start;
      d[j] = row0[j] - v_[j];
    }
    // cols[0, ready) finalised in earlier levels, [ready, lo) scanned in this level, [lo, hi)
    // at the current least distance and not yet scanned, [hi, n) still to do.
    int64_t lo = 0, hi = 0, ready = 0, end = -1;
    double least = 0.0;
    while (end < 0) {
      if (lo == hi) {
        ready = lo;
        least = d[cols[hi]];
        hi = lo + 1;
        for (int64_t k = lo + 1; k < n_; ++k) {
          const int64_t j = cols[k];
          const double h = d[j];
          if (h <= least) {
            if (h < least) {
              hi = lo;
              least = h;
            }
            std::swap(cols[k], cols[hi++]);
          }
        }
        for (int64_t k = lo; k < hi; ++k) {
          if (y_[cols[k]] < 0) {
            end = cols[k];
            break;
          }
        }
        if (end >= 0) break;
      }
      const int64_t j1 = cols[lo++];
      const int64_t i = y_[j1];
      const double* row = c_ + i * n_;
      const double h = row[j1] - v_[j1] - least;
      for (int64_t k = hi; k < n_; ++k) {
        const int64_t j = cols[k];
        const double r = row[j] - v_[j] - h;
        if (r < d[j]) {
          d[j] = r;
          pred[j] = i;
          if (r <= least) {  // at the current distance (below it only by rounding)
            if (y_[j] < 0) {
              end = j;
              break;
            }
            std::swap(cols[k], cols[hi++]);
          }
        }
      }
    }
    for (int64_t k = 0; k < ready; ++k) {
      const int64_t j = cols[k];
      v_[j] += d[j] - least;
    }
    int64_t j = end;
    while (true) {
      const int64_t i = pred[j];
      y_[j] = i;
      const int64_t next = x_[i];
      x_[i] = j;
      if (i == start) break;
      j = next;
    }
  }

  void solve(bool warm) {
    if (warm) {
      greedy();
    } else {
      column_reduction();
    }
    for (int round = 0; round < 2 && !free_.empty(); ++round) augmenting_row_reduction(8 * n_);
    cols_.resize(n_);
    dist_.resize(n_);
    pred_.resize(n_);
    const std::vector<int64_t> rows = std::move(free_);
    for (const int64_t i : rows) augment(i);
  }

  const std::vector<int64_t>& rows_to_cols() const { return x_; }

 private:
  void assign(int64_t i, int64_t j) {
    x_[i] = j;
    y_[j] = i;
  }

  const double* c_;
  int64_t n_;
  double* v_;
  std::vector<int64_t> x_, y_, free_, cols_, pred_;
  std::vector<double> dist_;
};

}  // namespace

void solve_assignment_dense(const double* cost, int64_t n, const double* col_potential, int64_t* perm,
                            double* u, double* v) {
  for (int64_t e = 0; e < n * n; ++e) {
    if (!(cost[e] - cost[e] == 0.0)) throw std::invalid_argument("cost matrix has a NaN or infinite entry");
  }
  if (n == 0) return;
  if (col_potential != nullptr) std::copy(col_potential, col_potential + n, v);
  Lapjv solver(cost, n, v);
  if (n == 1) {
    perm[0] = 0;
    v[0] = col_potential != nullptr ? v[0] : cost[0];
    u[0] = cost[0] - v[0];
    return;
  }
  solver.solve(col_potential != nullptr);
  const std::vector<int64_t>& x = solver.rows_to_cols();
  for (int64_t i = 0; i < n; ++i) {
    perm[i] = x[i];
    u[i] = cost[i * n + x[i]] - v[x[i]];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> assignment_dense_cpu_kernel(const at::Tensor& cost,
                                                                           const at::Tensor& col_potential) {
  const int64_t n = cost.size(0);
  at::Tensor perm = at::empty({n}, cost.options().dtype(at::kLong));
  at::Tensor u = at::empty({n}, cost.options());
  at::Tensor v = at::empty({n}, cost.options());
  solve_assignment_dense(cost.const_data_ptr<double>(), n,
                         col_potential.defined() ? col_potential.const_data_ptr<double>() : nullptr,
                         perm.data_ptr<int64_t>(), u.data_ptr<double>(), v.data_ptr<double>());
  return {perm, u, v};
}

}  // namespace ot_flow
