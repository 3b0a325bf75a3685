"""The debiased Sinkhorn divergence, differentiable through the envelope theorem.

S(a, b) = OT(a, b) - OT(a, a) / 2 - OT(b, b) / 2 with OT the entropic dual value
<a, f> + <b, g> at the optimum. Its gradients need no unrolled loop: d OT / d x_i =
sum_j P_ij grad_x C(x_i, y_j), which for both costs gives
    grad_x S = a_i (T_aa(x_i) - T_ab(x_i)),   grad_a S = f_ab - f_aa
with T the barycentric maps of the couplings (one streaming pass each), and likewise for y, b.

Unbalanced (tau = rho / (rho + eps) < 1 on both sides; Sejourne et al. 2019): with the dual value

    OT(a, b) = <a, phi(f)> + <b, phi(g)> - eps <a x b, exp((f + g - C) / eps) - 1>,
    phi(f) = -rho (exp(-f / rho) - 1),

S = OT(a, b) - OT(a, a) / 2 - OT(b, b) / 2 + eps / 2 (m(a) - m(b))^2, whose last term is 0 here
(a and b are probability weights). At the optimum the row sums of P are r_i = a_i exp(-f_i / rho),
so the mass term is -eps (m(P) - 1), and the envelope theorem gives
    grad_x S = r^ab_i (grad alpha(x_i) - T_ab(x_i)) - r^aa_i (grad alpha(x_i) - T_aa(x_i)),
    grad_a S = psi(f_ab) - psi(p_aa),   psi(f) = -(rho + eps) (exp(-f / rho) - 1),
(grad alpha(x) = x for "sqeuclidean", 0 for "dot"), which are the balanced formulas at rho = inf.
"""

import torch

from ot_flow.ops import precision as op_precision
from ot_flow.solvers import costs, validation
from ot_flow.solvers.full_precision import autocast_off
from ot_flow.solvers.sinkhorn import sinkhorn
from ot_flow.solvers.working_problem import row_barycentres
from ot_flow.solvers.symmetric import symmetric_potential

__all__ = ["sinkhorn_divergence"]


@autocast_off
def sinkhorn_divergence(x, y, a=None, b=None, *, eps=0.05, relative_eps=True, cost="sqeuclidean",
                        tol=1e-4, max_iter=10_000, tau_a=1.0, tau_b=1.0, precision="highest"):
    """Debiased Sinkhorn divergence between point clouds (weights a, b), >= 0, zero when equal.

    Differentiable in x, y, a and b (first order; exact for the entropic problem at the solved
    potentials, by the envelope theorem). ``eps`` is relative to std(C(x, y)) when
    ``relative_eps``; the three problems share the absolute eps, and the gradients hold that
    absolute eps fixed: they are those of S at eps = (relative eps) x std(C) of the current points,
    not of the points' influence on std(C). Half and bfloat16 points are solved in float32.
    Returns a 0-dim tensor of x's dtype.

    ``tau_a``, ``tau_b`` < 1: the unbalanced Sinkhorn divergence of Sejourne et al. (2019), the
    marginals relaxed by rho KL with tau = rho / (rho + eps) (OTT's convention, as in
    :func:`ot_flow.sinkhorn`). The debiasing terms OT(a, a) and OT(b, b) need one relaxation for
    both sides, so tau_a must equal tau_b (the divergence is then >= 0 and 0 at x = y).

    ``precision``: of the dot products in the three solves and the gradient passes ("highest",
    "tf32" or "bf16", as in :func:`ot_flow.sinkhorn`).
    """
    validation.check_pair(x, y)
    costs.check_cost(cost)
    eps = validation.positive("eps", eps)
    tol = validation.positive("tol", tol)
    tau_a = validation.tau("tau_a", tau_a)
    tau_b = validation.tau("tau_b", tau_b)
    precision = op_precision.checked("ot_flow.sinkhorn_divergence", precision)
    if tau_a != tau_b:
        raise ValueError(f"argument 'tau_b' must equal 'tau_a' in the Sinkhorn divergence (one relaxation for "
                         f"both marginals, as its debiasing terms need), got tau_a={tau_a}, tau_b={tau_b}")
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
                                                      tol, max_iter, maps, tau_a, precision)
    return value.to(x.dtype)


