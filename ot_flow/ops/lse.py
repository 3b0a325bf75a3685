"""ot_flow.ops.lse: streaming row log-sum-exp of biased, scaled dot products, differentiable."""

import torch

from ot_flow.ops import _args, precision as _precision

__all__ = ["lse"]


def lse(x, y, h=None, scale=1.0, *, precision="highest", validate=True):
    """Row log-sum-exp ``out_i = log sum_j exp(scale * <x_i, y_j> + h_j)``, without an n x m matrix.

    Args:
        x: (n, d) float16/bfloat16/float32/float64 points, or (B, n, d): B independent problems
            (batched). float16/bfloat16 inputs are computed in float32.
        y: (m, d) points, same dtype and device as ``x``; batched (B, m, d).
        h: optional (m,) bias (batched (B, m)); ``-inf`` entries drop their column. Default zeros.
        scale: the factor ``s`` on the dot products (``1/eps`` in Sinkhorn). Batched: one number
            for every problem, or B numbers (a list, tuple or 1-D tensor), one per problem; the op
            receives them as its ``scales`` argument (``float[]``, host values).
        precision: how the dot products are formed, ``"highest"``, ``"tf32"`` or ``"bf16"``
            (see :mod:`ot_flow.ops.precision`; the CPU and float64 inputs compute every mode exactly).
        validate: ``False`` skips the checks that read the values of x, y and h (NaN, Inf and
            the range of the logits; shapes, dtypes and devices are always checked): on CUDA
            each such read waits for the device. For callers that checked the data once, as the
            Sinkhorn loop does; with bad data the result is then undefined.

    Returns:
        (n,) tensor (batched (B, n)) on the device of ``x``, in x's dtype, or float32 for
        float16/bfloat16 inputs (torch autocast's rule for logsumexp). A row whose every bias is
        ``-inf`` gives ``-inf``. Problem b of a batched call is bitwise the 2-D call on
        ``(x[b], y[b], h[b], scale[b])`` on the CPU (the batch is the outer task dimension of the
        tiling); on CUDA the problems run as a loop of 2-D launches on the current stream, or as
        one launch on the tensor-core engine (``OT_FLOW_CUDA_ENGINE=tensor_cores``).

    Differentiable in ``x``, ``y`` and ``h`` (batched too), to any order: the gradients are
    softmax-weighted sums, computed by two streaming ``barycentric`` passes, one along rows and
    one along columns; ``barycentric`` is differentiable itself, so ``create_graph=True`` (a
    gradient penalty) gives exact second derivatives, at about d times the work and memory of
    the first-order pass. The gradients come back in the inputs' dtypes.
    """
    scale, scales = _args.per_problem("ot_flow.lse", "scale", scale, x)
    return torch.ops.ot_flow.lse.default(x, y, h, scale, scales, _precision.checked("ot_flow.lse", precision),
                                         bool(validate))


@torch.library.register_fake("ot_flow::lse")
def _lse_fake(x, y, h=None, scale=1.0, scales=None, precision="highest", validate=True):
    _args.streaming_inputs("ot_flow.lse", x, y, h, scales=scales)
    _precision.checked("ot_flow.lse", precision)
    return x.new_empty(x.shape[:-1], dtype=_args.result_dtype(x.dtype))


def _setup_context(ctx, inputs, output):
    x, y, h, scale, scales, precision, _ = _args.padded(inputs, (None, None, None, 1.0, None, "highest", True))
    ctx.scale, ctx.scales, ctx.precision, ctx.n_inputs = scale, scales, precision, len(inputs)
    ctx.has_h = h is not None
    ctx.save_for_backward(x, y, h if h is not None else y.new_zeros(y.shape[:-1]), output)


def _backward(ctx, grad):
    """d lse_i = sum_j w_ij (scale <dx_i, y_j> + scale <x_i, dy_j> + dh_j), w the row softmax.
    Batched: the same per problem, with its own scale (``_args.scaled``)."""
    inputs = ctx.saved_tensors[:3]
    x, y, h = _args.upcast(*inputs)
    out = ctx.saved_tensors[3]
    s, ss, p = ctx.scale, ctx.scales, ctx.precision
    need_x, need_y, need_h = ctx.needs_input_grad[:3]
    grad_x = grad_y = grad_h = None
    if need_x:
        mean_y, _ = torch.ops.ot_flow.barycentric.default(x, y, h, s, None, ss, p)
        grad_x = _args.scaled(grad, s, ss)[..., None] * mean_y
    if need_y or (need_h and ctx.has_h):
        # Column sums sum_i grad_i w_ij [x_i, 1]: a barycentric pass from y's side with bias
        # -lse_i, rescaled by exp(h_j + its own lse_j). Rows without mass carry no weight.
        row_bias = torch.where(torch.isfinite(out), -out, torch.full_like(out, float("-inf")))
        values = torch.cat([grad[..., None] * x, grad[..., None]], dim=-1)
        mean_v, col_lse = torch.ops.ot_flow.barycentric.default(y, x, row_bias, s, values, ss, p)
        total = torch.exp(h + col_lse)[..., None] * mean_v
        if need_y:
            grad_y = _args.scaled(total[..., :-1], s, ss)
        if need_h and ctx.has_h:
            grad_h = total[..., -1]
    return (*_args.like_inputs((grad_x, grad_y, grad_h), inputs), None, None, None, None)[:ctx.n_inputs]


torch.library.register_autograd("ot_flow::lse", _backward, setup_context=_setup_context)
