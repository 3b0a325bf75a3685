"""OTPlanSampler: torchcfm's ``torchcfm.optimal_transport.OTPlanSampler``, on ot_flow's solvers.

A drop-in: the same constructor, methods and return types, and pairs drawn from the same
joint plan, so ``ConditionalFlowMatcher``-style code runs unchanged. What differs is how:

* the coupling is solved by :func:`ot_flow.sinkhorn` (log domain, streamed) or
  :func:`ot_flow.assignment` (exact), never as an n x m matrix -- ``sample_plan`` draws the
  pairs from the implicit plan (rows from its row marginal, then a Gumbel-max draw of each
  row's partner), so it scales past the sizes where POT's dense matrix fits;
* the randomness is torch's (``torch.manual_seed``, or a ``generator=`` keyword on every
  method), not numpy's global state.

"partial" is the balanced entropic plan: torchcfm calls POT's entropic partial Wasserstein
without a mass m, which POT then sets to min(|a|_1, |b|_1) = 1 for torchcfm's uniform weights, and
the constraints P 1 <= a, P^T 1 <= b with total mass 1 = |a|_1 = |b|_1 force both marginals. POT
approaches that plan by 1,000 Bregman projections (at most: it stops there, converged or not);
ot_flow solves it as "sinkhorn" does, to ``tol``.

Units. torchcfm passes POT the squared distances M_ij = |x_i - y_j|^2 and an absolute
``reg``; ot_flow's cost is |x_i - y_j|^2 / 2, so the same plan has eps = reg / 2 (absolute).
With ``normalize_cost`` POT solves M / max(M) with ``reg``, which is M with reg * max(M):
eps = reg * max(M) / 2, max(M) found by one exact MIPS pass (no matrix). The unbalanced
marginal penalty ``reg_m`` (POT's KL penalty, ``reg_type="kl"``) scales with the cost as
``reg`` does, so its weight tau = reg_m / (reg_m + reg) is unit-free and goes to
``ot_flow.sinkhorn(tau_a=..., tau_b=...)`` as it is.
"""

import math
import warnings

import numpy as np
import torch

from ot_flow.ops import mips
from ot_flow.solvers import validation

__all__ = ["OTPlanSampler"]

_METHODS = ("exact", "sinkhorn", "unbalanced", "partial")
_DENSE_MAX_BYTES = 1 << 30


