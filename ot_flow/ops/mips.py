"""ot_flow.ops.mips: exact biased maximum inner-product search, top-1 or top-k, streamed."""

import torch

from ot_flow.ops import _args, precision as _precision

__all__ = ["mips"]


def mips(x, y, bias=None, k=1, *, precision="highest", validate=True):
    """For each query ``x_i`` the ``k`` largest ``<x_i, y_j> + bias_j`` and their indices ``j``.

    One pass of GEMM tiles with the selection fused: no n x m buffer. Exact, and deterministic:
    values sorted descending, ties to the lowest j. Columns whose bias is -inf are never
    returned (when fewer than k remain, the tail is value -inf, index -1).

    Args:
        x: (n, d) float16/bfloat16/float32/float64 queries (16-bit ones computed in float32).
        y: (m, d) keys, same dtype and device.
        bias: optional (m,) bias; the semidiscrete potential (minus |y_j|^2 / 2 for the
            squared Euclidean cost) when pairing noise with data.
        k: how many per query, 1 <= k <= m (at most 64 on CUDA).
        precision: how the dot products are formed, ``"highest"``, ``"tf32"`` or ``"bf16"`` (see
            :mod:`ot_flow.ops.precision`); a coarser mode may swap near-ties (not on the CUDA
            engine, which rescores every candidate in float64).
        validate: ``False`` skips the checks that read the values of the inputs (NaN, Inf, the
            range of the scores; a host synchronisation per call on CUDA), as
            :func:`ot_flow.ops.lse`'s: for callers that checked the data once (the solvers).

    Returns:
        ``(values, indices)``: (n, k) in x's dtype (float32 for float16/bfloat16 inputs) and (n, k)
        int64. The values are differentiable in ``x``, ``y`` and ``bias`` (the gradient of the
        selected scores, in the inputs' dtypes; the selection itself is piecewise constant).
    """
    op = "ot_flow.mips"
    return torch.ops.ot_flow.mips.default(x, y, bias, _args.integer(op, "k", k), _precision.checked(op, precision),
                                          bool(validate))


@torch.library.register_fake("ot_flow::mips")
def _mips_fake(x, y, bias=None, k=1, precision="highest", validate=True):
    _args.streaming_inputs("ot_flow.mips", x, y, bias, "bias")
    _precision.checked("ot_flow.mips", precision)
    torch._check(1 <= k <= y.shape[0], lambda: "ot_flow.mips: argument 'k' must lie in [1, m]")
    n = x.shape[0]
    return x.new_empty(n, k, dtype=_args.result_dtype(x.dtype)), x.new_empty(n, k, dtype=torch.long)


# Autograd of the values, values_ik = <x_i, y_j> + bias_j at j = indices_ik: the selection is
# piecewise constant, so the gradient flows to the selected rows of y and entries of bias
# (index_add, differentiable again), computed in the values' dtype and cast back to the inputs'.
# Empty slots (index -1, value -inf) carry none.


def _setup_context(ctx, inputs, output):
    x, y, bias = _args.padded(inputs, (None, None, None))[:3]
    ctx.n_inputs = len(inputs)
    _, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, y, bias if bias is not None else y.new_zeros(y.shape[0]), indices)


def _backward(ctx, grad_values, _):
    inputs = ctx.saved_tensors[:3]
    x, y = _args.upcast(*inputs[:2])
    indices = ctx.saved_tensors[3]
    # needs_input_grad omits trailing arguments left at their defaults (bias=None, k=1).
    need_x, need_y, need_bias = (*ctx.needs_input_grad, False)[:3]
    live = indices >= 0
    j = torch.where(live, indices, 0).flatten()
    g = torch.where(live, grad_values, 0)
    grad_x = grad_y = grad_bias = None
    if need_x:
        grad_x = (g[:, :, None] * y[j].view(*indices.shape, -1)).sum(1)
    if need_y:
        grad_y = torch.zeros_like(y).index_add(0, j, (g[:, :, None] * x[:, None, :]).flatten(0, 1))
    if need_bias and ctx.has_bias:
        grad_bias = y.new_zeros(y.shape[0]).index_add(0, j, g.flatten())
    return (*_args.like_inputs((grad_x, grad_y, grad_bias), inputs), None, None, None)[:ctx.n_inputs]


torch.library.register_autograd("ot_flow::mips", _backward, setup_context=_setup_context)
