"""Costs as biased dot products, and their spread std(C) without the cost matrix.

Both supported costs are C_ij = alpha_i + beta_j - <x_i, y_j>:
  "dot":         alpha = beta = 0
  "sqeuclidean": alpha_i = |x_i|^2 / 2, beta_j = |y_j|^2 / 2
so every solver works with the dot-product kernel and shifts potentials by (alpha, beta).
"""

import torch

COSTS = ("sqeuclidean", "dot")

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


def cost_std(x, y, a, b, cost, reduce=None, reduce_y=None):
    """Standard deviation of C_ij under the product weights a_i b_j, in O((n + m) d^2).

    With C = alpha_i + beta_j - <x_i, y_j>, E[C] and E[C^2] need only the first and second
    moments of x and y (and their cross terms with alpha, beta): no n x m matrix. Rows are
    subsampled to 2^14 when n or m is larger, as in seed paper 002. `reduce` sums each side's
    moments over the ranks that hold shards of x and y (the sharded solver), `reduce_y` only
    y's (sharded data against replicated noise).
    """
    d = x.shape[1]
    sx = _side_moments(x, a, cost, 0)
    sy = _side_moments(y, b, cost, 1)
    if reduce is not None:
        sx, sy = reduce(sx), reduce(sy)
    if reduce_y is not None:
        sy = reduce_y(sy)
    (w_al, w_al2, mx, mxx, m_alx), (w_be, w_be2, my, myy, m_bey) = _unpack(sx, d), _unpack(sy, d)
    mean = w_al + w_be - mx @ my
    second = w_al2 + w_be2 + (mxx * myy).sum() + 2 * w_al * w_be - 2 * m_alx @ my - 2 * mx @ m_bey
    return float((second - mean.square()).clamp_min(0).sqrt())


def _side_moments(x, w, cost, seed):
    """[w.off, w.off^2, w x (d), x^T diag(w) x (d^2), (w off) x (d)] of one side, flat, float64."""
    x64, w = _subsample(x.double(), w.double(), _MOMENT_MAX_ROWS, seed)
    off = cost_offsets(x64, cost)
    return torch.cat([(w @ off).reshape(1), (w @ off.square()).reshape(1), w @ x64,
                      (x64.T @ (w[:, None] * x64)).reshape(-1), (w * off) @ x64])


def _unpack(moments, d):
    return (moments[0], moments[1], moments[2:2 + d], moments[2 + d:2 + d + d * d].view(d, d),
            moments[2 + d + d * d:])
