"""Costs as biased dot products, and their spread std(C) without the cost matrix.

Both supported costs are C_ij = alpha_i + beta_j - <x_i, y_j>:
  "dot":         alpha = beta = 0
  "sqeuclidean": alpha_i = |x_i|^2 / 2, beta_j = |y_j|^2 / 2
so every solver works with the dot-product kernel and shifts potentials by (alpha, beta).
"""

import math

import torch

from ot_flow.solvers.frame import Frame

COSTS = ("sqeuclidean", "dot")

# A spread below this, in the working frame's unit (where the points' RMS size is about 1), is
# float64 rounding: every cost is equal.
_EQUAL_COSTS = 1e-12

# Above this dimension the O((n + m) d^2) moments are replaced by a subsample (seed paper 002).
_MOMENT_MAX_ROWS = 16384


def check_cost(cost):
    if cost not in COSTS:
        raise ValueError(f"argument 'cost' must be one of {COSTS}, got {cost!r}")


def cost_offsets(x, cost):
    """alpha (or beta) of the cost decomposition, in float64 for stable potentials."""
    if cost == "dot":
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    return 0.5 * (x * x).sum(dim=1)


def cost_matrix(x, y, cost):
    """Dense cost (tests and tiny problems only)."""
    c = -(x @ y.T)
    if cost == "sqeuclidean":
        c = c + cost_offsets(x, cost)[:, None] + cost_offsets(y, cost)[None, :]
    return c


def _subsample(x, w, max_rows, seed):
    if x.shape[0] <= max_rows:
        return x, w
    g = torch.Generator(device=x.device).manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=g, device=x.device)[:max_rows]
    ws = w[idx]
    return x[idx], ws * (w.sum() / ws.sum())  # the shard's mass is kept (sharded solver)


def cost_std(x, y, a, b, cost, reduce=None, reduce_y=None, frame=None):
    """Standard deviation of C_ij under the product weights a_i b_j, in O((n + m) d^2), no matrix.

    With x_i = xbar + x~_i and y_j = ybar + y~_j, every cost of the form alpha_i + beta_j -
    <x_i, y_j> splits into a row term u_i, a column term v_j and the interaction -<x~_i, y~_j>,
    orthogonal under a_i b_j, so Var C = Var u + Var v + tr(Sigma_x Sigma_y): sums of squares of
    centred terms, computed in the clouds' working frame (frame.py), which neither the spread of
    far-off clouds (lost to cancellation about the origin) nor huge or tiny coordinates disturb.
    Rows are subsampled to 2^14 when n or m is larger, as in seed paper 002. `reduce` sums each
    side's sums over the ranks that hold shards of x and y (the sharded solver), `reduce_y` only
    y's (sharded data against replicated noise). 0.0 when every cost is equal up to rounding.
    ``frame``, optional: the solve's Frame.of the same clouds (with ``reduce``), which is then
    not computed again (unless rows were subsampled: a subsample has its own frame).
    """
    frame, var_rows, var_cols, interaction = _spread_parts(x, y, a, b, cost, reduce, reduce_y, frame)
    std = math.sqrt(max(var_rows + var_cols + interaction, 0.0))
    return frame.unit * std if std > _EQUAL_COSTS else 0.0


def interaction_std(x, y, a, b, reduce=None, reduce_y=None):
    """sqrt(tr(Sigma_x Sigma_y)), the spread of the part of either cost that couples i with j
    (same arguments as ``cost_std``). 0.0 (a cloud is a single point, or the clouds lie in
    orthogonal subspaces, up to rounding) means the coupling is the independent one for every eps."""
    frame, _, _, interaction = _spread_parts(x, y, a, b, "dot", reduce, reduce_y)
    std = math.sqrt(max(interaction, 0.0))
    return frame.unit * std if std > _EQUAL_COSTS else 0.0


def _spread_parts(x, y, a, b, cost, reduce, reduce_y, frame=None):
    """(frame, Var u, Var v, tr(Sigma_x Sigma_y)) in the working frame's unit (see cost_std)."""
    rx = _summed(reduce)
    ry = _summed(lambda t: reduce_y(rx(t))) if reduce_y is not None else rx
    x, y = x.detach(), y.detach()
    xs, wx = _subsample(x, a.double(), _MOMENT_MAX_ROWS, 0)
    ys, wy = _subsample(y, b.double(), _MOMENT_MAX_ROWS, 1)
    if frame is None or xs is not x or ys is not y or reduce_y is not None:
        frame = Frame.of([(xs, wx), (ys, wy)], cost, reduce=[rx, ry])
    xw, yw = frame.points(xs, torch.float64), frame.points(ys, torch.float64)
    x_mean, y_mean = rx(wx @ xw), ry(wy @ yw)
    u = frame.offsets(xw) - xw @ y_mean
    v = frame.offsets(yw) - yw @ x_mean
    var_u = rx(wx @ (u - rx(wx @ u)).square())
    var_v = ry(wy @ (v - ry(wy @ v)).square())
    xc, yc = xw - x_mean, yw - y_mean
    interaction = (rx(xc.T @ (wx[:, None] * xc)) * ry(yc.T @ (wy[:, None] * yc))).sum()
    return frame, float(var_u), float(var_v), float(interaction)


def _summed(reduce):
    """`reduce` (a sum over ranks of a float64 tensor) for tensors of any shape, 0-dim included."""
    if reduce is None:
        return lambda t: t
    return lambda t: reduce(t.reshape(-1)).reshape(t.shape)


