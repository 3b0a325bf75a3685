"""The Sinkhorn loop of a batched solve: B independent problems (x (B, n, d), y (B, m, d)), each
at its own eps, iterated together. Every half-step is ONE batched kernel call over the problems
still running (``ot_flow.ops.lse`` streamed, ``ot_flow.ops.lse_dense`` over cached dot products,
with one scale per problem: the batch is the outer task dimension of the CPU kernels); what sinkhorn_iterations.py keeps as scalars (annealing level,
momentum, ``finishing``, error history, convergence) is kept per problem, so that each problem
runs the very steps of its separate solve and stops where that solve stops. Per problem the
arithmetic is the 2-D solve's (elementwise ops with a per-problem scalar as a (B, 1) tensor of
the same dtype give the same bits as the scalar), so a batched solve gives the potentials,
iteration counts and convergence of B separate solves on the same path (streamed or cached).

One host synchronisation per iteration reads the B marginal errors (and one the finiteness of
the g-update); a problem that converges drops out of the next kernel call.

Across the ranks of a process group the same loop runs with the half-steps of
sinkhorn_batched_halves.py: what the loop decides on (the per-problem sums of the marginal errors
and of the masses, the finiteness of the potentials) comes from the halves' ``totals`` and
``finite``, reduced over the ranks where the rows are sharded, so every rank takes the same
decisions and stops together.
"""

import math
import warnings

import torch

from ot_flow.ops import lse, marginal_error, softmin_dense
from ot_flow.ops.layout import stack_aligned
from ot_flow.solvers import inference, validation
from ot_flow.solvers.progress import progress_bar
from ot_flow.solvers.sinkhorn_iterations import _ANNEAL_BELOW, _ANNEAL_DECAY, _Relaxation, log_mass, translation

__all__ = ["solve_batched_at"]


def _per_problem(values, like, dtype=None):
    """A (k, 1) tensor of per-problem scalars (the points' dtype by default) on like's device."""
    return torch.tensor(values, dtype=dtype or like.dtype, device=like.device)[:, None]


def _take(t, idx):
    """Rows idx (a list of problem indices) of a per-problem tensor; t itself when idx is all of them."""
    return t if idx is None else t[idx]


class BatchedHalves:
    """The two half-steps of B problems, one batched op call each (the half-steps of
    sinkhorn_halves.LocalHalves per problem: bias g / e + log b, scale 1 / e, times -e).

    Streamed: one batched ``lse``; the points of the running problems are kept with every
    problem 64-byte aligned (ops/layout.py), as a separate solve's are, so that the GEMMs round
    alike. Cached (``dots``, the (B, n, m) dot products): one batched ``softmin_dense`` with the
    current potentials as the shift hint, problem by problem the call of a separate cached solve."""

    def __init__(self, x, y, log_a, log_b, precision="highest", dots=None):
        self.x, self.y, self.log_a, self.log_b, self.precision = x, y, log_a, log_b, precision
        self._points = (None, x, y)  # (problems, x, y) of the last selection
        self.dots, self._held = dots, list(range(x.shape[0]))  # the problems whose matrices dots holds

    def _selected(self, idx):
        if idx is None:
            return self.x, self.y
        if self._points[0] != idx:
            self._points = (list(idx), stack_aligned([self.x[k] for k in idx]), stack_aligned([self.y[k] for k in idx]))
        return self._points[1], self._points[2]

    def _dots(self, idx):
        """The cached matrices of problems idx. The running problems only ever shrink (one that
        stopped never runs again), so the matrices are compacted in place to the selection,
        which keeps the batch one contiguous tensor without a copy of B n x m matrices."""
        idx = list(range(len(self._held))) if idx is None else idx
        if idx != self._held:
            if not set(idx) <= set(self._held):
                raise RuntimeError(f"ot_flow.sinkhorn: internal error: problems {idx} selected after "
                                   f"{self._held} (the cached matrices of a stopped problem are gone)")
            for p, k in enumerate(idx):  # positions only move down, so no source is overwritten early
                q = self._held.index(k)
                if q != p:
                    self.dots[p].copy_(self.dots[q])
            self.dots, self._held = self.dots[:len(idx)], list(idx)
        return self.dots

    def _softmin(self, rows, cols, other, log_w, es):
        e = _per_problem(es, other)
        return lse(rows, cols, other / e + log_w, [1.0 / v for v in es], precision=self.precision,
                   validate=False) * (-e)

    def _softmin_cached(self, dots, dim, other, log_w, now, es):
        return softmin_dense(dots, other, es, dim, log_w, now, validate=False)

    def f_update(self, idx, g, es, f_now):
        if self.dots is not None:
            return self._softmin_cached(self._dots(idx), 1, g, _take(self.log_b, idx), f_now, es)
        x, y = self._selected(idx)
        return self._softmin(x, y, g, _take(self.log_b, idx), es)

    def g_update(self, idx, f, es, g_now):
        if self.dots is not None:
            return self._softmin_cached(self._dots(idx), 0, f, _take(self.log_a, idx), g_now, es)
        x, y = self._selected(idx)
        return self._softmin(y, x, f, _take(self.log_a, idx), es)

    def totals(self, *local):
        """Each (k,) per-problem sum over this process's rows added up over all rows."""
        return local

    def sums(self, *per_row):
        """Each (k, n) per-row quantity summed over its rows: a (k,) float64 tensor per argument."""
        return self.totals(*(t.sum(1) for t in per_row))

    def finite(self, t):
        """Whether each problem's potential in t (k, n) is finite everywhere, a list of k bools (one
        host read): its float64 sum is finite exactly when every entry is (sinkhorn_halves'
        checksum; one reduction where torch.isfinite(t).all(1) takes five ops)."""
        return [math.isfinite(v) for v in self.totals(t.sum(1, dtype=torch.float64))[0].tolist()]


