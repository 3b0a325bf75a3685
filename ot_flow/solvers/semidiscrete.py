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
larger than the device's memory streams through it (held on the host, or wherever `stream` says,
each chunk copied to the device beside the kernels of the one before: host_transfer.py), and
shards of it over the ranks of a process group; the chunks' and ranks' results merge exactly (the
larger value wins, the lower index on ties; log-sum-exps add). Targets held in 16 bits are
widened to the queries' dtype chunk by chunk. Nothing here reads a value back to the host
except the functions that return Python numbers (score_gap, marginal_chi2), so a GPU queues
the work of a fit step without waiting.
"""

import math
from typing import NamedTuple, Optional

import torch

from ot_flow import distributed
from ot_flow.ops import gumbel_argmax, lse, mips, seed_from
from ot_flow.solvers import costs, host_transfer, merge_rules

__all__ = ["assign", "semidual_gradient", "SemidualEstimate", "marginal_chi2", "dot_bias", "score_gap", "nearest",
           "extend_potential"]


def dot_bias(g, y, cost, b=None, offsets=None):
    """h_j = g_j - beta_j: the bias of the MIPS that assigns x to argmin_j C(x, y_j) - g_j.

    With the weights ``b``, h_j = -inf where b_j = 0: a point without mass is never assigned,
    whatever its potential (the semi-dual's optimum has g_j = -inf there, which no finite
    iterate reaches). ``offsets``: beta = costs.cost_offsets(y.double(), cost), when the caller
    holds them (a fit's data do not move: computing them per step would copy all of y to
    float64 each time)."""
    beta = costs.cost_offsets(y.double(), cost) if offsets is None else offsets.double()
    h = g.double() - beta
    if b is not None:
        h = torch.where(b.to(h.device) > 0, h, -math.inf)
    return h.to(y.dtype)


def _chunks(m, chunk_size):
    step = m if chunk_size is None else int(chunk_size)
    return [(c0, min(m, c0 + step)) for c0 in range(0, m, step)]


def _on(t, device, dtype=None):
    return t.to(device=device, dtype=dtype or t.dtype, non_blocking=True)


def _chunk_bias(g, y_c, cost, b, y_offsets, c0, c1, device):
    """dot_bias of the targets [c0, c1) (y_c, already on ``device``), on ``device``: g, and b and
    the offsets where given, sliced and moved there."""
    def chunk(t):
        return None if t is None else _on(t[c0:c1], device)

    return dot_bias(chunk(g), y_c, cost, chunk(b), chunk(y_offsets))


def _target_chunks(x, y, chunk_size, stream):
    """((c0, c1), y[c0:c1] on x's device in x's dtype) per chunk: read in place when y is on x's
    device, else (or with ``stream``) copied chunk by chunk (host_transfer.stream_chunks)."""
    ranges = _chunks(y.shape[0], chunk_size)
    if stream or y.device != x.device:
        return zip(ranges, host_transfer.stream_chunks(y, ranges, x.device, x.dtype))
    return (((c0, c1), y[c0:c1].to(x.dtype)) for c0, c1 in ranges)


def _best(x, y, g, b, eps, cost, chunk_size, seed, offset, precision, stream=False, validate=True, y_offsets=None):
    """(value float64, global index) of each row's winner over this process's target points,
    whose global indices start at `offset`: the MIPS (eps = 0) or the Gumbel-max draw, with dot
    products of `precision` (ot_flow.ops.precision, as every function here); `validate` is the
    ops' (False: the caller checked the data, and the ops read nothing back); `y_offsets` the
    targets' cost offsets when the caller holds them (dot_bias)."""
    def chunks():
        for (c0, c1), y_c in _target_chunks(x, y, chunk_size, stream):
            h_c = _chunk_bias(g, y_c, cost, b, y_offsets, c0, c1, x.device)
            if eps == 0:
                values, index = mips(x, y_c, h_c, 1, precision=precision, validate=validate)
                yield values[:, 0], index[:, 0] + offset + c0
            else:
                h_c = h_c / eps + _on(b[c0:c1], x.device).log().to(x.dtype)
                index, values = gumbel_argmax(x, y_c, h_c, 1.0 / eps, seed=seed, col_offset=offset + c0,
                                              return_value=True, precision=precision, validate=validate)
                yield values, index + offset + c0

    return merge_rules.best_of(chunks(), x.shape[0], x.device)


def _top_two(x, y, g, b, cost, chunk_size, process_group, offset, precision, stream=False, validate=True,
             y_offsets=None):
    """(top two scores <x_i, y_j> + h_j per row, float64 (n, 2), global index of the best) over
    every chunk and rank (h = dot_bias(g, y, cost, b)); a row with a single target has -inf as
    its second score."""
    def chunks():
        for (c0, c1), y_c in _target_chunks(x, y, chunk_size, stream):
            h_c = _chunk_bias(g, y_c, cost, b, y_offsets, c0, c1, x.device)
            values, idx = mips(x, y_c, h_c, min(2, c1 - c0), precision=precision, validate=validate)
            yield values, idx[:, 0] + offset + c0

    top, index = merge_rules.top_two_of(chunks(), x.shape[0], x.device)
    if process_group is not None:
        top, index = merge_rules.top_two_over_ranks(top, index, process_group)
    return top, index


