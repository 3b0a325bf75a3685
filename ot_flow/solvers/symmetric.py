"""The entropic OT of a measure with itself, OT_eps(a, a): the debiasing terms of the Sinkhorn
divergence and the f_{mu,mu} of the Sinkhorn gradient flow (NSGF).

The problem is symmetric, so one potential p serves both sides, with the fixed point
p = T(p), T(p)_i = -eps log sum_j a_j exp((p_j - C_ij) / eps). Alternating Sinkhorn on it
oscillates between two sides that should be equal and converges slowly at small eps; the
averaged iteration p <- (p + T(p)) / 2 (Feydy et al., 2019) damps the oscillation and converges
in tens of steps. Each step is one streaming softmin (one `lse` pass), no n x n matrix.

Unbalanced (``tau`` < 1, both sides relaxed alike, rho = eps tau / (1 - tau)): the fixed point
p = tau T(p), reached by p <- (p + tau T(p)) / 2 (tau T is a tau-contraction in the sup norm, as
T commutes with constants). The frame's constant k of the cost is then folded into the working
cost (it changes the mass; see sinkhorn.py), and the error is the relaxed row-marginal error
sum_i a_i exp(-p_i / rho) |exp((p_i - tau T(p)_i) / (tau eps)) - 1| relative to the mass
sum_i a_i exp(-p_i / rho) (as in sinkhorn.py).
"""

import math

import dataclasses

import torch

from ot_flow.ops import lse, marginal_error, precision as op_precision
from ot_flow.solvers import costs, inference, validation
from ot_flow.solvers.frame import Frame
from ot_flow.solvers.full_precision import autocast_off
from ot_flow.solvers.working_problem import row_barycentres

__all__ = ["SymmetricResult", "symmetric_potential"]


@dataclasses.dataclass
class SymmetricResult:
    """p (n,) float64: the potential of OT_eps(a, a) for ``cost``; ``value`` = 2 <a, p> is that OT
    value in the dual form the Sinkhorn divergence uses; n_iter, error (1-norm marginal error)."""
    p: torch.Tensor
    x: torch.Tensor
    a: torch.Tensor
    eps: float
    cost: str
    n_iter: int
    error: float
    tau: float = 1.0
    precision: str = "highest"  # of the dot products (ot_flow.ops.precision)

    @property
    def rho(self):
        return validation.relaxation_rho(self.eps, self.tau)

    def row_mass(self):
        """(n,) float64: the plan's row sums a_i exp(-p_i / rho) at the fixed point (a when balanced)."""
        a = self.a.double()
        return a if self.tau == 1.0 else a * torch.exp(-self.p / self.rho)

    def dual_term(self):
        """(n,) float64: -rho (exp(-p / rho) - 1), the term of the dual value per unit of a (p when balanced)."""
        return self.p if self.tau == 1.0 else -self.rho * torch.expm1(-self.p / self.rho)

    @property
    def value(self):
        """OT_eps(a, a) in the dual form: 2 <a, p> balanced; unbalanced (Sejourne et al. 2019)
        2 <a, -rho (exp(-p / rho) - 1)> - eps (m - 1), m = sum_i a_i exp(-p_i / rho) the plan's mass."""
        a = self.a.double()
        if self.tau == 1.0:
            return float(2 * (a @ self.p))
        return float(2 * (a @ self.dual_term()) - self.eps * (self.row_mass().sum() - 1.0))

    def barycentric_map(self):
        """T_i = sum_j P_ij x_j / sum_j P_ij of the symmetric plan (the self-term of NSGF's velocity)."""
        return row_barycentres(self.x, self.x, self.p, self.a, self.eps, self.cost, self.precision)


