"""ot_flow.ops.lse_dense: log-sum-exp over a precomputed matrix of dot products (cached path)."""

import torch

from ot_flow.ops import _args

__all__ = ["lse_dense"]


def lse_dense(dots, h, scale, dim, shift=None, *, validate=True):
    """``log sum exp(scale * dots + h)`` along ``dim`` of a (n, m) matrix, one fused pass.

    ``dim=1``: out_i over j with h of length m; ``dim=0``: out_j over i with h of length n.
    ``-inf`` in ``h`` drops that row or column. ``shift``, optional, is a guess of the result
    (a previous iterate's): the CPU kernel then skips its max pass where the guess is good
    enough; the result is the same either way. The Sinkhorn solver's cached-cost path: with
    ``dots = x @ y.T`` held in memory, a half-iteration costs no GEMM. Differentiable in ``dots`` and
    ``h`` (any order; ``shift`` only guides the computation and gets no gradient).
    ``validate=False`` skips the checks that read the data (NaN/Inf in h, shift and the result),
    as :func:`ot_flow.ops.lse`'s: the Sinkhorn loop's calls, no host synchronisation on CUDA.

    Batched: ``dots`` (B, n, m) holds B problems, ``h`` and ``shift`` are (B, len), ``dim`` an
    axis of each matrix, ``scale`` one number or B numbers (a list, tuple or 1-D tensor; the
    op's ``scales``), and the result is (B, len). Problem b is computed as the 2-D call on
    ``(dots[b], h[b], scale[b])``, which it equals bitwise (the batched Sinkhorn's cached path).
    """
    op = "ot_flow.lse_dense"
    scale, scales = _args.per_problem(op, "scale", scale, dots)
    return torch.ops.ot_flow.lse_dense.default(dots, h, scale, _args.integer(op, "dim", dim), shift, bool(validate),
                                               scales)


@torch.library.register_fake("ot_flow::lse_dense")
def _lse_dense_fake(dots, h, scale, dim, shift=None, validate=True, scales=None):
    _args.same_device("ot_flow.lse_dense", dots=dots, h=h, shift=shift)
    torch._check(dots.dim() in (2, 3), lambda: "ot_flow.lse_dense: 'dots' must be 2-D, or 3-D (batched)")
    torch._check(dim in (0, 1, -1, -2), lambda: "ot_flow.lse_dense: 'dim' must be 0 or 1")
    torch._check(scales is None or dots.dim() == 3, lambda: "ot_flow.lse_dense: 'scales' is for batched 'dots'")
    return dots.new_empty((*dots.shape[:-2], dots.shape[-1 if dim in (0, -2) else -2]))


# Autograd: with L = scale * dots + h (h along dim 1 - dim) and w = exp(L - out) the softmax
# along dim, grad dots = scale * grad * w and grad h = the sum of grad * w along the other dim.
# Dense n x m tensors, like dots itself; plain torch ops, so differentiable again. Batched: the
# same per problem (leading axis), each with its own scale.


def _setup_context(ctx, inputs, output):
    dots, h, scale, dim, _, _, scales = _args.padded(inputs, (None, None, None, None, None, True, None))
    ctx.scale, ctx.scales = scale, scales
    ctx.dim = dim % 2
    ctx.n_inputs = len(inputs)
    ctx.save_for_backward(dots, h, output)


def _backward(ctx, grad):
    dots, h, out = ctx.saved_tensors
    along = ctx.dim
    if along == 0:  # h along the rows (axis -2), out and grad along the columns (axis -1)
        h_b, out_b, grad_b = h[..., :, None], out[..., None, :], grad[..., None, :]
    else:
        h_b, out_b, grad_b = h[..., None, :], out[..., :, None], grad[..., :, None]
    # A line whose every bias is -inf (out = -inf) has no mass and no gradient.
    shift = torch.where(torch.isfinite(out_b), out_b, 0)
    weighted = grad_b * torch.exp(_args.scaled(dots, ctx.scale, ctx.scales) + h_b - shift)
    grad_dots = _args.scaled(weighted, ctx.scale, ctx.scales) if ctx.needs_input_grad[0] else None
    grad_h = weighted.sum(-1 if along == 0 else -2) if ctx.needs_input_grad[1] else None
    return (grad_dots, grad_h, None, None, None, None, None)[:ctx.n_inputs]


torch.library.register_autograd("ot_flow::lse_dense", _backward, setup_context=_setup_context)
