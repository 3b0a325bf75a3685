"""Dense float64 references of the streaming ops, for small inputs only."""

import numpy as np
import torch


def lse_reference(x, y, h=None, scale=1.0):
    logits = scale * (x.double() @ y.double().T)
    if h is not None:
        logits = logits + h.double()
    return torch.logsumexp(logits, dim=1)


def dense_sinkhorn(cost, a, b, eps, iters=100_000, tol=1e-12):
    """Plain log-domain Sinkhorn on a dense float64 cost matrix: (f, g, P)."""
    cost, a, b = cost.double(), a.double(), b.double()
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    for _ in range(iters):
        f = -eps * torch.logsumexp((g[None, :] - cost) / eps + b.log()[None, :], dim=1)
        g = -eps * torch.logsumexp((f[:, None] - cost) / eps + a.log()[:, None], dim=0)
        plan = a[:, None] * b[None, :] * torch.exp((f[:, None] + g[None, :] - cost) / eps)
        if (plan.sum(1) - a).abs().sum() < tol:
            break
    return f, g, plan


def dense_plan(res):
    """The n x m matrix of a SinkhornResult's coupling, in float64."""
    from ot_flow.solvers.costs import cost_matrix

    c = cost_matrix(res.x.double(), res.y.double(), res.cost)
    return res.a[:, None] * res.b[None, :] * torch.exp((res.f.double()[:, None] + res.g.double()[None, :] - c) / res.eps)


# The Gumbel noise of ot_flow.gumbel_argmax (csrc/ops/gumbel_noise.h), written again in numpy:
# Philox4x32-10 keyed on a SplitMix64 hash of (seed, offset), counter (j // 4, i), word j % 4.
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, key):
    """Philox4x32-10 on arrays: counter a 4-tuple, key a 2-tuple of uint64 arrays of 32-bit values."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = (np.asarray(k, dtype=np.uint64) for k in key)
    with np.errstate(over="ignore"):
        for _ in range(10):
            p0 = np.uint64(0xD2511F53) * c0
            p1 = np.uint64(0xCD9E8D57) * c2
            c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & _MASK32, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _MASK32
            k0 = (k0 + np.uint64(0x9E3779B9)) & _MASK32
            k1 = (k1 + np.uint64(0xBB67AE85)) & _MASK32
    return c0, c1, c2, c3


def _mix64(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def gumbel_noise(seed, offset, rows, cols):
    """G[i, j] for the global row indices `rows` and column indices `cols` (float64, len(rows) x len(cols))."""
    with np.errstate(over="ignore"):
        key = _mix64(np.uint64(seed) ^ _mix64(np.uint64(offset) + np.uint64(0x9E3779B97F4A7C15)))
    i = np.asarray(rows, dtype=np.uint64)[:, None]
    j = np.asarray(cols, dtype=np.uint64)[None, :]
    block = j >> np.uint64(2)
    words = philox4x32_10(
        (block & _MASK32, block >> np.uint64(32), i & _MASK32, i >> np.uint64(32)),
        (key & _MASK32, key >> np.uint64(32)),
    )
    lane = (j & np.uint64(3)).astype(np.int64)
    bits = np.select([lane == k for k in range(4)], [np.broadcast_to(w, np.broadcast(i, j).shape) for w in words])
    u = (bits.astype(np.float64) + 0.5) * 2.0**-32
    return torch.from_numpy(-np.log(-np.log(u)))


def gumbel_argmax_reference(x, y, h, scale, seed, offset=0, row_offset=0, col_offset=0):
    """(index, perturbed logits) in float64: argmax_j scale <x_i, y_j> + h_j + G_ij."""
    logits = scale * (x.double() @ y.double().T)
    if h is not None:
        logits = logits + h.double()
    noise = gumbel_noise(seed, offset, np.arange(x.shape[0]) + row_offset, np.arange(y.shape[0]) + col_offset)
    perturbed = logits + noise
    return perturbed.argmax(dim=1), perturbed
