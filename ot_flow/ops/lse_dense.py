"""ot_flow.ops.lse_dense: log-sum-exp over a precomputed matrix of dot products (cached path)."""

import torch

__all__ = ["lse_dense"]


def lse_dense(dots, h, scale, dim, shift=None):
    """``log sum exp(scale * dots + h)`` along ``dim`` of a (n, m) matrix, one fused pass.

    ``dim=1``: out_i over j with h of length m; ``dim=0``: out_j over i with h of length n.
    ``-inf`` in ``h`` drops that row or column. ``shift``, optional, is a guess of the result
    (a previous iterate's): the CPU kernel then skips its max pass where the guess is good
    enough; the result is the same either way. The Sinkhorn solver's cached-cost path: with
    ``dots = x @ y.T`` held in memory, a half-iteration costs no GEMM. Not differentiable.
    """
    return torch.ops.ot_flow.lse_dense.default(dots, h, float(scale), int(dim), shift)


@torch.library.register_fake("ot_flow::lse_dense")
def _lse_dense_fake(dots, h, scale, dim, shift=None):
    torch._check(dots.dim() == 2, lambda: "ot_flow.lse_dense: 'dots' must be 2-D")
    torch._check(dim in (0, 1, -1, -2), lambda: "ot_flow.lse_dense: 'dim' must be 0 or 1")
    return dots.new_empty(dots.shape[1 if dim in (0, -2) else 0])