def _relaxed(update, tau, offsets):
    """The unbalanced half-step (sinkhorn_iterations._relaxed) per problem: offsets (B, n)."""
    if tau == 1.0:
        return update
    shift = (1.0 - tau) * offsets

    def step(idx, other, es, now):
        s = _take(shift, idx)
        return tau * update(idx, other, es, (now + s) / tau) - s

    return step


class _MassBalance:
    """sinkhorn_iterations._MassBalance per problem: the masses of both sides summed in one call
    of the halves' ``sums`` (one all-reduce when sharded), each side read once."""

    def __init__(self, halves, a, b, alpha, beta, tau_a, tau_b):
        self.halves, self.a, self.b, self.alpha, self.beta = halves, a, b, alpha, beta
        self.tau_a, self.tau_b = tau_a, tau_b

    @staticmethod
    def _mass_terms(w, p, offsets, tau, rhos):
        """A relaxed side's per-row mass terms (k, n); None for a balanced side (log mass 0)."""
        if tau == 1.0:
            return None
        rho = _per_problem(rhos, w, torch.float64)
        return w * torch.exp(-(p.double() + offsets) / rho)

    def __call__(self, idx, fd, gd, es):
        rho_a = [validation.relaxation_rho(e, self.tau_a) for e in es]
        rho_b = [validation.relaxation_rho(e, self.tau_b) for e in es]
        terms = (self._mass_terms(_take(self.a, idx), fd, _take(self.alpha, idx), self.tau_a, rho_a),
                 self._mass_terms(_take(self.b, idx), gd, _take(self.beta, idx), self.tau_b, rho_b))
        totals = iter(self.halves.sums(*(t for t in terms if t is not None)))
        ma, mb = ([0.0] * len(es) if t is None else [log_mass(v) for v in next(totals).tolist()] for t in terms)
        lams = [translation(p, q, ra, rb) for p, q, ra, rb in zip(ma, mb, rho_a, rho_b)]
        keep = [not math.isfinite(v) for v in lams]
        moved = fd + _per_problem([0.0 if k else v for k, v in zip(keep, lams)], fd)
        return torch.where(_per_problem(keep, fd, torch.bool), fd, moved)


class _Problem:
    """The scalar state of one problem's loop (the locals of sinkhorn_iterations.solve_at)."""

    def __init__(self, eps_w, spread_w, anneal, momentum, max_iter):
        self.eps_w = eps_w
        self.level = spread_w
        self.annealing = anneal and spread_w > eps_w and max_iter > 0
        self.errors, self.relaxation = [], _Relaxation(momentum)
        self.w, self.finishing, self.converged, self.measured = 1.0, False, False, False
        self.error, self.n_iter = math.inf, 0
        self.done = not self.annealing and max_iter <= 0

    @property
    def e(self):
        return self.level if self.annealing else self.eps_w


