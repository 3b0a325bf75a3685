"""ot_flow.ops.barycentric: softmax-weighted sums along the rows of an implicit kernel."""

import torch

__all__ = ["barycentric"]


def barycentric(x, y, h=None, scale=1.0, values=None):
    """Softmax-weighted sums ``out_i = sum_j w_ij values_j`` with
    ``w_ij = exp(scale * <x_i, y_j> + h_j - lse_i)``, and ``lse_i`` itself; no n x m matrix.

    With ``values=None`` (meaning ``y``) and ``h = g / eps + log b``, ``scale = 1 / eps``, this is
    the barycentric projection of a Sinkhorn coupling: ``out_i = sum_j P_ij y_j / sum_j P_ij``.

    Returns:
        ``(out, lse)``: (n, k) and (n,) tensors with the dtype and device of ``x``. A row whose
        every bias is ``-inf`` gets ``out = 0`` and ``lse = -inf``.
    """
    return torch.ops.ot_flow.barycentric.default(x, y, h, float(scale), values)


@torch.library.register_fake("ot_flow::barycentric")
def _barycentric_fake(x, y, h=None, scale=1.0, values=None):
    torch._check(x.dim() == 2 and y.dim() == 2, lambda: "ot_flow.barycentric: 'x' and 'y' must be 2-D")
    torch._check(x.shape[1] == y.shape[1], lambda: "ot_flow.barycentric: 'x' and 'y' must have the same dimension")
    k = y.shape[1] if values is None else values.shape[1]
    if values is not None:
        torch._check(values.shape[0] == y.shape[0], lambda: "ot_flow.barycentric: 'values' must have m rows")
    return x.new_empty(x.shape[0], k), x.new_empty(x.shape[0])
