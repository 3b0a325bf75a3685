"""ot_flow.ops.assignment_dense: an exact linear sum assignment of a dense square cost matrix."""

import torch

from ot_flow.ops import _args

__all__ = ["assignment_dense"]


def assignment_dense(cost, col_potential=None):
    """The permutation ``perm`` (n,) minimising ``sum_i cost[i, perm[i]]``, exactly, with dual
    potentials that certify it.

    In float64 on the host (CUDA inputs are copied over and the results copied back): an
    eps-scaling auction for the column potentials (skipped when ``col_potential`` is given),
    then Jonker-Volgenant's augmenting row reduction and shortest augmenting paths, exact.
    Any optimal permutation may be returned when several are (ties).

    Args:
        cost: (n, n) float32/float64, finite.
        col_potential: optional (n,) warm start for the column potentials v; any values give
            the exact optimum (only the speed depends on them).

    Returns:
        ``(perm, u, v)``: int64 (n,), and (n,) in cost's dtype with
        ``cost[i, j] - u[i] - v[j] >= 0`` (to float64 rounding) and equality on ``(i, perm[i])``,
        so ``u.sum() + v.sum()`` is the optimal cost. Not differentiable.
    """
    if isinstance(cost, torch.Tensor):
        cost = cost.detach()
    if isinstance(col_potential, torch.Tensor):
        col_potential = col_potential.detach()
    return torch.ops.ot_flow.assignment_dense.default(cost, col_potential)


@torch.library.register_fake("ot_flow::assignment_dense")
def _assignment_dense_fake(cost, col_potential=None):
    _args.same_device("ot_flow.assignment_dense", cost=cost, col_potential=col_potential)
    torch._check(cost.dim() == 2 and cost.shape[0] == cost.shape[1],
                 lambda: "ot_flow.assignment_dense: argument 'cost' must be a square 2-D tensor")
    torch._check(cost.dtype in (torch.float32, torch.float64),
                 lambda: "ot_flow.assignment_dense: argument 'cost' must be float32 or float64")
    if col_potential is not None:
        torch._check(col_potential.shape == (cost.shape[0],),
                     lambda: "ot_flow.assignment_dense: argument 'col_potential' must have shape (n,)")
    n = cost.shape[0]
    return cost.new_empty(n, dtype=torch.long), cost.new_empty(n), cost.new_empty(n)