@torch.no_grad()
def solve_batched_at(eps, init, *, a, b, works, xw, yw, tol, max_iter, momentum, anneal, spreads, progress,
                     tau_a=1.0, tau_b=1.0, precision="highest", halves=BatchedHalves, process_group=None):
    """B solves at absolute eps (a list); ``init`` a pair of working potentials (B, n), (B, m) or None.

    ``works`` are the problems' WorkingProblems, ``xw``, ``yw`` their stacked working points.
    ``halves`` makes the half-steps, ``halves(xw, yw, log_a, log_b, precision=...)``: BatchedHalves
    on one process (sinkhorn_batched_halves.halves_of binds the cached dot products, which the
    loop consumes: it compacts them in place as problems stop), halves_of's classes across the
    ranks of ``process_group``.
    Returns (fd, gd, [problem states]) in the working frames."""
    count, dtype, device = xw.shape[0], xw.dtype, xw.device
    eps_w = [e / w.frame.unit for e, w in zip(eps, works)]
    spread_w = [s / w.frame.unit for s, w in zip(spreads, works)]
    log_a, log_b = a.log().to(dtype), b.log().to(dtype)
    if init is not None:
        fd, gd = init[0].clone(), init[1].clone()
    else:
        fd = torch.zeros(xw.shape[:2], dtype=dtype, device=device)
        gd = torch.zeros(yw.shape[:2], dtype=dtype, device=device)
    halves = halves(xw, yw, log_a, log_b, precision=precision)
    f_update, g_update = halves.f_update, halves.g_update
    unbalanced = tau_a < 1.0 or tau_b < 1.0
    if unbalanced:
        alpha_u = torch.stack([w.relaxed_offsets(w.alpha) for w in works])
        beta_u = torch.stack([w.relaxed_offsets(w.beta) for w in works])
        f_update = _relaxed(f_update, tau_a, alpha_u.to(dtype))
        g_update = _relaxed(g_update, tau_b, beta_u.to(dtype))
        balance = _MassBalance(halves, a, b, alpha_u, beta_u, tau_a, tau_b)
    else:
        balance = None
    states = []
    for k in range(count):
        auto = init is None and eps_w[k] < _ANNEAL_BELOW * spread_w[k]
        states.append(_Problem(eps_w[k], spread_w[k], auto if anneal is None else anneal, momentum, max_iter))

    bar = progress_bar(progress, max_iter, f"sinkhorn batched B={count}", process_group)
    with bar, inference.loop():
        while True:
            active = [k for k in range(count) if not states[k].done]
            if not active:
                break
            idx = None if len(active) == count else active
            es = [states[k].e for k in active]
            f_new = f_update(idx, _take(gd, idx), es, _take(fd, idx))
            go = _measure(halves, active, states, f_new, _take(fd, idx), _take(a, idx),
                          alpha_u if unbalanced else None, tau_a, tol, dtype, idx)
            if not any(go):
                continue
            keep = [p for p, g in enumerate(go) if g]  # positions in `active` that take the step
            sub = [active[p] for p in keep]
            sub_idx = None if len(sub) == count else sub
            f_new, fd_now = f_new[keep] if len(keep) < len(active) else f_new, _take(fd, sub_idx)
            steps = [1.0 if (states[k].finishing or states[k].annealing) else states[k].w for k in sub]
            all_plain = all(s == 1.0 for s in steps)  # no momentum step this iteration: no arithmetic
            plain = None if all_plain else _per_problem([s == 1.0 for s in steps], fd, torch.bool)
            fd_next = f_new if all_plain else torch.where(
                plain, f_new, fd_now + _per_problem(steps, fd) * (f_new - fd_now))
            es = [states[k].e for k in sub]
            gd_now = _take(gd, sub_idx)
            if balance is not None:
                fd_next = balance(sub_idx, fd_next, gd_now, es)
            g_new = g_update(sub_idx, fd_next, es, gd_now)
            finite = halves.finite(g_new)  # f_new is checked through the error
            if not all(finite):
                bad = sub[finite.index(False)]
                _raise_non_finite(bad, states[bad].n_iter, eps[bad], dtype)
            gd_next = g_new if all_plain else torch.where(
                plain, g_new, gd_now + _per_problem(steps, gd) * (g_new - gd_now))
            if sub_idx is None:
                fd, gd = fd_next, gd_next
            else:
                fd[sub], gd[sub] = fd_next, gd_next
            for k in sub:
                _advance(states[k], max_iter)
            bar.update(1)
    late = [k for k in range(count) if not states[k].converged]
    if late:
        warnings.warn(f"ot_flow.sinkhorn: problems {late} of the batch not converged after max_iter={max_iter} "
                      f"iterations (marginal errors {[f'{states[k].error:.3g}' for k in late]} > tol {tol:.3g}); "
                      "raise max_iter or eps", RuntimeWarning, stacklevel=4)
    fd, gd = inference.ordinary(fd, gd)
    return fd, gd, states


