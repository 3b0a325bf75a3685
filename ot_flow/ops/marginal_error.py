"""ot_flow.ops.marginal_error: the 1-norm marginal error that a Sinkhorn half-step measures."""

import torch

from ot_flow.ops import _args

__all__ = ["marginal_error"]


def marginal_error(current, updated, weights, scale):
    """``sum_i weights_i |expm1(scale (current_i - updated_i))|`` in float64, one call.

    For ``updated = softmin(g)`` of a potential whose current value is ``current`` (f), the plan
    (f, g) has row sums ``a_i exp((f_i - updated_i) / eps)``: with ``weights = a`` and ``scale =
    1 / eps`` this is its marginal error ``|P 1 - a|_1``, the Sinkhorn solvers' stopping rule (the
    unbalanced solver passes its target masses and ``1 / (tau eps)``). Not differentiable: a
    diagnostic, whose result does not require grad (as argmax's). A NaN or infinite entry of
    ``current`` or ``updated`` makes the result NaN (a +inf potential would otherwise add a
    finite ``weights_i``), which the solvers read as non-finite potentials.

    Batched: ``current``, ``updated``, ``weights`` (B, n) and ``scale`` one number or B numbers
    (the op's ``scales``): one error per problem, (B,). ``current`` and ``updated`` float32 or
    float64 of one dtype; ``weights`` float32 or float64.
    """
    scale, scales = _args.per_problem("ot_flow.marginal_error", "scale", scale, current, batched_dim=2)
    return torch.ops.ot_flow.marginal_error.default(current, updated, weights, scale, scales)


@torch.library.register_fake("ot_flow::marginal_error")
def _marginal_error_fake(current, updated, weights, scale, scales=None):
    _args.same_device("ot_flow.marginal_error", current=current, updated=updated, weights=weights)
    torch._check(current.dim() in (1, 2), lambda: "ot_flow.marginal_error: 'current' must be 1-D, or 2-D (batched)")
    torch._check(scales is None or current.dim() == 2,
                 lambda: "ot_flow.marginal_error: 'scales' is for batched inputs")
    return current.new_empty(current.shape[:-1], dtype=torch.float64)
