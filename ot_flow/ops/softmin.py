"""ot_flow.ops.softmin: the eps-scaled c-transform (Sinkhorn update) for the dot cost."""

import torch

from ot_flow.ops import _args

__all__ = ["softmin"]


def softmin(x, y, g, eps, log_weights=None):
    """``out_i = -eps log sum_j exp((g_j + <x_i, y_j>) / eps + log_weights_j)``, streamed.

    This is the soft minimum over j of ``C_ij - g_j`` for the cost ``C = -<x, y>``: one Sinkhorn
    half-step. A composite of :func:`ot_flow.ops.lse` (same kernels, fake kernel and autograd).
    """
    return torch.ops.ot_flow.softmin.default(x, y, g, _args.real("ot_flow.softmin", "eps", eps), log_weights)