def _advance(state, max_iter):
    """One iteration done: annealing moves down a level (and ends at eps'), the loop counts it."""
    state.n_iter += 1
    if state.annealing:
        state.level *= _ANNEAL_DECAY
        if not (state.level > state.eps_w and state.n_iter < max_iter):
            state.annealing = False
            state.done = state.n_iter >= max_iter
        return
    state.measured = True
    state.done = state.n_iter >= max_iter


def _measure(halves, active, states, f_new, fd, a, alpha_u, tau_a, tol, dtype, idx):
    """The marginal errors of the problems with a pending measurement (one synchronisation; the
    sums through ``halves``), and each one's decision (sinkhorn_iterations.solve_at): whether it
    takes this iteration's step (False: converged now). Raises on non-finite potentials, naming
    the problem."""
    measured = [p for p, k in enumerate(active) if states[k].measured and not states[k].annealing]
    errors = [None] * len(active)
    if measured:
        sel = measured if len(measured) < len(active) else slice(None)
        fd_m, fn_m, w = fd[sel], f_new[sel], a[sel]
        if tau_a == 1.0:
            (errs,) = halves.totals(marginal_error(fd_m, fn_m, w, [1.0 / states[active[p]].eps_w for p in measured]))
        else:
            rho = _per_problem([validation.relaxation_rho(states[active[p]].eps_w, tau_a) for p in measured],
                               fd, torch.float64)
            target = w * torch.exp(-(fd_m.double() + _take(alpha_u, idx)[sel]) / rho)
            gap = marginal_error(fd_m, fn_m, target, [1.0 / (tau_a * states[active[p]].eps_w) for p in measured])
            off, mass = halves.totals(gap, target.sum(1))
            errs = off / mass
        for p, v in zip(measured, errs.tolist()):
            errors[p] = v
    unmeasured = [p for p in range(len(active)) if errors[p] is None and not states[active[p]].annealing]
    unmeasured += [p for p in range(len(active)) if states[active[p]].annealing]
    if unmeasured:
        finite = halves.finite(f_new[unmeasured])
        for p, ok in zip(unmeasured, finite):
            if not ok:
                k = active[p]
                _raise_non_finite(k, states[k].n_iter, states[k].e * 1.0, dtype)
    go = [True] * len(active)
    for p in measured:
        state, error = states[active[p]], errors[p]
        state.error = error
        if not math.isfinite(error):
            if tau_a < 1.0:
                raise RuntimeError(f"ot_flow.sinkhorn: problem {active[p]} of the batch: the unbalanced plan's mass "
                                   f"overflows float64 at iteration {state.n_iter}, or its potentials became "
                                   "non-finite; centre the points, or raise tau towards 1, or use float64 inputs")
            _raise_non_finite(active[p], state.n_iter, state.eps_w, dtype)
        state.errors.append(error)
        if error < tol:
            if state.w == 1.0 or state.finishing:
                state.converged, state.done = True, True
                go[p] = False
                continue
            state.finishing = True
        else:
            state.finishing = False
            state.w = state.relaxation.update(state.errors)
    return go


def _raise_non_finite(problem, n_iter, eps_w, dtype):
    raise RuntimeError(f"ot_flow.sinkhorn: the potentials of problem {problem} of the batch became non-finite at "
                       f"iteration {n_iter} (working eps={eps_w:.3g}, dtype={dtype}); use float64 inputs or a "
                       "larger eps")
