"""Semidiscrete OT: a continuous source (noise) against N weighted target points y_j (seeds 001/003).

Everything is a function of the dual potential g in R^N. With C(x, y) = alpha(x) + beta(y) - <x, y>
(costs.py) and the dot-cost potential h_j = g_j - beta_j:

    eps = 0:  f_g(x) = min_j C(x, y_j) - g_j = alpha(x) - max_j (<x, y_j> + h_j)      (a MIPS)
    eps > 0:  f_g(x) = -eps log sum_j b_j exp((g_j - C(x, y_j)) / eps)                (an lse)

The semi-dual F(g) = E_x[f_g(x)] + <g, b> is concave; its gradient is b - (the fraction of
the source mass assigned to each j): hard assignment frequencies when eps = 0, the mean of
the row softmax when eps > 0. At the optimum every y_j receives exactly its weight b_j, and
pairing fresh noise with data costs one MIPS (or one Gumbel-max draw when eps > 0).

Every function here takes the target in chunks of `chunk_size` rows when asked, so a data set
larger than the device's memory streams through it; the chunks' results merge exactly (the
larger value wins, the lower index on ties; log-sum-exps add).
"""

import math

import torch

from ot_flow.ops import gumbel_argmax, lse, mips
from ot_flow.solvers import costs

__all__ = ["assign", "semidual_gradient", "marginal_chi2", "dot_bias"]


def dot_bias(g, y, cost):
    """h_j = g_j - beta_j: the bias of the MIPS that assigns x to argmin_j C(x, y_j) - g_j."""
    return (g.double() - costs.cost_offsets(y.double(), cost)).to(y.dtype)


def _chunks(m, chunk_size):
    step = m if chunk_size is None else int(chunk_size)
    return [(c0, min(m, c0 + step)) for c0 in range(0, m, step)]


def _on(t, device, dtype=None):
    return t.to(device=device, dtype=dtype or t.dtype, non_blocking=True)


def assign(x, y, g, b, eps, cost, *, generator=None, chunk_size=None):
    """LongTensor (n,): the target index of each source point x_i.

    eps = 0: argmin_j C(x_i, y_j) - g_j (ties to the lowest j). eps > 0: a draw from
    P(j | x_i) proportional to b_j exp((g_j - C(x_i, y_j)) / eps).
    """
    n, m = x.shape[0], y.shape[0]
    best_value = torch.full((n,), -math.inf, dtype=torch.float64, device=x.device)
    best_index = torch.full((n,), -1, dtype=torch.long, device=x.device)
    seed = None if eps == 0 else _seed(generator)
    for c0, c1 in _chunks(m, chunk_size):
        y_c = _on(y[c0:c1], x.device, x.dtype)
        h_c = dot_bias(_on(g[c0:c1], x.device), y_c, cost)
        if eps == 0:
            values, index = mips(x, y_c, h_c, 1)
            values, index = values[:, 0].double(), index[:, 0]
        else:
            h_c = h_c / eps + _on(b[c0:c1], x.device).log().to(x.dtype)
            index, values = gumbel_argmax(x, y_c, h_c, 1.0 / eps, seed=seed, col_offset=c0, return_value=True)
        better = values > best_value  # chunks in order: a tie keeps the earlier, lower index
        best_value = torch.where(better, values, best_value)
        best_index = torch.where(better, index + c0, best_index)
    return best_index


def _seed(generator):
    from ot_flow.ops import seed_from

    return seed_from(generator)


def semidual_gradient(x, y, g, b, eps, cost, *, chunk_size=None):
    """(gradient, value, counts) of the semi-dual F at g, estimated on the source batch x.

    gradient (N,) float64: b - (assignment frequencies) when eps = 0, b - (mean row softmax)
    when eps > 0; value: the batch estimate of F(g); counts: how many x_i went to each j
    (eps = 0) or the summed softmax weights (eps > 0), float64 (N,) on g's device.
    """
    n, m = x.shape[0], y.shape[0]
    alpha = costs.cost_offsets(x.double(), cost)
    counts = torch.zeros(m, dtype=torch.float64, device=g.device)
    if eps == 0:
        best = torch.full((n,), -math.inf, dtype=torch.float64, device=x.device)
        best_index = torch.full((n,), -1, dtype=torch.long, device=x.device)
        for c0, c1 in _chunks(m, chunk_size):
            y_c = _on(y[c0:c1], x.device, x.dtype)
            values, index = mips(x, y_c, dot_bias(_on(g[c0:c1], x.device), y_c, cost), 1)
            values = values[:, 0].double()
            better = values > best
            best = torch.where(better, values, best)
            best_index = torch.where(better, index[:, 0] + c0, best_index)
        counts += torch.bincount(best_index, minlength=m).to(counts)
        f = alpha - best
    else:
        # Row log-sum-exps over the chunks first (they add), then each chunk's column sums of
        # the row softmax: sum_i exp(<x_i, y_j> / eps + h_j - lse_i).
        biases, row_lse = [], torch.full((n,), -math.inf, dtype=torch.float64, device=x.device)
        for c0, c1 in _chunks(m, chunk_size):
            y_c = _on(y[c0:c1], x.device, x.dtype)
            h_c = dot_bias(_on(g[c0:c1], x.device), y_c, cost) / eps + _on(b[c0:c1], x.device).log().to(x.dtype)
            biases.append(h_c)
            row_lse = torch.logaddexp(row_lse, lse(x, y_c, h_c, 1.0 / eps).double())
        for (c0, c1), h_c in zip(_chunks(m, chunk_size), biases):
            y_c = _on(y[c0:c1], x.device, x.dtype)
            col_lse = lse(y_c, x, (-row_lse).to(x.dtype), 1.0 / eps).double()
            counts[c0:c1] += _on(torch.exp(h_c.double() + col_lse), g.device)
        f = alpha - eps * row_lse
    b64 = b.double()
    gradient = b64 - counts / n
    value = float(f.mean()) + float(g.double() @ b64)
    return gradient, value, counts


def marginal_chi2(counts, b, total):
    """Chi-square marginal error sum_j (p_j - b_j)^2 / b_j of assignment frequencies p.

    `counts` (N,) are hard-assignment counts over `total` independent source samples; the
    multinomial noise of the frequencies is removed (an unbiased estimate, which can dip
    slightly below 0 near the optimum), so the number does not floor at (N - 1) / total.
    """
    b64 = b.double().to(counts.device)
    p = counts.double() / total
    noise = p * (1 - p) / max(total - 1, 1)
    return float((((p - b64) ** 2 - noise) / b64).sum())
