"""ot_flow.ops.mips: exact biased maximum inner-product search, top-1 or top-k, streamed."""

import torch

__all__ = ["mips"]


def mips(x, y, bias=None, k=1):
    """For each query ``x_i`` the ``k`` largest ``<x_i, y_j> + bias_j`` and their indices ``j``.

    One pass of GEMM tiles with the selection fused: no n x m buffer. Exact, and deterministic:
    values sorted descending, ties to the lowest j. Columns whose bias is -inf are never
    returned (when fewer than k remain, the tail is value -inf, index -1).

    Args:
        x: (n, d) float32/float64 queries.
        y: (m, d) keys, same dtype and device.
        bias: optional (m,) bias; the semidiscrete potential (minus |y_j|^2 / 2 for the
            squared Euclidean cost) when pairing noise with data.
        k: how many per query, 1 <= k <= m (at most 64 on CUDA).

    Returns:
        ``(values, indices)``: (n, k) in x's dtype and (n, k) int64.
    """
    return torch.ops.ot_flow.mips.default(x, y, bias, int(k))


@torch.library.register_fake("ot_flow::mips")
def _mips_fake(x, y, bias=None, k=1):
    torch._check(x.dim() == 2 and y.dim() == 2, lambda: "ot_flow.mips: 'x' and 'y' must be 2-D")
    torch._check(x.shape[1] == y.shape[1], lambda: "ot_flow.mips: 'x' and 'y' must have the same dimension")
    torch._check(x.dtype == y.dtype, lambda: "ot_flow.mips: 'x' and 'y' must have one dtype")
    torch._check(1 <= k <= y.shape[0], lambda: "ot_flow.mips: argument 'k' must lie in [1, m]")
    if bias is not None:
        torch._check(bias.shape == (y.shape[0],), lambda: "ot_flow.mips: 'bias' must have shape (m,)")
    n = x.shape[0]
    return x.new_empty(n, k), x.new_empty(n, k, dtype=torch.long)