class OTPlanSampler:
    """Draws (x0, x1) pairs from an OT plan between two minibatches (torchcfm's API).

    Args:
        method: "exact" (the optimal permutation, :func:`ot_flow.assignment`; n == m),
            "sinkhorn" (entropic, balanced) or "unbalanced" (entropic with KL marginal
            penalties) or "partial" (torchcfm's: the balanced plan, see the module notes);
            anything else ``ValueError``.
        reg: entropic regularisation in torchcfm's units: absolute, on the squared distances
            (eps = reg / 2 on ot_flow's cost |x - y|^2 / 2).
        reg_m: unbalanced marginal penalty (POT's ``reg_m``): a number, or a pair
            (source, target); ``math.inf`` is the balanced constraint.
        normalize_cost: divide the squared distances by their maximum, as torchcfm does
            (which it advises against for minibatches).
        num_threads: accepted for compatibility (POT's ``numThreads``); the solvers use
            torch's threads.
        warn: warn about numerical trouble; ``False`` also silences the solver's warning when
            it stops at ``max_iter`` before ``tol``.
        tol, max_iter: passed to :func:`ot_flow.sinkhorn` (the 1-norm of the marginal error;
            POT stops at 1e-9 or 1000 iterations).
        max_dense_bytes: the largest n x m float64 matrix that ``get_map`` and
            ``sample_plan(replace=False)`` build (default 1 GiB; None for no limit).

    ``get_map`` and ``sample_map`` return numpy arrays as torchcfm's do; ``sample_plan`` and
    ``sample_plan_with_labels`` return tensors indexed by torch tensors on x0's device.
    """

    def __init__(self, method, reg=0.05, reg_m=1.0, normalize_cost=False, num_threads=1, warn=True, *,
                 tol=1e-3, max_iter=10_000, max_dense_bytes=_DENSE_MAX_BYTES):
        if method not in _METHODS:
            raise ValueError(f"OTPlanSampler: unknown method {method!r}; choose one of {_METHODS}")
        self.method = method
        self.reg = validation.positive("reg", reg)
        pair = tuple(reg_m) if isinstance(reg_m, (tuple, list)) else (reg_m, reg_m)
        if len(pair) != 2:
            raise ValueError(f"argument 'reg_m' must be a number or a pair of numbers, got {reg_m!r}")
        self.reg_m = reg_m
        self._reg_m = tuple(math.inf if r == math.inf else validation.positive("reg_m", r) for r in pair)
        self.normalize_cost = bool(normalize_cost)
        if not (num_threads == "max" or (isinstance(num_threads, int) and num_threads >= 1)):
            raise ValueError(f"argument 'num_threads' must be an int >= 1 or 'max', got {num_threads!r}")
        self.num_threads = num_threads
        self.warn = bool(warn)
        self.tol = validation.positive("tol", tol)
        validation.integer("max_iter", max_iter, 1)
        self.max_iter = max_iter
        if max_dense_bytes is not None and (not isinstance(max_dense_bytes, int) or max_dense_bytes < 1):
            raise ValueError(f"argument 'max_dense_bytes' must be None or an int >= 1, got {max_dense_bytes!r}")
        self.max_dense_bytes = max_dense_bytes
        self.last_plan = None

    def __repr__(self):
        extra = f", reg_m={self.reg_m}" if self.method == "unbalanced" else ""
        return f"OTPlanSampler(method={self.method!r}, reg={self.reg}{extra}, normalize_cost={self.normalize_cost})"

    # -- the coupling ---------------------------------------------------------------------

    def eps(self, x0, x1):
        """The absolute eps of ot_flow's cost |x - y|^2 / 2 that gives torchcfm's plan."""
        eps = self.reg / 2
        if self.normalize_cost:
            eps *= max_squared_distance(*_points(x0, x1))
        return eps

    @torch.compiler.disable
    def solve(self, x0, x1):
        """The coupling: a :class:`ot_flow.SinkhornResult`, or for "exact" the LongTensor
        permutation (x0[i] goes to x1[perm[i]]). Kept in ``last_plan``."""
        flat0, flat1 = _points(x0, x1)
        if self.method == "exact":
            if flat0.shape[0] != flat1.shape[0]:
                raise ValueError(f"OTPlanSampler(method='exact') needs as many points in x0 as in x1 (an optimal "
                                 f"permutation), got {flat0.shape[0]} and {flat1.shape[0]}; use method='sinkhorn'")
            from ot_flow.solvers.assignment import assignment  # lands with ot_flow.assignment
            plan = assignment(flat0, flat1, cost="sqeuclidean")
        else:
            from ot_flow.solvers.sinkhorn import sinkhorn

            kwargs = {}
            if self.method == "unbalanced":
                kwargs = dict(zip(("tau_a", "tau_b"), (_tau(r, self.reg) for r in self._reg_m)))
            with warnings.catch_warnings():
                if not self.warn:
                    warnings.filterwarnings("ignore", message="ot_flow.sinkhorn: not converged",
                                            category=RuntimeWarning)
                plan = sinkhorn(flat0, flat1, eps=self.eps(flat0, flat1), relative_eps=False, cost="sqeuclidean",
                                tol=self.tol, max_iter=self.max_iter, progress=False, **kwargs)
        self.last_plan = plan
        return plan

    def get_map(self, x0, x1):
        """The dense plan between the minibatches: a numpy float64 array (n, m), as torchcfm's
        (small problems only: ``max_dense_bytes`` guards it)."""
        plan = self.solve(x0, x1)
        n, m = x0.shape[0], x1.shape[0]
        if self.method == "exact":
            _check_dense(n, m, self.max_dense_bytes)
            p = np.zeros((n, m))
            p[np.arange(n), plan.cpu().numpy()] = 1.0 / n
            return p
        p = plan.plan(torch.float64, max_bytes=self.max_dense_bytes).cpu().numpy()
        if not np.all(np.isfinite(p)) or abs(p.sum()) < 1e-8:
            if self.warn:
                warnings.warn("Numerical errors in OT plan, reverting to uniform plan.")
            p = np.ones_like(p) / p.size
        return p

    # -- draws ----------------------------------------------------------------------------

    def sample_map(self, pi, batch_size, replace=True, *, generator=None):
        """``(i, j)``: numpy index arrays of ``batch_size`` pairs drawn from the plan ``pi``
        (numpy array or tensor, any non-negative scale), with or without replacement -- torchcfm's
        ``np.random.choice`` over the flattened plan, on torch's generator instead."""
        p = torch.as_tensor(np.asarray(pi) if not isinstance(pi, torch.Tensor) else pi).detach().double().cpu()
        if p.dim() != 2:
            raise ValueError(f"argument 'pi' must be a 2-D plan, got shape {tuple(p.shape)}")
        flat = _draw_cells(p.reshape(-1), batch_size, replace, generator)
        i, j = np.divmod(flat.numpy(), p.shape[1])
        return i, j

    def sample_indices(self, x0, x1, batch_size=None, replace=True, *, generator=None):
        """LongTensors ``(i, j)`` of ``batch_size`` (default n) pairs drawn from the joint plan,
        on x0's device. With replacement no matrix is built: i from the row marginal (uniform,
        or the unbalanced plan's row masses), then j ~ P(. | i) streamed. Without replacement
        (torchcfm's ``replace=False``: distinct cells of the flattened plan) the dense plan is
        built, under the ``max_dense_bytes`` guard; the exact plan needs none either way."""
        n = x0.shape[0]
        batch_size = n if batch_size is None else batch_size
        if not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"argument 'batch_size' must be an int >= 0, got {batch_size!r}")
        plan = self.solve(x0, x1)
        device = x0.device
        if self.method == "exact":
            # the plan is 1/n on the n cells (i, perm[i]): a cell is a row
            if replace:
                i = torch.randint(n, (batch_size,), generator=generator)
            else:
                if batch_size > n:
                    raise ValueError(f"cannot draw {batch_size} distinct pairs without replacement from an exact "
                                     f"plan with {n} non-zero entries")
                i = torch.randperm(n, generator=generator)[:batch_size]
            i = i.to(device)
            return i, plan.to(device)[i]
        if replace:
            if self.method == "unbalanced":
                mass = plan.row_marginal().cpu()
                i = _draw_cells(mass, batch_size, True, generator)
            else:  # the balanced plan's row marginal is a = 1/n (up to tol)
                i = torch.randint(n, (batch_size,), generator=generator)
            i = i.to(device)
            return i, plan.sample(generator, rows=i).to(device)
        p = plan.plan(torch.float64, max_bytes=self.max_dense_bytes)
        flat = _draw_cells(p.reshape(-1).cpu(), batch_size, False, generator).to(device)
        return flat // p.shape[1], flat % p.shape[1]

    def sample_plan(self, x0, x1, replace=True, *, generator=None):
        """``(x0[i], x1[j])`` for n = len(x0) pairs (i, j) drawn from the plan."""
        i, j = self.sample_indices(x0, x1, replace=replace, generator=generator)
        return x0[i], x1[j]

    def sample_plan_with_labels(self, x0, x1, y0=None, y1=None, replace=True, *, generator=None):
        """``(x0[i], x1[j], y0[i], y1[j])`` (None for a label that is None), as torchcfm's."""
        i, j = self.sample_indices(x0, x1, replace=replace, generator=generator)
        return (x0[i], x1[j], None if y0 is None else y0[i.to(y0.device)],
                None if y1 is None else y1[j.to(y1.device)])

    def sample_trajectory(self, X, *, generator=None):
        """X (bs, times, *dim): populations at successive times; follows each particle of the
        first through the plans between consecutive times (one partner drawn per step, streamed).
        Returns a numpy array (bs, times, *dim), as torchcfm's."""
        if not isinstance(X, torch.Tensor) or X.dim() < 3:
            raise ValueError("argument 'X' must be a tensor (bs, times, *dim)")
        index = torch.arange(X.shape[0], device=X.device)
        chain = [index]
        for t in range(X.shape[1] - 1):
            plan = self.solve(X[:, t], X[:, t + 1])
            if self.method == "exact":
                index = plan.to(X.device)[index]
            else:
                index = plan.sample(generator, rows=index).to(X.device)
            chain.append(index)
        return torch.stack([X[:, t][k] for t, k in enumerate(chain)], dim=1).detach().cpu().numpy()