def assign(x, y, g, b, eps, cost, *, generator=None, chunk_size=None, process_group=None, offset=0,
           precision="highest", stream=False, y_offsets=None):
    """LongTensor (n,): the target index of each source point x_i.

    eps = 0: argmin_j C(x_i, y_j) - g_j over the points with b_j > 0 (ties to the lowest j).
    eps > 0: a draw from P(j | x_i) proportional to b_j exp((g_j - C(x_i, y_j)) / eps). With a `process_group`,
    y, g and b are this rank's shard (global indices from `offset`), every rank passes the
    same x, and every rank gets the global indices. y on another device than x, or any y with
    ``stream``, is copied over in chunks of `chunk_size` (as every function here takes it).
    ``y_offsets`` (every function here): the targets' cost offsets, float64 (m,), when the caller
    holds them (dot_bias); else computed from y.
    """
    seed = None if eps == 0 else _seed(generator, x.device, process_group)
    value, index = _best(x, y, g, b, eps, cost, chunk_size, seed, offset, precision, stream, y_offsets=y_offsets)
    if process_group is not None:
        value, index = merge_rules.best_over_ranks(value, index, process_group)
    return index


def _seed(generator, device, process_group):
    seed = seed_from(generator)
    return seed if process_group is None else distributed.broadcast_int(seed, device, process_group)


def score_gap(x, y, g, cost, *, b=None, chunk_size=None, process_group=None, precision="highest", stream=False,
              y_offsets=None):
    """Mean over the rows of x of the gap between the best and second-best score
    <x_i, y_j> + h_j (h = dot_bias(g, y, cost, b): points of weight 0 take no part).

    It is the potential change that moves a typical source point from one target to its
    neighbour, so it is the natural unit of the fit's step size: it shrinks as the targets get
    denser (more points, lower dimension), where std(C) does not move. A single target has no
    second best: the gap is then taken as 0.
    """
    top, _ = _top_two(x, y, g, b, cost, chunk_size, process_group, 0, precision, stream, y_offsets=y_offsets)
    gap = top[:, 0] - top[:, 1]
    return float(gap[torch.isfinite(gap)].mean()) if torch.isfinite(gap).any() else 0.0


class SemidualEstimate(NamedTuple):
    """A batch estimate of the semi-dual at g (float64 tensors on g's device)."""
    gradient: torch.Tensor  # (N,) b - assignment frequencies (eps = 0) or b - mean row softmax
    value: torch.Tensor  # F(g) on the batch, 0-dim (a tensor, so that computing it reads nothing back)
    counts: torch.Tensor  # (N,) rows assigned to each j (eps = 0) or summed softmax weights
    gap_sums: Optional[torch.Tensor]  # (N,) sum of the score gaps of the rows whose best is j
    gap_counts: Optional[torch.Tensor]  # (N,) how many rows have j as their best


