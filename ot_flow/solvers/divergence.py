"""The debiased Sinkhorn divergence, differentiable through the envelope theorem.

S(a, b) = OT(a, b) - OT(a, a) / 2 - OT(b, b) / 2 with OT the entropic dual value
<a, f> + <b, g> at the optimum. Its gradients need no unrolled loop: d OT / d x_i =
sum_j P_ij grad_x C(x_i, y_j), which for both costs gives
    grad_x S = a_i (T_aa(x_i) - T_ab(x_i)),   grad_a S = f_ab - f_aa
with T the barycentric maps of the couplings (one streaming pass each), and likewise for y, b.
"""

import torch

from ot_flow.solvers import costs, validation
from ot_flow.solvers.full_precision import autocast_off
from ot_flow.solvers.sinkhorn import row_barycentres, sinkhorn
from ot_flow.solvers.symmetric import symmetric_potential

__all__ = ["sinkhorn_divergence"]


@autocast_off
def sinkhorn_divergence(x, y, a=None, b=None, *, eps=0.05, relative_eps=True, cost="sqeuclidean",
                        tol=1e-4, max_iter=10_000):
    """Debiased Sinkhorn divergence between point clouds (weights a, b), >= 0, zero when equal.

    Differentiable in x, y, a and b (first order; exact for the entropic problem at the solved
    potentials, by the envelope theorem). ``eps`` is relative to std(C(x, y)) when
    ``relative_eps``; the three problems share the absolute eps, and the gradients hold that
    absolute eps fixed: they are those of S at eps = (relative eps) x std(C) of the current points,
    not of the points' influence on std(C). Half and bfloat16 points are solved in float32.
    Returns a 0-dim tensor of x's dtype.
    """
    validation.check_pair(x, y)
    costs.check_cost(cost)
    eps = validation.positive("eps", eps)
    tol = validation.positive("tol", tol)
    wa = validation.weights("a", a, x.shape[0], x)
    wb = validation.weights("b", b, y.shape[0], y)
    if relative_eps:
        eps = eps * (costs.cost_std(x.detach(), y.detach(), wa, wb, cost) or 1.0)
    # Weights travel in float64 (a half-precision copy would no longer sum to 1), points in
    # float32 at least; the casts are differentiable, so gradients reach the caller's tensors.
    a = wa if a is None else a.double()
    b = wb if b is None else b.double()
    work_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    maps = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    value, *_ = torch.ops.ot_flow.sinkhorn_divergence(x.to(work_dtype), y.to(work_dtype), a, b, eps, cost,
                                                      tol, max_iter, maps)
    return value.to(x.dtype)


@torch.library.custom_op("ot_flow::sinkhorn_divergence", mutates_args=())
def _divergence(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, cost: str,
                tol: float, max_iter: int, maps: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                        torch.Tensor, torch.Tensor, torch.Tensor,
                                                                        torch.Tensor]:
    """(S, f_ab, g_ab, p_aa, p_bb, dS/dx, dS/dy): the value, the potentials (float64) and, with
    ``maps``, the gradients in the points (empty without): they need the solved couplings'
    barycentric maps, passes made here so that the backward is arithmetic (and traces)."""
    ab = sinkhorn(x, y, a, b, eps=eps, relative_eps=False, cost=cost, tol=tol, max_iter=max_iter)
    # The debiasing terms are symmetric problems: one potential each, by the averaged iteration.
    aa = symmetric_potential(x, a.detach(), eps=eps, cost=cost, tol=tol, max_iter=max_iter)
    bb = symmetric_potential(y, b.detach(), eps=eps, cost=cost, tol=tol, max_iter=max_iter)
    f_ab, g_ab = ab.working.potentials_out(torch.float64)  # not rounded to the points' dtype
    value = a @ (f_ab - aa.p) + b @ (g_ab - bb.p)
    if maps:
        t_ba = row_barycentres(y, x, f_ab, a, eps, cost)
        grad_x = a[:, None] * (aa.barycentric_map().double() - ab.barycentric_map().double())
        grad_y = b[:, None] * (bb.barycentric_map().double() - t_ba.double())
    else:
        grad_x, grad_y = x.new_empty(0, x.shape[1]), y.new_empty(0, y.shape[1])
    return value.to(x.dtype), f_ab, g_ab, aa.p, bb.p, grad_x.to(x.dtype), grad_y.to(y.dtype)


@_divergence.register_fake
def _(x, y, a, b, eps, cost, tol, max_iter, maps=True):
    def potential(n):
        return x.new_empty(n, dtype=torch.float64)

    return (x.new_empty(()), potential(x.shape[0]), potential(y.shape[0]), potential(x.shape[0]),
            potential(y.shape[0]), x.new_empty(x.shape[0] if maps else 0, x.shape[1]),
            y.new_empty(y.shape[0] if maps else 0, y.shape[1]))


def _setup_context(ctx, inputs, output):
    maps = inputs[8] if len(inputs) > 8 else True
    _, f_ab, g_ab, p_aa, p_bb, grad_x, grad_y = output
    ctx.maps = maps
    ctx.save_for_backward(f_ab, g_ab, p_aa, p_bb, grad_x, grad_y)


def _backward(ctx, grad, *_unused_output_grads):
    f_ab, g_ab, p_aa, p_bb, dx, dy = ctx.saved_tensors
    need_x, need_y, need_a, need_b = ctx.needs_input_grad[:4]
    if (need_x or need_y) and not ctx.maps:
        raise RuntimeError("ot_flow.sinkhorn_divergence: gradients in the points need maps=True")
    grad_x = grad * dx if need_x else None
    grad_y = grad * dy if need_y else None
    grad_a = grad * (f_ab - p_aa) if need_a else None
    grad_b = grad * (g_ab - p_bb) if need_b else None
    return grad_x, grad_y, grad_a, grad_b, None, None, None, None, None


_divergence.register_autograd(_backward, setup_context=_setup_context)
