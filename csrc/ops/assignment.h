// ot_flow::assignment_dense — an exact minimum-cost perfect matching (linear sum assignment)
// of a dense square cost matrix: perm (n,) with perm[i] the column of row i, minimising
// sum_i C[i, perm[i]], and dual potentials u (n,), v (n,) that certify it:
//     C[i, j] - u[i] - v[j] >= 0 for all i, j (up to float64 rounding),
//     C[i, perm[i]] - u[i] - v[perm[i]] == 0,
// so sum(u) + sum(v) is the optimum. ot_flow.assignment(x, y) builds C from point clouds.
//
// The solver is Jonker-Volgenant's (LAPJV, 1987) on float64: column reduction with reduction
// transfer, two rounds of augmenting row reduction (auction-like bids that settle most rows
// in O(n) each), then one shortest augmenting path (Dijkstra on reduced costs) per row still
// free. The last phase alone is exact whatever the potentials it starts from, as long as every
// assigned row holds a column of least reduced cost, which the first phases keep; a bid whose
// price change is lost to rounding is left to that phase rather than breaking it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace ot_flow {

// The solver on a row-major n x n float64 matrix. `col_potential` (n, may be null) is a warm
// start for v (e.g. from an entropic solve): it replaces the column reduction, and any values
// give an exact result (only the speed depends on them). Writes perm (row -> column), u, v.
// Throws std::invalid_argument on a NaN or +-inf entry.
void solve_assignment_dense(const double* cost, int64_t n, const double* col_potential, int64_t* perm,
                            double* u, double* v);

// The CPU kernel: cost (n, n) contiguous float64, col_potential (n,) float64 or undefined.
// Returns (perm int64 (n,), u float64 (n,), v float64 (n,)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> assignment_dense_cpu_kernel(const at::Tensor& cost,
                                                                           const at::Tensor& col_potential);

}  // namespace ot_flow
