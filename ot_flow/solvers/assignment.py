"""Exact optimal assignment between two clouds of n points: the eps = 0 end of OT pairing.

For n = m points with uniform weights, an optimal plan of unregularised OT is a permutation
(Birkhoff), so batch OT-CFM's "exact" coupling is a linear sum assignment of the dense cost
matrix. Both costs give the same permutations: over a permutation, the norms in
|x_i - y_j|^2 / 2 = |x_i|^2 / 2 + |y_j|^2 / 2 - <x_i, y_j> sum to a constant, and so do the
terms of the frame's shift (frame.py). So the solver is handed C'_ij = -<x'_i, y'_j> in float64,
x', y' the clouds moved to their common centre and measured in their own unit: no cancellation
however far the clouds lie from the origin, and the optimum of the float64 cost matrix up to
its rounding.

The solve is in C++ (csrc/ops/cpu/assignment_kernel.cpp): an eps-scaling auction finds
near-optimal column potentials cheaply, and Jonker-Volgenant's exact phases (augmenting row
reduction, then shortest augmenting paths) finish from them. The auction start is what makes it
fast on low-dimensional clouds, where LAPJV's own column reduction leaves long augmenting paths;
a Sinkhorn warm start gives the exact phases potentials as good, but the entropic solve costs
more than the auction (benchmarks/results/assignment-cpu.txt, "Sinkhorn warm start" rows).
"""

import torch

from ot_flow.ops.assignment_dense import assignment_dense
from ot_flow.solvers import costs, validation
from ot_flow.solvers.frame import Frame

__all__ = ["assignment", "assignment_cost_matrix"]


def assignment_cost_matrix(x, y, cost="sqeuclidean"):
    """The float64 (n, m) matrix the solver minimises over: C' = -<x', y'> in the working frame,
    equal to the cost of ``cost`` up to terms that depend only on i or only on j (and a unit)."""
    validation.check_pair(x, y)
    costs.check_cost(cost)
    x, y = x.detach(), y.detach()
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64, device=x.device)
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64, device=y.device)
    frame = Frame.of([(x, a), (y, b)], cost)
    xw, yw = frame.points(x, torch.float64), frame.points(y, torch.float64)
    return -(xw @ yw.T)


@torch.compiler.disable
def assignment(x, y, cost="sqeuclidean"):
    """An optimal assignment: the permutation ``perm`` (n,) minimising sum_i C(x_i, y_perm[i]).

    Exact: the cost equals the optimum of the dense float64 cost matrix (e.g.
    scipy.optimize.linear_sum_assignment's) up to float64 rounding, ties included (duplicated
    or integer-valued points): any optimal permutation may come back, always a permutation.

    Args:
        x: (n, d) points, float32/float64 (or half/bf16, solved in float64).
        y: (n, d) points, same device and dimension.
        cost: "sqeuclidean" (|x - y|^2 / 2) or "dot" (-<x, y>); for a permutation they are the
            same problem, and the same permutations are optimal.

    Returns:
        LongTensor (n,) on x's device: x[i] is paired with y[perm[i]]. A CUDA input's cost
        matrix is built on the GPU and the assignment solved on the host (the solver is
        sequential); the result comes back to the GPU. Memory: the n x n float64 matrix
        (128 MiB at n = 4096).
    """
    validation.check_pair(x, y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"arguments 'x' and 'y' must hold the same number of points for an assignment "
                         f"(a permutation), got {x.shape[0]} and {y.shape[0]}; for n != m use ot_flow.sinkhorn")
    perm, _, _ = assignment_dense(assignment_cost_matrix(x, y, cost))
    return perm
