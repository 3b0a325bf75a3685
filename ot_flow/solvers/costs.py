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
    return x[idx], ws / ws.sum()


def cost_std(x, y, a, b, cost):
    """Standard deviation of C_ij under the product weights a_i b_j, in O((n + m) d^2).

    With C = alpha_i + beta_j - <x_i, y_j>, E[C] and E[C^2] need only the first and second
    moments of x and y (and their cross terms with alpha, beta): no n x m matrix. Rows are
    subsampled to 2^14 when n or m is larger, as in seed paper 002.
    """
    x64, y64 = x.double(), y.double()
    x64, a = _subsample(x64, a.double(), _MOMENT_MAX_ROWS, 0)
    y64, b = _subsample(y64, b.double(), _MOMENT_MAX_ROWS, 1)
    al, be = cost_offsets(x64, cost), cost_offsets(y64, cost)
    mx, my = a @ x64, b @ y64  # first moments
    sx = x64.T @ (a[:, None] * x64)  # second moments
    sy = y64.T @ (b[:, None] * y64)
    mean = a @ al + b @ be - mx @ my
    second = (
        a @ al.square() + b @ be.square() + (sx * sy).sum()
        + 2 * (a @ al) * (b @ be)
        - 2 * ((a * al) @ x64) @ my
        - 2 * mx @ ((b * be) @ y64)
    )
    return float((second - mean.square()).clamp_min(0).sqrt())
