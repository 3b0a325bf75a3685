"""The Sinkhorn loop at one eps: alternating half-steps (sinkhorn_halves.py, one per placement),
eps annealing, momentum switched on from the measured error ratio, the unbalanced half-steps and
their translation step, and the marginal error that stops it.

Unbalanced (KL-relaxed marginals, OTT's convention tau = rho / (rho + eps) in (0, 1], 1 =
balanced, each side on its own): the same half-steps scaled by tau,

    f <- tau_a softmin_eps(g - C),   g <- tau_b softmin_eps(f - C),

the fixed point of min <P, C> + eps KL(P | a x b) + rho_a KL(P 1 | a) + rho_b KL(P^T 1 | b).
The plan keeps its form P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps), whose row sums at the
fixed point are a_i exp(-f_i / rho_a). A constant added to C no longer cancels (it changes the
mass), so the frame's constant k (frame.py; k != 0 for "dot" far from the origin) is folded
into the working cost, k / (2 s^2) on each side, rather than added to f and g on the way out.
Convergence is measured on the row marginal: the 1-norm of P 1 - a exp(-f / rho_a), which for
f_new = tau_a softmin(g - C) is sum_i a_i exp(-f_i / rho_a) |exp((f_i - f_new_i) / (tau_a eps)) - 1|
(after a g-update the column condition holds exactly), relative to the mass of a exp(-f / rho_a)
(an unbalanced plan may weigh 1e-6 or 1e12); with tau_a = 1 that is the balanced marginal error.
tau_a = tau_b = 1 runs exactly the balanced code. Momentum stays on: the linearised iteration is
the same 2-cyclic block scheme with its Jacobi eigenvalues scaled by sqrt(tau_a tau_b), so the
over-relaxation theory (and the measured-ratio rule) carries over; a translation step
(``_MassBalance``) keeps the mass mode from converging at the slow rate tau_a tau_b.
"""


import dataclasses
import math
import warnings

import torch

from ot_flow.ops import marginal_error
from ot_flow.solvers import inference, validation
from ot_flow.solvers.progress import progress_bar
from ot_flow.solvers.readback import Readback
from ot_flow.solvers.sinkhorn_halves import LocalHalves, ReplicatedHalves, ShardedHalves
from ot_flow.solvers.sinkhorn_result import SinkhornResult

__all__ = ["solve_at"]

# Momentum (over-relaxation, Lehmann et al. 2022): w = 2 / (1 + sqrt(1 - r)), r the
# per-iteration error ratio of plain Sinkhorn, measured on a probe of plain iterations and
# measured again every _MOMENTUM_REPROBE iterations, since r creeps towards 1 as a hard
# problem moves from its fast transient into its slow regime.
_MOMENTUM_PROBE = 20
_MOMENTUM_REPROBE = 300
_MOMENTUM_MAX_RATIO = 0.999  # caps w at about 1.94
# eps annealing: eps_k = max(eps, std(C) * decay^k), one iteration per level.
_ANNEAL_DECAY = 0.7
_ANNEAL_BELOW = 0.05  # auto-anneal when eps < this fraction of std(C)