@torch.library.custom_op("ot_flow::sinkhorn_divergence", mutates_args=())
def _divergence(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, cost: str,
                tol: float, max_iter: int, maps: bool = True, tau: float = 1.0,
                precision: str = "highest") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                           torch.Tensor, torch.Tensor]:
    """(S, u_ab, v_ab, u_aa, v_bb, dS/dx, dS/dy): the value, the derivatives in the weights of the
    three dual values (float64; the potentials f_ab, g_ab, p_aa, p_bb when balanced, psi of them
    when not: grad_a S = u_ab - u_aa) and, with ``maps``, the gradients in the points (empty
    without): they need the solved couplings' barycentric maps, passes made here so that the
    backward is arithmetic (and traces)."""
    if tau < 1.0:
        return _unbalanced(x, y, a, b, eps, cost, tol, max_iter, maps, tau, precision)
    ab = sinkhorn(x, y, a, b, eps=eps, relative_eps=False, cost=cost, tol=tol, max_iter=max_iter, precision=precision)
    # The debiasing terms are symmetric problems: one potential each, by the averaged iteration.
    aa = symmetric_potential(x, a.detach(), eps=eps, cost=cost, tol=tol, max_iter=max_iter, precision=precision)
    bb = symmetric_potential(y, b.detach(), eps=eps, cost=cost, tol=tol, max_iter=max_iter, precision=precision)
    f_ab, g_ab = ab.working.potentials_out(torch.float64)  # not rounded to the points' dtype
    value = a @ (f_ab - aa.p) + b @ (g_ab - bb.p)
    if maps:
        t_ba = row_barycentres(y, x, f_ab, a, eps, cost, precision)
        grad_x = a[:, None] * (aa.barycentric_map().double() - ab.barycentric_map().double())
        grad_y = b[:, None] * (bb.barycentric_map().double() - t_ba.double())
    else:
        grad_x, grad_y = x.new_empty(0, x.shape[1]), y.new_empty(0, y.shape[1])
    return value.to(x.dtype), f_ab, g_ab, aa.p, bb.p, grad_x.to(x.dtype), grad_y.to(y.dtype)


def _unbalanced(x, y, a, b, eps, cost, tol, max_iter, maps, tau, precision):
    """The op's outputs for tau < 1 (module notes)."""
    ab = sinkhorn(x, y, a, b, eps=eps, relative_eps=False, cost=cost, tol=tol, max_iter=max_iter, tau_a=tau,
                  tau_b=tau, precision=precision)
    aa = symmetric_potential(x, a.detach(), eps=eps, cost=cost, tol=tol, max_iter=max_iter, tau=tau,
                             precision=precision)
    bb = symmetric_potential(y, b.detach(), eps=eps, cost=cost, tol=tol, max_iter=max_iter, tau=tau,
                             precision=precision)
    f_ab, g_ab = ab.working.potentials_out(torch.float64)
    rho = aa.rho
    col_mass = b * torch.exp(-g_ab / rho)  # exact after the closing g-update: m(P) = sum of it
    ot_ab = a @ (-rho * torch.expm1(-f_ab / rho)) + b @ (-rho * torch.expm1(-g_ab / rho)) - eps * (col_mass.sum() - 1)
    ot_aa = 2 * (a @ aa.dual_term()) - eps * (aa.row_mass().sum() - 1)
    ot_bb = 2 * (b @ bb.dual_term()) - eps * (bb.row_mass().sum() - 1)
    value = ot_ab - 0.5 * ot_aa - 0.5 * ot_bb

    def psi(p):
        return -(rho + eps) * torch.expm1(-p / rho)

    if maps:
        r_ab, t_ab_w, _ = ab._row_pass()
        t_ab = ab.working.frame.point_out(t_ab_w).double()
        t_ba = row_barycentres(y, x, f_ab, a, eps, cost, precision).double()
        x64, y64 = x.detach().double(), y.detach().double()

        def grad(points, mass, mass_self, t, t_self):
            if cost == "sqeuclidean":  # grad_x C(x, y) = x - y
                return mass[:, None] * (points - t) - mass_self[:, None] * (points - t_self)
            return mass_self[:, None] * t_self - mass[:, None] * t  # grad_x C(x, y) = -y

        grad_x = grad(x64, r_ab, aa.row_mass(), t_ab, aa.barycentric_map().double())
        grad_y = grad(y64, col_mass, bb.row_mass(), t_ba, bb.barycentric_map().double())
    else:
        grad_x, grad_y = x.new_empty(0, x.shape[1]), y.new_empty(0, y.shape[1])
    return (value.to(x.dtype), psi(f_ab), psi(g_ab), psi(aa.p), psi(bb.p), grad_x.to(x.dtype),
            grad_y.to(y.dtype))


@_divergence.register_fake
def _(x, y, a, b, eps, cost, tol, max_iter, maps=True, tau=1.0, precision="highest"):
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
    return grad_x, grad_y, grad_a, grad_b, None, None, None, None, None, None, None


_divergence.register_autograd(_backward, setup_context=_setup_context)
