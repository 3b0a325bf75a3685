"""ot_flow.ops.barycentric: softmax-weighted sums along the rows of an implicit kernel."""

import torch

from ot_flow.ops import _args, precision as _precision

__all__ = ["barycentric"]


def barycentric(x, y, h=None, scale=1.0, values=None, *, precision="highest"):
    """Softmax-weighted sums ``out_i = sum_j w_ij values_j`` with
    ``w_ij = exp(scale * <x_i, y_j> + h_j - lse_i)``, and ``lse_i`` itself; no n x m matrix.

    With ``values=None`` (meaning ``y``) and ``h = g / eps + log b``, ``scale = 1 / eps``, this is
    the barycentric projection of a Sinkhorn coupling: ``out_i = sum_j P_ij y_j / sum_j P_ij``.

    Batched: x (B, n, d), y (B, m, d), h (B, m), values (B, m, k) and ``scale`` one number or B
    numbers (list, tuple or 1-D tensor; the op's ``scales``), as for :func:`ot_flow.ops.lse`;
    out (B, n, k) and lse (B, n), problem b bitwise the 2-D call on it (CPU).

    ``precision`` (``"highest"``, ``"tf32"`` or ``"bf16"``): how the dot products are formed,
    see :mod:`ot_flow.ops.precision`. x, y, h and values share one dtype: float16, bfloat16,
    float32 or float64.

    Returns:
        ``(out, lse)``: (n, k) and (n,) tensors on the device of ``x``, in x's dtype, or float32
        for float16/bfloat16 inputs (computed in float32: torch autocast's rule for softmax). A
        row whose every bias is ``-inf`` gets ``out = 0`` and ``lse = -inf``.

    Differentiable in ``x``, ``y``, ``h`` and ``values``, to any order, batched too (see the
    autograd below); the gradients come back in the inputs' dtypes.
    """
    scale, scales = _args.per_problem("ot_flow.barycentric", "scale", scale, x)
    precision = _precision.checked("ot_flow.barycentric", precision)
    return torch.ops.ot_flow.barycentric.default(x, y, h, scale, values, scales, precision)


@torch.library.register_fake("ot_flow::barycentric")
def _barycentric_fake(x, y, h=None, scale=1.0, values=None, scales=None, precision="highest"):
    _args.streaming_inputs("ot_flow.barycentric", x, y, h, scales=scales, values=values)
    _precision.checked("ot_flow.barycentric", precision)
    k = y.shape[-1] if values is None else values.shape[-1]
    if values is not None:
        torch._check(values.shape[:-1] == y.shape[:-1], lambda: "ot_flow.barycentric: 'values' must have m rows")
    dtype = _args.result_dtype(x.dtype)
    return x.new_empty(*x.shape[:-1], k, dtype=dtype), x.new_empty(x.shape[:-1], dtype=dtype)


# Autograd. With L_ij = scale <x_i, y_j> + h_j, w_ij = exp(L_ij - lse_i), v = values (y when
# absent) and incoming gradients G_i (of out_i) and gl_i (of lse_i), the gradient with respect to
# L_ij is c_ij = w_ij (<G_i, v_j> + beta_i), beta_i = gl_i - <G_i, out_i>; so
#   grad x_i = scale (sum_j w_ij y_j v_j^T) G_i + scale beta_i sum_j w_ij y_j     (a pass along rows)
#   grad y_j = scale (sum_i w_ij x_i G_i^T) v_j + scale sum_i w_ij beta_i x_i     (along columns)
#   grad h_j = (sum_i w_ij G_i) . v_j + sum_i w_ij beta_i,   grad v_j = sum_i w_ij G_i
# Every weighted sum is itself a barycentric call (the outer products y_j v_j^T and x_i G_i^T as
# values, d * k columns), so the backward is differentiable again: double backward through
# barycentric, lse and softmin is exact, at d times the memory and work of a first-order pass.
# Batched calls run the same formulas with a leading problem dimension (the ``...`` below) and
# each problem's own scale (``_args.scaled``); the passes are batched calls, with the forward's
# precision. float16/bfloat16 inputs are upcast first (the forward computed in float32) and the
# gradients cast back to their dtypes.


def _setup_context(ctx, inputs, output):
    x, y, h, scale, values, scales, precision = _args.padded(inputs, (None, None, None, 1.0, None, None, "highest"))
    out, lse = output
    ctx.scale, ctx.scales, ctx.precision, ctx.n_inputs = scale, scales, precision, len(inputs)
    ctx.has_h = h is not None
    ctx.has_values = values is not None
    ctx.save_for_backward(x, y, h if h is not None else y.new_zeros(y.shape[:-1]),
                          values if values is not None else y, out, lse)


def _backward(ctx, grad_out, grad_lse):
    inputs = ctx.saved_tensors[:4]
    x, y, h, v = _args.upcast(*inputs)
    out, lse = ctx.saved_tensors[4:]
    s, ss, p = ctx.scale, ctx.scales, ctx.precision
    scale = s if ss is None else ss  # what the passes below take as their scale

    def scaled(t):
        return _args.scaled(t, s, ss)

    # needs_input_grad omits trailing arguments left at their defaults (values=None, scale=1.0).
    need_x, need_y, need_h, _, need_v = (*ctx.needs_input_grad, False, False, False)[:5]
    need_h = need_h and ctx.has_h
    need_v = need_v and ctx.has_values
    lead, (n, d), m, k = x.shape[:-2], x.shape[-2:], y.shape[-2], v.shape[-1]
    beta = grad_lse - (grad_out * out).sum(-1)
    grad_x = grad_y = grad_h = grad_v = None
    if need_x:
        pairs = (y[..., :, None] * v[..., None, :]).reshape(*lead, m, d * k)
        mean, _ = barycentric(x, y, h, scale, torch.cat([pairs, y], -1) if ctx.has_values else pairs, precision=p)
        mean_y = mean[..., d * k:] if ctx.has_values else out
        grad_x = scaled(torch.matmul(mean[..., : d * k].reshape(*lead, n, d, k), grad_out[..., None])[..., 0]
                        + beta[..., None] * mean_y)
    if need_y or need_h or need_v:
        # Column sums sum_i w_ij u_i: a barycentric pass from y's side with bias -lse_i, rescaled
        # by exp(h_j + its own lse_j) (as in lse's backward). Rows without mass carry no weight.
        row_bias = torch.where(torch.isfinite(lse), -lse, torch.full_like(lse, float("-inf")))
        u = torch.cat([(x[..., :, None] * grad_out[..., None, :]).reshape(*lead, n, d * k), beta[..., None] * x,
                       grad_out, beta[..., None]], -1)
        mean_u, col_lse = barycentric(y, x, row_bias, scale, u, precision=p)
        sums = torch.exp(h + col_lse)[..., None] * mean_u
        xg, bx, wg, wb = sums.split([d * k, d, k, 1], -1)
        if need_y:
            grad_y = scaled(torch.matmul(xg.reshape(*lead, m, d, k), v[..., None])[..., 0] + bx)
            if not ctx.has_values:
                grad_y = grad_y + wg
        if need_h:
            grad_h = (wg * v).sum(-1) + wb[..., 0]
        if need_v:
            grad_v = wg
    grad_x, grad_y, grad_h, grad_v = _args.like_inputs((grad_x, grad_y, grad_h, grad_v), inputs)
    return (grad_x, grad_y, grad_h, None, grad_v, None, None)[:ctx.n_inputs]


torch.library.register_autograd("ot_flow::barycentric", _backward, setup_context=_setup_context)