@torch.no_grad()
def solve_at(eps, init, *, x, y, a, b, work, tol, max_iter, momentum, anneal, spread, dots, process_group, sharded,
           progress, tau_a=1.0, tau_b=1.0, precision="highest", check_every=1):
    """One solve at absolute eps; ``init`` is a pair of working dot-cost potentials or None;
    ``precision`` goes to every op call (ot_flow.ops.precision). ``check_every``: iterations
    between two reads of the marginal error (readback.py)."""
    dtype = work.x.dtype
    unit = work.frame.unit  # the solve runs on C' = (C - k) / s^2
    eps_w, spread_w = eps / unit, spread / unit
    log_a, log_b = a.log().to(dtype), b.log().to(dtype)
    if init is not None:
        fd, gd = init
    else:
        fd = torch.zeros(work.x.shape[0], dtype=dtype, device=x.device)
        gd = torch.zeros(work.y.shape[0], dtype=dtype, device=y.device)
    if process_group is None:
        halves = LocalHalves(work.x, work.y, log_a, log_b, dots, precision)
    elif sharded:
        halves = ShardedHalves(work.x, work.y, log_a, log_b, process_group, precision)
    else:
        halves = ReplicatedHalves(work.x, work.y, log_a, log_b, process_group, precision)
    f_update, g_update = halves.f_update, halves.g_update
    if tau_a < 1.0 or tau_b < 1.0:
        # Unbalanced: the working cost is C'' = C / s^2, offsets alpha'' = alpha' + k / (2 s^2),
        # and f'' = fd + alpha'' <- tau_a (alpha'' + softmin) gives fd <- tau_a softmin - (1 - tau_a) alpha''.
        alpha_u, beta_u = work.relaxed_offsets(work.alpha), work.relaxed_offsets(work.beta)
        f_update = _relaxed(f_update, tau_a, alpha_u.to(dtype))
        g_update = _relaxed(g_update, tau_b, beta_u.to(dtype))
        rho_a = validation.relaxation_rho(eps_w, tau_a)
        balance = _MassBalance(halves, a, b, alpha_u, beta_u, tau_a, tau_b)
    else:
        balance = None
    bar = progress_bar(progress, max_iter, f"sinkhorn eps={eps:.3g}", process_group)

    n_iter = 0
    if anneal is None:
        anneal = init is None and eps_w < _ANNEAL_BELOW * spread_w
    if anneal:
        level = spread_w
        with inference.loop():
            while level > eps_w and n_iter < max_iter:
                fd = f_update(gd, level, fd)
                if balance is not None:
                    fd = balance(fd, gd, level)
                gd = g_update(fd, level, gd)
                level *= _ANNEAL_DECAY
                n_iter += 1
        bar.update(n_iter)

    errors = []
    relaxation = _Relaxation(momentum)
    w = 1.0
    finishing = False  # the last g-update was plain, so the next error is exact
    converged = False
    error = math.inf
    measured = False  # whether (fd, gd) has an exact measurement pending
    reads = Readback(check_every)

    def read(may_stop):
        """Reads the errors queued since the last read and decides on the latest (older ones join
        the history); returns whether the solve has converged. `may_stop`: no step has been taken
        since the latest error's measurement."""
        nonlocal error, finishing, w
        values, finite = reads.read()
        if not all(math.isfinite(v) for v in values):
            if halves.all_finite(f_new) and (tau_a < 1.0 or tau_b < 1.0):
                raise RuntimeError(f"ot_flow.sinkhorn: the unbalanced plan's mass overflows float64 at "
                                   f"iteration {n_iter} (eps={eps:.3g}, tau_a={tau_a}, tau_b={tau_b}): "
                                   "costs far below zero (a 'dot' cost far from the origin) make its "
                                   "mass explode; centre the points, or raise tau towards 1")
            _raise_non_finite(n_iter, eps, dtype)
        if not finite:
            _raise_non_finite(n_iter, eps, dtype)
        if not values:  # only the last g-update's finiteness was pending
            return False
        errors.extend(values)
        error = values[-1]
        bar.set_postfix(error=f"{error:.3g}", tol=f"{tol:.3g}", refresh=False)
        if not may_stop:
            return False
        if error < tol:
            if w == 1.0 or finishing:
                return True
            finishing = True  # confirm on a plain step: column marginals exact again
        else:
            finishing = False
            w = relaxation.update(errors)
        return False

    with bar, inference.loop():
        while n_iter < max_iter:
            f_new = f_update(gd, eps_w, fd)
            if measured:
                if tau_a == 1.0:
                    reads.error(halves.total(marginal_error(fd, f_new, a, 1.0 / eps_w)))
                else:  # |P 1 - a exp(-f / rho_a)|_1 / <a, exp(-f / rho_a)> (module notes), in float64
                    target = a * torch.exp(-(fd.double() + alpha_u) / rho_a)
                    gap = marginal_error(fd, f_new, target, 1.0 / (tau_a * eps_w))
                    reads.error(halves.total(gap) / halves.sum(target))
                # A pending confirmation (finishing) is read at once: it decides the stop.
                if (finishing or reads.due()) and read(may_stop=True):
                    converged = True
                    break
            elif not halves.all_finite(f_new):
                _raise_non_finite(n_iter, eps, dtype)
            step = 1.0 if finishing else w
            fd = f_new if step == 1.0 else fd + step * (f_new - fd)
            if balance is not None:
                fd = balance(fd, gd, eps_w)
            g_new = g_update(fd, eps_w, gd)
            reads.require_finite(halves.checksum(g_new))  # f_new is checked through the error
            gd = g_new if step == 1.0 else gd + step * (g_new - gd)
            measured = True
            n_iter += 1
            bar.update(1)
        if reads.pending():
            read(may_stop=False)  # at max_iter: the errors and the finiteness still queued
    fd, gd = inference.ordinary(fd, gd)
    if not converged:
        warnings.warn(f"ot_flow.sinkhorn: not converged after {n_iter} iterations (marginal error "
                      f"{error:.3g} > tol {tol:.3g}); raise max_iter or eps", RuntimeWarning)
    solved = dataclasses.replace(work, eps=eps_w, f=fd, g=gd)
    f, g = solved.potentials_out(dtype)
    return SinkhornResult(f=f, g=g, eps=float(eps), n_iter=n_iter, error=error, converged=converged,
                          errors=errors, x=x, y=y, a=a, b=b, cost=work.frame.cost,
                          path="streamed" if dots is None else "cached", process_group=process_group,
                          sharded=sharded, spread=float(spread), tau_a=tau_a, tau_b=tau_b, precision=precision,
                          working=solved)


