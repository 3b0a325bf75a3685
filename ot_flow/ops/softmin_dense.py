"""ot_flow.ops.softmin_dense: the Sinkhorn half-step over a precomputed matrix of dot products."""

import torch

from ot_flow.ops import _args

__all__ = ["softmin_dense"]


def softmin_dense(dots, g, eps, dim, log_weights=None, current=None, *, validate=True):
    """The dense twin of :func:`ot_flow.ops.softmin`, one call:

    ``dim=1``: ``out_i = -eps log sum_j exp((g_j + dots_ij) / eps + log_weights_j)`` (g of length m);
    ``dim=0``: ``out_j = -eps log sum_i exp((g_i + dots_ij) / eps + log_weights_i)`` (g of length n),

    i.e. ``-eps * lse_dense(dots, g / eps + log_weights, 1 / eps, dim, shift=current / -eps)``:
    the cached-cost Sinkhorn half-step (dots = x @ y.T held in memory), whose scalings were five
    small ops around lse_dense. ``current``, optional, is the current iterate of the output (the
    shift hint of :func:`ot_flow.ops.lse_dense`: the result depends on it only in its rounding,
    and it gets no gradient). Differentiable in ``dots``, ``g`` and ``log_weights``. ``validate=False`` skips
    the checks that read the data (the Sinkhorn loop's calls).

    Batched: ``dots`` (B, n, m), ``g``, ``log_weights``, ``current`` (B, len), ``eps`` one number or
    B numbers (the op's ``epsilons``); problem b is computed as the 2-D call on it, bitwise.
    """
    op = "ot_flow.softmin_dense"
    eps, epsilons = _args.per_problem(op, "eps", eps, dots)
    return torch.ops.ot_flow.softmin_dense.default(dots, g, eps, _args.integer(op, "dim", dim), log_weights, current,
                                                   epsilons, bool(validate))


@torch.library.register_fake("ot_flow::softmin_dense")
def _softmin_dense_fake(dots, g, eps, dim, log_weights=None, current=None, epsilons=None, validate=True):
    _args.same_device("ot_flow.softmin_dense", dots=dots, g=g, log_weights=log_weights, current=current)
    torch._check(dots.dim() in (2, 3), lambda: "ot_flow.softmin_dense: 'dots' must be 2-D, or 3-D (batched)")
    torch._check(dim in (0, 1, -1, -2), lambda: "ot_flow.softmin_dense: 'dim' must be 0 or 1")
    torch._check(epsilons is None or dots.dim() == 3,
                 lambda: "ot_flow.softmin_dense: 'epsilons' is for batched 'dots'")
    return dots.new_empty((*dots.shape[:-2], dots.shape[-1 if dim in (0, -2) else -2]))


# Autograd: out = -e L with L = lse of z = (dots + g) / e + log_w along the reduced axis and
# w = exp(z - L) its softmax weights: d out / d dots = d out / d g = -w, d out / d log_w = -e w.
# Dense n x m tensors, like dots itself; plain torch ops, so differentiable again.


def _setup_context(ctx, inputs, output):
    dots, g, eps, dim, log_weights, _, epsilons, _ = _args.padded(inputs, (None,) * 4 + (None, None, None, True))
    ctx.eps, ctx.epsilons, ctx.dim = eps, epsilons, dim % 2
    ctx.has_log_weights = log_weights is not None
    ctx.n_inputs = len(inputs)
    ctx.save_for_backward(dots, g, log_weights if log_weights is not None else g.new_zeros(()), output)


def _backward(ctx, grad):
    dots, g, log_weights, out = ctx.saved_tensors
    eps = (torch.tensor(ctx.epsilons, dtype=dots.dtype, device=dots.device)[:, None]
           if ctx.epsilons is not None else torch.tensor(ctx.eps, dtype=dots.dtype, device=dots.device))
    bias = g / eps + log_weights
    lse = out / -eps
    lse = torch.where(torch.isfinite(lse), lse, 0)  # a line whose every bias is -inf has no mass and no gradient
    e3 = eps[..., None]  # against (B, n, m) or, for one problem, a 0-dim eps
    if ctx.dim == 1:  # g along the columns (axis -1), out along the rows (axis -2)
        z = dots / e3 + bias[..., None, :] - lse[..., :, None]
        weighted = -grad[..., :, None] * torch.exp(z)
        grad_g = weighted.sum(-2)
    else:
        z = dots / e3 + bias[..., :, None] - lse[..., None, :]
        weighted = -grad[..., None, :] * torch.exp(z)
        grad_g = weighted.sum(-1)
    grad_dots = weighted if ctx.needs_input_grad[0] else None
    grad_log_weights = eps * grad_g if ctx.has_log_weights and ctx.needs_input_grad[4] else None
    result = (grad_dots, grad_g if ctx.needs_input_grad[1] else None, None, None, grad_log_weights, None, None, None)
    return result[:ctx.n_inputs]


torch.library.register_autograd("ot_flow::softmin_dense", _backward, setup_context=_setup_context)
