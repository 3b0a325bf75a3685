// CPU kernel of ot_flow::assignment_dense on a dense float64 matrix: an eps-scaling auction
// for the column potentials, then Jonker-Volgenant's exact phases (augmenting row reduction,
// shortest augmenting paths) from them.
//
// Invariant of every phase (what makes the last one exact): v is any vector of column
// potentials, and every assigned row i holds a column of least reduced cost C[i, j] - v[j].
// Then u[i] = min_j (C[i, j] - v[j]) makes (u, v) dual feasible and every assigned edge tight,
// and a Dijkstra from a free row over reduced costs augments along a shortest path and moves v
// so that the invariant holds again with one more row assigned.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <utility>
#include <vector>

#include "../assignment.h"

namespace ot_flow {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Auction phases at eps = range / 8, range / 64, ... while eps >= range * 1e-5, range the
// spread of the cost entries (benchmarks/results/assignment-cpu.txt: coarser ends leave long
// shortest paths, finer ones spend more on bids than they save).
constexpr double kAuctionFactor = 8.0;
constexpr double kAuctionFinal = 1e-5;

class Lapjv {
 public:
  Lapjv(const double* cost, int64_t n, double* v) : c_(cost), n_(n), v_(v), x_(n, -1), y_(n, -1) {}

  // Forward auction with eps-scaling (Bertsekas), from v: phases at eps = range / factor^k down
  // to range * final, each bidding until every row holds a column. A bid lowers the price v of
  // the bidder's best column by its margin to the second best plus eps, so each phase ends
  // with eps-complementary slackness and the prices are within n eps of optimal duals. It is a
  // warm start only: the assignment is dropped and the exact phases start from these v.
  void auction(double final_fraction, double factor) {
    double lo = kInf, hi = -kInf;
    for (int64_t e = 0; e < n_ * n_; ++e) {
      lo = std::min(lo, c_[e]);
      hi = std::max(hi, c_[e]);
    }
    const double range = hi - lo;
    if (!(range > 0)) {  // every permutation is optimal: the exact phases settle it at once
      greedy();
      return;
    }
    std::vector<int64_t> rows;
    for (double eps = range / factor; eps >= range * final_fraction; eps /= factor) {
      std::fill(x_.begin(), x_.end(), -1);
      std::fill(y_.begin(), y_.end(), -1);
      rows.resize(n_);
      for (int64_t i = 0; i < n_; ++i) rows[i] = n_ - 1 - i;
      while (!rows.empty()) {
        const int64_t i = rows.back();
        rows.pop_back();
        int64_t j1;
        double u2;
        const double u1 = least_two(c_ + i * n_, &j1, &u2);
        v_[j1] -= (u2 - u1) + eps;
        const int64_t i0 = y_[j1];
        assign(i, j1);
        if (i0 >= 0) {
          x_[i0] = -1;
          rows.push_back(i0);
        }
      }
    }
    // Keep each row that holds a column of least reduced cost (the exact phases' invariant).
    for (int64_t i = 0; i < n_; ++i) {
      int64_t j1;
      const double least = least_two(c_ + i * n_, &j1);
      const int64_t j = x_[i];
      if (!(c_[i * n_ + j] - v_[j] <= least)) {
        x_[i] = -1;
        y_[j] = -1;
        free_.push_back(i);
      }
    }
  }

  // Warm start from given potentials: each row takes its column of least reduced cost when
  // no earlier row has it.
  void greedy() {
    for (int64_t i = 0; i < n_; ++i) {
      int64_t best;
      least_two(c_ + i * n_, &best);
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
      int64_t j1, j2 = -1;
      double u2;
      const double u1 = least_two(c_ + i * n_, &j1, &u2);
      int64_t i0 = y_[j1];
      const double lowered = v_[j1] - (u2 - u1);
      if (lowered < v_[j1]) {  // a strict margin that survives rounding: take j1 at the lower price
        v_[j1] = lowered;
        assign(i, j1);
        if (i0 >= 0) rows[--k] = i0;  // the evicted row bids next
      } else if (i0 < 0) {
        assign(i, j1);  // j1 is free: no price change needed
      } else if (u1 == u2) {
        least_two(c_ + i * n_, &j1, &u2, &j2);
        i0 = y_[j2];  // a tie: the second best is as good, take it
        assign(i, j2);
        if (i0 >= 0) free_.push_back(i0);
      } else {
        free_.push_back(i);  // the margin rounds away: leave it to the shortest paths
      }
    }
  }