class _MassBalance:
    """The translation step of Sejourne, Vialard and Peyre (2022, "Faster unbalanced optimal
    transport"): unbalanced Sinkhorn moves the constant mode of (f, -g), which sets the plan's
    mass, only at the rate tau_a tau_b per iteration (thousands of iterations as tau -> 1).
    Before each g-update, f'' <- f'' + lam with the lam that maximises the dual along (1, -1):
    m_a e^{-lam / rho_a} = m_b e^{lam / rho_b}, m_a = <a, e^{-f'' / rho_a}>, m_b = <b, e^{-g'' / rho_b}>
    (1 for a balanced side), i.e. lam = log(m_a / m_b) / (1 / rho_a + 1 / rho_b). Two sums a step;
    lam = 0 at the fixed point (both masses are m(P) there), which it therefore keeps. lam sets
    the step's value, so the masses are read every iteration (one read for the two sides)."""

    def __init__(self, halves, a, b, alpha, beta, tau_a, tau_b):
        self.halves, self.a, self.b, self.alpha, self.beta = halves, a, b, alpha, beta
        self.tau_a, self.tau_b = tau_a, tau_b

    def _mass(self, w, p, offsets, tau, rho):
        """A relaxed side's mass on the device; None for a balanced side (log mass 0)."""
        if tau == 1.0:
            return None
        return self.halves.sum(w * torch.exp(-(p.double() + offsets) / rho))

    def __call__(self, fd, gd, e):
        rho_a, rho_b = validation.relaxation_rho(e, self.tau_a), validation.relaxation_rho(e, self.tau_b)
        masses = (self._mass(self.a, fd, self.alpha, self.tau_a, rho_a),
                  self._mass(self.b, gd, self.beta, self.tau_b, rho_b))
        read = iter(torch.stack([m for m in masses if m is not None]).tolist())  # one host read for both
        log_a, log_b = (0.0 if m is None else log_mass(next(read)) for m in masses)
        lam = translation(log_a, log_b, rho_a, rho_b)
        return fd + lam if math.isfinite(lam) else fd


def log_mass(total):
    """log of a side's mass <w, exp(-p / rho)> for the translation step; nan when it is 0 or
    overflowed (the step is then skipped)."""
    return math.log(total) if 0.0 < total < math.inf else math.nan


def translation(log_mass_a, log_mass_b, rho_a, rho_b):
    """The shift lam of f'' (and -lam of g'') that balances the two sides' masses (``_MassBalance``):
    m_a e^{-lam / rho_a} = m_b e^{lam / rho_b}."""
    return (log_mass_a - log_mass_b) / (1.0 / rho_a + 1.0 / rho_b)


def _relaxed(update, tau, offsets):
    """The unbalanced half-step of a dot-cost half-step (see ``_solve``); ``update`` itself when tau = 1."""
    if tau == 1.0:
        return update
    shift = (1.0 - tau) * offsets

    def step(other, e, now):  # now: the current iterate, whose softmin is (now + shift) / tau
        return tau * update(other, e, (now + shift) / tau) - shift

    return step


def _raise_non_finite(n_iter, eps, dtype):
    raise RuntimeError(f"ot_flow.sinkhorn: potentials became non-finite at iteration {n_iter} "
                       f"(eps={eps:.3g}, dtype={dtype}); use float64 inputs or a larger eps")


class _Relaxation:
    """The over-relaxation weight, updated from the error history (see the module constants)."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.w = 1.0
        self.probe_start = 0  # len(errors) when the current run of plain iterations began
        self.on_since = 0
        self.error_when_on = math.inf

    def update(self, errors):
        if not self.enabled:
            return 1.0
        k = len(errors)
        if self.w > 1.0:
            # The marginal error jumps for a few steps after relaxation starts; only a blow-up,
            # or no progress after a probe's length, means w is too large.
            blown_up = errors[-1] > 100.0 * self.error_when_on
            stalled = k - self.on_since >= _MOMENTUM_PROBE and errors[-1] > self.error_when_on
            if blown_up or stalled or k - self.on_since >= _MOMENTUM_REPROBE:
                self.w, self.probe_start = 1.0, k  # measure plain Sinkhorn again
            return self.w
        if k - self.probe_start < _MOMENTUM_PROBE:
            return 1.0
        # The second half of the probe: the first iterations after momentum are transient.
        half = _MOMENTUM_PROBE // 2
        r = (errors[-1] / errors[-half]) ** (1.0 / (half - 1))
        if not r < 1.0:
            self.probe_start = k
            return 1.0
        self.w = 2.0 / (1.0 + math.sqrt(1.0 - min(r, _MOMENTUM_MAX_RATIO)))
        self.on_since, self.error_when_on = k, errors[-1]
        return self.w