def _points(x0, x1):
    flat0, flat1 = validation.flat_points("x0", x0), validation.flat_points("x1", x1)
    if flat0.shape[1] != flat1.shape[1]:
        raise ValueError(f"arguments 'x0' and 'x1' must have the same number of features per point, "
                         f"got shapes {tuple(x0.shape)} and {tuple(x1.shape)}")
    return flat0, flat1


def _tau(reg_m, reg):
    """POT's KL marginal penalty reg_m as the weight tau = reg_m / (reg_m + reg) (1: balanced)."""
    return 1.0 if reg_m == math.inf else reg_m / (reg_m + reg)


def max_squared_distance(x, y):
    """max_ij |x_i - y_j|^2 without the n x m matrix: one exact MIPS pass in float64 about the
    clouds' common centre, max_j |x_i - y_j|^2 = |x_i|^2 + 2 max_j (<-x_i, y_j> + |y_j|^2 / 2)."""
    centre = torch.cat([x, y]).double().mean(0)
    xc, yc = x.double() - centre, y.double() - centre
    best, _ = mips(-xc, yc, 0.5 * (yc * yc).sum(1), k=1)
    return float(((xc * xc).sum(1) + 2 * best[:, 0]).max().clamp_min(0.0))


def _check_dense(n, m, max_bytes):
    if max_bytes is not None and n * m * 8 > max_bytes:
        raise ValueError(f"OTPlanSampler: the dense {n} x {m} plan would take {validation.byte_count(n * m * 8)} "
                         f"(limit max_dense_bytes={validation.byte_count(max_bytes)})")


def _draw_cells(weights, size, replace, generator):
    """``size`` indices drawn from the non-negative float64 ``weights`` (normalised here): with
    replacement by inverse CDF, without by Gumbel top-k (successive draws without replacement,
    numpy's ``choice(replace=False)``); neither has torch.multinomial's 2^24 categories limit."""
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"argument 'batch_size' must be an int >= 0, got {size!r}")
    w = weights.double()
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError("the plan must have finite, non-negative entries and a positive sum")
    if replace:
        cdf = torch.cumsum(w / w.sum(), 0)
        u = torch.rand(size, generator=generator, dtype=torch.float64) * float(cdf[-1])
        return torch.searchsorted(cdf, u, right=True).clamp_max(w.numel() - 1)
    live = int((w > 0).sum())
    if size > live:
        raise ValueError(f"cannot draw {size} pairs without replacement: the plan has only {live} non-zero entries")
    u = torch.rand(w.numel(), generator=generator, dtype=torch.float64).clamp_min(1e-300)
    keys = w.log() - torch.log(-torch.log(u))
    return torch.topk(keys, size).indices
