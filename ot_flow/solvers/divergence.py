"""The debiased Sinkhorn divergence, differentiable through the envelope theorem.

S(a, b) = OT(a, b) - OT(a, a) / 2 - OT(b, b) / 2 with OT the entropic dual value
<a, f> + <b, g> at the optimum. Its gradients need no unrolled loop: d OT / d x_i =
sum_j P_ij grad_x C(x_i, y_j), which for both costs gives
    grad_x S = a_i (T_aa(x_i) - T_ab(x_i)),   grad_a S = f_ab - f_aa
with T the barycentric maps of the couplings (one streaming pass each), and likewise for y, b.
"""

import torch

from ot_flow.solvers import costs, validation
from ot_flow.solvers.sinkhorn import row_barycentres, sinkhorn
from ot_flow.solvers.symmetric import symmetric_potential

__all__ = ["sinkhorn_divergence"]


def sinkhorn_divergence(x, y, a=None, b=None, *, eps=0.05, relative_eps=True, cost="sqeuclidean",
                        tol=1e-4, max_iter=10_000):
    """Debiased Sinkhorn divergence between point clouds (weights a, b), >= 0, zero when equal.

    Differentiable in x, y, a and b (first order). ``eps`` is relative to std(C(x, y)) when
    ``relative_eps``; the three problems share the absolute eps. Returns a 0-dim tensor of x's dtype.
    """
    validation.check_pair(x, y)
    costs.check_cost(cost)
    eps = validation.positive("eps", eps)
    tol = validation.positive("tol", tol)
    wa = validation.weights("a", a, x.shape[0], x)
    wb = validation.weights("b", b, y.shape[0], y)
    if relative_eps:
        eps = eps * (costs.cost_std(x.detach(), y.detach(), wa, wb, cost) or 1.0)
    a = wa if a is None else a
    b = wb if b is None else b
    value, *_ = torch.ops.ot_flow.sinkhorn_divergence(x, y, a.to(x.dtype), b.to(x.dtype), eps, cost, tol, max_iter)
    return value


@torch.library.custom_op("ot_flow::sinkhorn_divergence", mutates_args=())
def _divergence(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, cost: str,
                tol: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S, f_ab, g_ab, p_aa, p_bb): the value and the potentials its gradients need."""
    ab = sinkhorn(x, y, a, b, eps=eps, relative_eps=False, cost=cost, tol=tol, max_iter=max_iter)
    # The debiasing terms are symmetric problems: one potential each, by the averaged iteration.
    p_aa = symmetric_potential(x, a.detach(), eps=eps, cost=cost, tol=tol, max_iter=max_iter).p
    p_bb = symmetric_potential(y, b.detach(), eps=eps, cost=cost, tol=tol, max_iter=max_iter).p
    a64, b64 = a.double(), b.double()
    value = a64 @ (ab.f.double() - p_aa.double()) + b64 @ (ab.g.double() - p_bb.double())
    return value.to(x.dtype), ab.f.to(x.dtype), ab.g.to(x.dtype), p_aa.to(x.dtype), p_bb.to(x.dtype)


@_divergence.register_fake
def _(x, y, a, b, eps, cost, tol, max_iter):
    return x.new_empty(()), x.new_empty(x.shape[0]), x.new_empty(y.shape[0]), x.new_empty(x.shape[0]), x.new_empty(y.shape[0])


def _setup_context(ctx, inputs, output):
    x, y, a, b, eps, cost, _, _ = inputs
    _, f_ab, g_ab, p_aa, p_bb = output
    ctx.eps, ctx.cost = eps, cost
    ctx.save_for_backward(x, y, a, b, f_ab, g_ab, p_aa, p_bb)


def _backward(ctx, grad, *_unused_potential_grads):
    x, y, a, b, f_ab, g_ab, p_aa, p_bb = ctx.saved_tensors
    eps, cost = ctx.eps, ctx.cost
    need_x, need_y, need_a, need_b = ctx.needs_input_grad[:4]
    grad_x = grad_y = grad_a = grad_b = None
    if need_x:
        t_ab, _ = row_barycentres(x, y, g_ab, b, eps, cost)
        t_aa, _ = row_barycentres(x, x, p_aa, a, eps, cost)
        grad_x = grad * a[:, None] * (t_aa - t_ab)
    if need_y:
        t_ba, _ = row_barycentres(y, x, f_ab, a, eps, cost)
        t_bb, _ = row_barycentres(y, y, p_bb, b, eps, cost)
        grad_y = grad * b[:, None] * (t_bb - t_ba)
    if need_a:
        grad_a = grad * (f_ab - p_aa)
    if need_b:
        grad_b = grad * (g_ab - p_bb)
    return grad_x, grad_y, grad_a, grad_b, None, None, None, None


_divergence.register_autograd(_backward, setup_context=_setup_context)
