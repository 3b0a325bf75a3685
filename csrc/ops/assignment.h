// ot_flow::assignment_dense — an exact minimum-cost perfect matching (linear sum assignment)
// of a dense square cost matrix: perm (n,) with perm[i] the column of row i, minimising
// sum_i C[i, perm[i]], and dual potentials u (n,), v (n,) that certify it:
//     C[i, j] - u[i] - v[j] >= 0 for all i, j (up to float64 rounding),
//     C[i, perm[i]] - u[i] - v[perm[i]] == 0,
// so sum(u) + sum(v) is the optimum. ot_flow.assignment(x, y) builds C from point clouds.
//
// The solver, on float64: a forward auction with eps-scaling (Bertsekas) finds column
// potentials v close to optimal duals in O(n) per bid; then the exact phases of
// Jonker-Volgenant (LAPJV, 1987) start from them: each row keeps its column only where that
// column has the least reduced cost C[i, j] - v[j], one round of augmenting row reduction
// (auction bids with eps = 0), and one shortest augmenting path (Dijkstra on reduced costs)
// per row still free. The last phase is exact whatever potentials it starts from, as long as
// every assigned row holds a column of least reduced cost, which the phases before keep; a bid
// whose price change is lost to rounding is left to it rather than breaking that.
// Measured (benchmarks/results/assignment-cpu.txt): without the auction, column reduction as
// LAPJV's start leaves long shortest paths on low-dimensional clouds (n = 1024, d = 2: 1.9 s,
// slower than scipy); with it 0.05 s.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace ot_flow {

// The solver on a row-major n x n float64 matrix. `col_potential` (n, may be null) is a warm
// start for v (e.g. from an entropic solve): it replaces the auction, and any values
// give an exact result (only the speed depends on them). Writes perm (row -> column), u, v.
// Throws std::invalid_argument on a NaN or +-inf entry.
void solve_assignment_dense(const double* cost, int64_t n, const double* col_potential, int64_t* perm,
                            double* u, double* v);

// The CPU kernel: cost (n, n) contiguous float64, col_potential (n,) float64 or undefined.
// Returns (perm int64 (n,), u float64 (n,), v float64 (n,)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> assignment_dense_cpu_kernel(const at::Tensor& cost,
                                                                           const at::Tensor& col_potential);

}  // namespace ot_flow