def semidual_gradient(x, y, g, b, eps, cost, *, chunk_size=None, process_group=None, offset=0, gaps=False,
                      precision="highest", stream=False, validate=True, y_offsets=None):
    """SemidualEstimate of the semi-dual F at g on the source batch x.

    ``validate=False`` skips the ops' checks of the data (the fit's steps: it draws x itself and
    checks g when it logs), so that a step reads nothing back to the host.

    With ``gaps``, ``gap_sums[j]`` adds up, over the rows whose best score is j's, the gap
    between their best and second-best score <x_i, y_j> + h_j (h = dot_bias(g, y, cost, b)): the mean gap
    of j's rows is the change of g_j that moves about its whole mass, which scales a Newton
    step (the sampler's "newton" optimiser); the search is then a top-2 MIPS. With a
    `process_group` (every rank passing the same x), y, g and b are this rank's shard and the
    per-point results are its slice; the value is the global one.
    """
    n, m = x.shape[0], y.shape[0]
    alpha = costs.cost_offsets(x.double(), cost)
    counts = torch.zeros(m, dtype=torch.float64, device=g.device)
    gap_sums = gap_counts = None
    if gaps:  # the top-2 search also gives the hard assignment
        top, best_index = _top_two(x, y, g, b, cost, chunk_size, process_group, offset, precision, stream, validate,
                                   y_offsets)
        best = top[:, 0]
    elif eps == 0:
        best, best_index = _best(x, y, g, b, 0.0, cost, chunk_size, None, offset, precision, stream, validate,
                                 y_offsets)
        if process_group is not None:
            best, best_index = merge_rules.best_over_ranks(best, best_index, process_group)
    if gaps or eps == 0:
        # Rows won by another rank's points add 0 at a clamped index: a masked selection or a
        # bincount would read its size back to the host (the counts are whole numbers, exact
        # in any order).
        best_index = best_index.to(g.device)
        mine = (best_index >= offset) & (best_index < offset + m)
        local = (best_index - offset).clamp(0, m - 1)
        hits = torch.zeros_like(counts).index_add_(0, local, mine.to(counts.dtype))
    if gaps:
        row_gap = (top[:, 0] - top[:, 1]).to(g.device)
        row_gap = torch.where(torch.isfinite(row_gap) & mine, row_gap, 0.0)  # a single target: no runner-up
        gap_sums = torch.zeros(m, dtype=torch.float64, device=g.device).index_add_(0, local, row_gap)
        gap_counts = hits
    if eps == 0:
        counts += hits
        f = alpha - best
    else:
        # Row log-sum-exps over the chunks (and ranks) first, then each chunk's column sums
        # of the row softmax: sum_i exp(<x_i, y_j> / eps + h_j - lse_i).
        biases = []

        def chunk_lses():
            for (c0, c1), y_c in _target_chunks(x, y, chunk_size, stream):
                b_c = _on(b[c0:c1], x.device)
                h_c = _chunk_bias(g, y_c, cost, b, y_offsets, c0, c1, x.device) / eps + b_c.log().to(x.dtype)
                biases.append(h_c)
                yield lse(x, y_c, h_c, 1.0 / eps, precision=precision, validate=validate)

        row_lse = merge_rules.lse_of(chunk_lses(), x.new_empty(n, dtype=torch.float64))
        if process_group is not None:
            row_lse = merge_rules.lse_over_ranks(row_lse, process_group)
        for ((c0, c1), y_c), h_c in zip(_target_chunks(x, y, chunk_size, stream), biases):
            col_lse = lse(y_c, x, (-row_lse).to(x.dtype), 1.0 / eps, precision=precision, validate=validate).double()
            counts[c0:c1] += _on(torch.exp(h_c.double() + col_lse), g.device)
        f = alpha - eps * row_lse
    b64 = b.double()
    gradient = b64 - counts / n
    g_dot_b = g.double() @ b64
    if process_group is not None:
        g_dot_b = distributed.all_sum(g_dot_b.reshape(1), process_group)[0]
    value = f.mean().to(g.device) + g_dot_b
    return SemidualEstimate(gradient, value, counts, gap_sums, gap_counts)


def marginal_chi2(counts, b, total, process_group=None):
    """Chi-square marginal error sum_j (p_j - b_j)^2 / b_j of assignment frequencies p.

    `counts` (N,) are hard-assignment counts over `total` independent source samples; the
    multinomial noise of the frequencies is removed (an unbiased estimate, which can dip
    slightly below 0 near the optimum), so the number does not floor at (N - 1) / total.
    With a `process_group`, counts and b are this rank's slice and the sum runs over all ranks.
    """
    b64 = b.double().to(counts.device)
    p = counts.double() / total
    noise = p * (1 - p) / max(total - 1, 1)
    # A zero-weight point contributes nothing when it gets no mass, infinity when it does.
    terms = torch.where(b64 > 0, ((p - b64) ** 2 - noise) / b64.clamp_min(1e-300), torch.where(p > 0, math.inf, 0.0))
    chi2 = terms.sum()
    if process_group is not None:
        chi2 = distributed.all_sum(chi2.reshape(1), process_group)[0]
    return float(chi2)


def nearest(points, centers, *, chunk_size=None, precision="highest"):
    """LongTensor: the index of the Euclidean-nearest row of `centers` for each row of `points`
    (ties to the lowest index), one MIPS with the bias -|c_k|^2 / 2. `points` may sit on the CPU
    while `centers` are on the device; they are moved over in blocks of `chunk_size` rows (16-bit
    ones searched in float32, like the ops)."""
    zero = torch.zeros(centers.shape[0], dtype=torch.float64, device=centers.device)
    dtype = torch.promote_types(centers.dtype, torch.float32)
    out = []
    for r0, r1 in _chunks(points.shape[0], chunk_size):
        block = _on(points[r0:r1], centers.device, dtype)
        out.append(_best(block, centers, zero, None, 0.0, "sqeuclidean", chunk_size, None, 0, precision)[1].cpu())
    return torch.cat(out)


def extend_potential(points, centers, g_centers, barycenters, index, cost):
    """A potential for `points` from one fitted on `centers` (a coarser data set), float64.

    The dot-cost bias h = dot_bias(g) is minus the convex conjugate of the Brenier potential
    phi(x) = max_k <x, c_k> + h_k, and the gradient of that conjugate at c_k is the point of the
    source mapped to c_k, which the cell's barycenter stands for. Each point y_j takes its centre
    k = index[j] (normally the nearest) and the first-order expansion
    h_j = h_k - <barycenter_k, y_j - c_k>, so the coarse fit's long-range transport is kept and
    only local corrections are left to the fine fit (an empty cell's barycenter of 0 falls back
    to copying h_k).
    """
    centers, points = centers.double(), points.double()
    index = index.to(points.device)
    h = dot_bias(g_centers.double().to(centers.device), centers, cost).to(points.device)
    offset = points - centers.to(points.device)[index]
    h = h[index] - (offset * barycenters.double().to(points.device)[index]).sum(1)
    return h + costs.cost_offsets(points, cost)
