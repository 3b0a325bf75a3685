"""ot_flow.ops.lse: streaming row log-sum-exp of biased, scaled dot products."""

import torch

__all__ = ["lse"]


def lse(x, y, h=None, scale=1.0):
    """Row log-sum-exp ``out_i = log sum_j exp(scale * <x_i, y_j> + h_j)``, without an n x m matrix.

    Args:
        x: (n, d) float32/float64 points.
        y: (m, d) points, same dtype and device as ``x``.
        h: optional (m,) bias; ``-inf`` entries drop their column. Default zeros.
        scale: the factor ``s`` on the dot products (``1/eps`` in Sinkhorn).

    Returns:
        (n,) tensor, dtype and device of ``x``. A row whose every bias is ``-inf`` gives ``-inf``.
    """
    return torch.ops.ot_flow.lse.default(x, y, h, float(scale))


@torch.library.register_fake("ot_flow::lse")
def _lse_fake(x, y, h=None, scale=1.0):
    torch._check(x.dim() == 2 and y.dim() == 2, lambda: "ot_flow.lse: 'x' and 'y' must be 2-D")
    torch._check(x.shape[1] == y.shape[1], lambda: "ot_flow.lse: 'x' and 'y' must have the same dimension")
    torch._check(x.dtype == y.dtype, lambda: "ot_flow.lse: 'x' and 'y' must have one dtype")
    if h is not None:
        torch._check(h.shape == (y.shape[0],), lambda: "ot_flow.lse: 'h' must have shape (m,)")
    return x.new_empty(x.shape[0])
