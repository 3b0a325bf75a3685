"""ot_flow.ops.softmin: the eps-scaled c-transform (Sinkhorn update) for the dot cost."""

import torch

from ot_flow.ops import _args, precision as _precision

__all__ = ["softmin"]


def softmin(x, y, g, eps, log_weights=None, *, precision="highest", validate=True):
    """``out_i = -eps log sum_j exp((g_j + <x_i, y_j>) / eps + log_weights_j)``, streamed.

    This is the soft minimum over j of ``C_ij - g_j`` for the cost ``C = -<x, y>``: one Sinkhorn
    half-step. A composite of :func:`ot_flow.ops.lse` (same kernels, fake kernel and autograd).

    Batched: x (B, n, d), y (B, m, d), g and log_weights (B, m), and ``eps`` one number or B
    numbers (list, tuple or 1-D tensor; the op's ``epsilons``): one batched lse call, out (B, n),
    problem b bitwise the 2-D call on it (CPU).

    ``precision`` (``"highest"``, ``"tf32"`` or ``"bf16"``) is lse's, see :mod:`ot_flow.ops.precision`.
    Output in x's dtype, or float32 for float16/bfloat16 inputs (computed in float32, as lse).
    ``validate=False`` skips the checks that read the data, as lse's (the Sinkhorn loop's calls:
    no host synchronisation on CUDA).
    """
    eps, epsilons = _args.per_problem("ot_flow.softmin", "eps", eps, x)
    precision = _precision.checked("ot_flow.softmin", precision)
    return torch.ops.ot_flow.softmin.default(x, y, g, eps, log_weights, epsilons, precision, bool(validate))