  // One shortest augmenting path from free row `start`: Dijkstra over reduced costs on dense
  // arrays, so that each scanned row is one vectorised pass (relax every open column and take
  // the least key), then the potentials of the closed columns and the path. A closed column
  // has key +inf and floor +inf (no relaxation can reach it); an open one floor -inf.
  void augment(int64_t start) {
    double* key = key_.data();
    double* floor = floor_.data();
    int64_t* pred = pred_.data();
    const double* v = v_;
    const double* row0 = c_ + start * n_;
    double least = kInf;
#pragma omp simd reduction(min : least)
    for (int64_t j = 0; j < n_; ++j) {
      key[j] = row0[j] - v[j];
      floor[j] = -kInf;
      pred[j] = start;
      least = std::min(least, key[j]);
    }
    closed_.clear();
    int64_t j1;
    while (true) {
      j1 = 0;
      while (!(key[j1] <= least)) ++j1;  // the first column at the least key
      if (y_[j1] < 0) break;             // a free column: the path ends here
      const double at = key[j1];
      closed_.push_back(j1);
      final_[j1] = at;
      key[j1] = kInf;
      floor[j1] = kInf;
      const int64_t i = y_[j1];
      const double* row = c_ + i * n_;
      const double h = row[j1] - v[j1] - at;
      least = kInf;
#pragma omp simd reduction(min : least)
      for (int64_t j = 0; j < n_; ++j) {
        // Below `at` only by rounding (Dijkstra's distances never decrease): clamped.
        const double r = std::max(std::max(row[j] - v[j] - h, floor[j]), at);
        const bool better = r < key[j];
        key[j] = better ? r : key[j];
        pred[j] = better ? i : pred[j];
        least = std::min(least, key[j]);
      }
    }
    for (const int64_t j : closed_) v_[j] += final_[j] - least;
    int64_t j = j1;
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
      std::fill(v_, v_ + n_, 0.0);
      auction(kAuctionFinal, kAuctionFactor);
    }
    if (!free_.empty()) augmenting_row_reduction(8 * n_);
    key_.resize(n_);
    floor_.resize(n_);
    final_.resize(n_);
    pred_.resize(n_);
    const std::vector<int64_t> rows = std::move(free_);
    for (const int64_t i : rows) augment(i);
  }

  const std::vector<int64_t>& rows_to_cols() const { return x_; }

 private:
  // The least reduced cost u1 of a row and its first column j1; with u2, also the least over
  // the other columns (ties count: u2 == u1 when two columns share the least); with j2, the
  // first column at u2 other than j1. One vectorised pass keeps the two least per lane.
  double least_two(const double* row, int64_t* j1, double* u2 = nullptr, int64_t* j2 = nullptr) const {
    constexpr int kLanes = 8;
    typedef double Lanes __attribute__((vector_size(kLanes * sizeof(double))));
    const double* v = v_;
    Lanes l1, l2;
    for (int l = 0; l < kLanes; ++l) l1[l] = l2[l] = kInf;
    int64_t j = 0;
    for (; j + kLanes <= n_; j += kLanes) {
      Lanes c, p;
      std::memcpy(&c, row + j, sizeof(Lanes));
      std::memcpy(&p, v + j, sizeof(Lanes));
      const Lanes r = c - p;
      const Lanes high = l1 < r ? r : l1;
      l1 = r < l1 ? r : l1;
      l2 = high < l2 ? high : l2;
    }
    double m1[kLanes], m2[kLanes];
    for (int l = 0; l < kLanes; ++l) m1[l] = l1[l], m2[l] = l2[l];
    for (int l = 0; j < n_; ++j, ++l) {
      const double r = row[j] - v[j];
      m2[l] = std::min(m2[l], std::max(m1[l], r));
      m1[l] = std::min(m1[l], r);
    }
    int lane = 0;
    for (int l = 1; l < kLanes; ++l) lane = m1[l] < m1[lane] ? l : lane;
    const double u1 = m1[lane];
    double second = m2[lane];
    for (int l = 0; l < kLanes; ++l) second = l != lane ? std::min(second, m1[l]) : second;
    int64_t a = 0;
    while (!(row[a] - v[a] <= u1)) ++a;
    *j1 = a;
    if (u2 != nullptr) *u2 = second;
    if (j2 != nullptr) {
      int64_t b = 0;
      while (b < n_ && (b == a || !(row[b] - v[b] <= second))) ++b;
      *j2 = b < n_ ? b : -1;
    }
    return u1;
  }

  void assign(int64_t i, int64_t j) {
    x_[i] = j;
    y_[j] = i;
  }

  const double* c_;
  int64_t n_;
  double* v_;
  std::vector<int64_t> x_, y_, free_, closed_, pred_;
  std::vector<double> key_, floor_, final_;
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