@autocast_off
def symmetric_potential(x, a=None, *, eps, cost="sqeuclidean", tol=1e-4, max_iter=1_000, tau=1.0,
                        precision="highest"):
    """Solves OT_eps(a, a) on the points x by the averaged fixed-point iteration.

    ``eps`` is absolute. Stops when the 1-norm marginal error sum_i a_i |exp((p_i - T(p)_i)/eps) - 1|
    is below ``tol``; raises RuntimeError when it is not reached within ``max_iter``. Runs in the
    frame of x (frame.py): the same potential, up to rounding, wherever the points lie. ``tau`` < 1:
    the unbalanced problem with both marginals relaxed by tau = rho / (rho + eps) (module notes).
    ``precision``: of the dot products (ot_flow.ops.precision).
    """
    validation.check_points("x", x)
    costs.check_cost(cost)
    eps = validation.positive("eps", eps)
    tau = validation.tau("tau", tau)
    precision = op_precision.checked("ot_flow.symmetric_potential", precision)
    a = validation.weights("a", a, x.shape[0], x)
    x = x.detach()
    frame = Frame.of([(x, a)], cost)
    xw = frame.points(x)
    alpha = frame.offsets(xw)
    eps_w = eps / frame.unit  # q, the working potential of C' = (C - k) / s^2, float64
    log_a = a.log()

    def softmin(q):
        return alpha - eps_w * lse(xw, xw, ((q - alpha) / eps_w + log_a).to(xw.dtype), 1.0 / eps_w,
                                   precision=precision).double()

    if tau < 1.0:
        return _unbalanced(frame, xw, a, eps, eps_w, softmin, cost, tol, max_iter, tau, x, precision)

    def error_of(q, t):
        return float(marginal_error(q, t, a, 1.0 / eps_w))

    def check(q, error, n_iter):
        if not validation.all_finite(q):
            raise RuntimeError(f"symmetric Sinkhorn: non-finite potential at iteration {n_iter} (eps = {eps:.3g}); "
                               "use float64 points or a larger eps")

    q, n_iter, error = _averaged(softmin, error_of, check, torch.zeros_like(alpha), tol, max_iter)
    return SymmetricResult(frame.potential_out(q - alpha, alpha), x, a, eps, cost, n_iter, error, precision=precision)


def _averaged(step, error_of, check, start, tol, max_iter):
    """The averaged fixed-point iteration q <- (q + step(q)) / 2 from q = step(start), in
    inference mode (solvers/inference.py), until ``error_of(q, step(q)) < tol``; ``check(q,
    error, n_iter)`` raises on a non-finite state. Returns (q as an ordinary tensor, n_iter,
    error); raises when ``max_iter`` iterations do not reach ``tol``."""
    error = math.inf
    with inference.loop():
        q = step(start)
        for n_iter in range(1, max_iter + 1):
            t = step(q)
            error = error_of(q, t)
            q = 0.5 * (q + t)
            check(q, error, n_iter)
            if error < tol:
                break
    if not error < tol:
        raise RuntimeError(f"symmetric Sinkhorn did not reach tol = {tol:g} in {max_iter} iterations "
                           f"(marginal error {error:.3g}); raise max_iter or eps")
    (q,) = inference.ordinary(q)
    return q, n_iter, error


def _unbalanced(frame, xw, a, eps, eps_w, softmin, cost, tol, max_iter, tau, x, precision):
    """The averaged iteration on q = p / s^2, the potential of the working cost C / s^2 =
    C' + k / s^2 (softmin is that of C')."""
    shift = frame.constant / frame.unit
    rho_w = validation.relaxation_rho(eps_w, tau)

    def step(q):
        return tau * (shift + softmin(q))

    def error_of(q, t):
        target = a * torch.exp(-q / rho_w)
        return float(marginal_error(q, t, target, 1.0 / (tau * eps_w)) / target.sum())

    def check(q, error, n_iter):
        if not (validation.all_finite(q) and math.isfinite(error)):
            raise RuntimeError(f"symmetric Sinkhorn: non-finite potential or mass at iteration {n_iter} "
                               f"(eps = {eps:.3g}, tau = {tau}); use float64 points, a larger eps or tau")

    q, n_iter, error = _averaged(step, error_of, check, torch.zeros_like(a), tol, max_iter)
    return SymmetricResult(frame.unit * q, x, a, eps, cost, n_iter, error, tau, precision)
