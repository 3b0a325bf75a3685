"""SemidiscreteSampler: fit one dual potential over a whole data set, then pair fresh noise with
data by a MIPS (semidiscrete flow matching, seeds 001/003).

Fitting is stochastic ascent of the semi-dual (solvers/semidiscrete.py): each step draws a batch
of noise, assigns it to the data with the current potential g, and moves g along
b - (assignment frequencies) with diagonal Newton steps (Adam on the coarsest level), Adam or SGD,
under a learning-rate schedule, optionally with eps decaying from soft to hard assignments; an
average of the iterates is what the sampler then uses. Progress shows the chi-square marginal
error of the averaged potential on fresh noise. In up to 16 features the fit's noise is a scrambled
Sobol sequence (quasi_normal.py), whose counts per cell scatter less than independent draws'.

Large data sets start coarse to fine: the semi-dual's Hessian is a graph Laplacian over
neighbouring cells, so per-point steps move mass across the data set only slowly (the slowest
mode relaxes in ~N^(2/d) steps), while a potential fitted on a subsample N/8 carries exactly
that long-range transport. The subsample is fitted first (recursively, down to about one batch
of points), its potential is extended to every point to first order (extend_potential), and
the full fit only corrects locally.

The fit works in a standardised frame: the data centred at their weighted mean and divided by
their spread, z_j = (y_j - c) / s, and noise from a custom ``source`` likewise by its own mean
and spread (the default standard normal is left as it is). For both costs this changes C(x, y_j)
only by a positive factor and by terms in x alone or in j alone, which the potential absorbs, so
the assignments are those of the data as given; but the scores <x, z_j> + h_j keep their float32
precision however far the data sit from the origin (in the data as given, |y_j|^2 / 2 and
<x, y_j> cancel: 200 points offset by 100 lost all but 2-7 of them), and every length the fit
uses (step sizes, score gaps, eps) is in the data's own unit. The start, g = 0 in that frame,
pairs each noise point with its nearest standardised data point. Data moved as
y -> a y + t (a > 0), with the noise fixed, therefore give the same fit up to rounding; so
does a source moved with them.

Everything needed to continue a fit sits in ``state_dict()``: the potential, its average, the
optimiser's moments, the step and where the noise streams stand, with a fingerprint of the
data, weights and labels that ``load_state_dict`` checks. A fit interrupted (Ctrl-C, a lost
job) and resumed from its last state gives the same potential as an uninterrupted one.
"""

import copy
import math
import os
import warnings
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ot_flow import distributed
from ot_flow.samplers.quasi_normal import QuasiNormal
from ot_flow.solvers import costs, semidiscrete, validation
from ot_flow.solvers.semidual_newton import DiagonalNewton

__all__ = ["SemidiscreteSampler"]

_SCHEDULES = ("constant", "cosine", "linear", "inverse_sqrt")
_OPTIMIZERS = ("auto", "newton", "adam", "sgd")
# "auto" takes Adam while the points (per class) are no more than a batch, i.e. on the coarsest
# level of a multiscale fit, which has the long-range transport to do: from g = 0 most points
# get no noise at all, and Adam's sign-like steps cross many gaps per step where a Newton step,
# with no gap to read for an empty cell, crawls (60 points 4 sigma off the noise: chi2 0.24
# after 400 steps against Adam's 3e-5). On the finer levels only local corrections remain and
# the per-point Newton scale wins.
# The default "newton" step: this fraction of a diagonal Newton step (semidual_newton.py), damped
# in proportion to the hits a point expects per batch where that is under one (measured in
# semidual_newton.py: flat optima at 0.12-0.3 of a step for N = 10^4 and 0.02-0.05 for 10^5).
_DEFAULT_NEWTON_STEP = 0.6
# Adam and SGD: the default step is the smaller of two scales: a fraction of std(C) (what moves
# mass across the data set when the points are few or far apart) and a few mean score gaps (semidiscrete.score_gap,
# the change of g_j that hands a typical noise point to its neighbour). The gap shrinks as the data
# get denser, where std(C) does not move: N = 1e4 points in d = 2 have a gap of 1e-3 std(C); a
# 2,000-step fit there ended at chi2 1.1 with a step of 0.1 std(C) and at 0.23 with one gap.
_DEFAULT_LR_SPREAD = {"adam": 0.1, "sgd": 1.0}  # times std(C)
_DEFAULT_LR_GAP = {"adam": 3.0, "sgd": 1.0}     # times the mean score gap
# The default average of the iterates (ema="auto") weighs step t by (1 + p) / (t + p)
# (polynomial-decay averaging, Shamir & Zhang 2013): a window growing with the fit, which a fixed
# EMA is not. With batch B the mean of T steps' counts gives each point's share to a chi-square
# error of about N / (B T), so a window fixed at 100 samples per point floors at ~1e-2.
_AVERAGING_POWER = 3
# Coarse to fine: each level fits a random 1/_COARSENING of the points (per class), for
# 1/_COARSENING of the steps (at least _MIN_COARSE_STEPS, at most all), down to a level no larger
# than the batch.
_COARSENING = 8
_MIN_COARSE_STEPS = 200
_WARM_STARTS = ("multiscale", None)
# The chi-square checks assign up to _MAX_EVAL_SAMPLES fresh noise points (an estimate of the
# error to ~sqrt(2 N) / samples: 1.1e-3 at N = 10^5) and by default come every so many steps
# that they cost 1 / _CHECK_OVERHEAD of the fit (a check every 100 steps of 4096 at 10^6
# samples took 2.4x the fit's own time at N = 10^5).
_MAX_EVAL_SAMPLES = 400_000
_CHECK_OVERHEAD = 10
# quasi_random="auto" draws the fit's noise from a scrambled Sobol sequence up to this many
# features: the gain falls with the dimension (chi2 at equal steps x0.5 in d = 2, x0.66 in d = 8,
# x0.9 in d = 64; quasi_normal.py) while the sequence's cost, drawn on the CPU, grows with it
# (4096 points: 0.14 ms in d = 2, 0.55 ms in d = 16, 43 ms in d = 64; randn 0.24 ms in d = 16).
_QUASI_RANDOM_MAX_DIM = 16
# The fit's own problem, in the standardised frame: squared-Euclidean, whose potential 0 is the
# nearest-point assignment (the coupling is the same for both costs; see the module notes).
_FRAME_COST = "sqeuclidean"
# Rows standardised at a time (float64 scratch of this many rows).
_FRAME_ROWS = 65536
# Draws of a custom source that fix its frame (mean and spread): the frame only has to bring the
# noise near the origin at its own scale, so the sampling error of 1 / sqrt(4096) does no harm.
_NOISE_FRAME_SAMPLES = 4096
# Fingerprints of the same data agree to rounding (float64 sums in another order, on another
# device); another data set of the same size differs by ~1 / sqrt(N) in its moments.
_FINGERPRINT_RTOL = 1e-6
_STATE_VERSION = 2


class _Frame(NamedTuple):
    """The standardised frame of the fit: z = (y - center) / scale for the data, and
    (x - noise_center) / noise_scale for the noise."""
    center: torch.Tensor  # (D,) float64, CPU
    scale: float
    noise_center: torch.Tensor  # (D,) float64, CPU
    noise_scale: float

    @property
    def unit(self):
        """Scores of the data as given per score of the frame: C(x, y) = unit C(x~, z) + terms
        in x alone and in j alone."""
        return self.scale * self.noise_scale


class SemidiscreteSampler:
    """Pairs noise with the points of a finite data set through a semidiscrete OT potential.

    Args:
        data: (N, ...) tensor of target points (images are flattened for the cost). It may stay
            on the CPU while the work runs on ``device``.
        eps: entropic regularisation of the final potential; 0 (default) gives hard
            assignments by MIPS, eps > 0 draws from the soft assignment (Gumbel-max).
        cost: "sqeuclidean" or "dot".
        weights: (N,) target weights b (uniform by default); with ``labels``, the weights of
            each class are renormalised within it.
        labels: (N,) integer class labels for class-conditional use: one potential per class
            (SD-FM's conditional generation); ``assign`` then needs the query's labels.
        relative_eps: eps in units of std(C) between the noise and the data in the fit's
            standardised frame (see the module notes; for centred data of unit spread, std(C)
            between noise and data), brought back to the data's units, and the fit's ``lr`` in
            units of the mean gap between the best and second-best scores of a noise point.
        source: ``source(n, generator) -> Tensor`` of noise, shaped like the data or flat;
            default a standard normal.
        quasi_random: the fit's standard normal noise comes from a scrambled Sobol sequence
            (quasi_normal.py), whose counts per cell scatter less than independent draws':
            True, False, or "auto" (default): with the default source and at most 16 features
            per point. Pairing (``assign``) and the chi-square checks always use independent
            noise.
        device: where the search runs (default: the data's device).
        chunk_size: stream the data through the device in chunks of this many points.
        seed: seeds the noise generator of ``fit`` (rank 0's seed on every rank).
        process_group: the data set is sharded over the ranks of this torch.distributed group:
            every rank passes its own slice of the points (and of ``weights``, which sum to 1
            over all ranks), keeps its slice of g, and draws the same noise; the MIPS runs on
            the local shard and the winner over the ranks is agreed by a (value, index)
            exchange. Indices returned by ``assign`` are global (shards in rank order).

    ``assign`` and ``pair`` need a fitted potential: after ``fit`` (one step at least) or
    ``load_state_dict`` ``fitted`` is True; set ``sampler.fitted = True`` to pair with the
    potential as it stands (g = 0, or one set through ``potential``).

    The sampler keeps a standardised copy of the data (in the data's floating dtype) where the
    search runs: on ``device``, or beside the data when ``chunk_size`` streams them.
    """

    def __init__(self, data, eps=0.0, cost="sqeuclidean", *, weights=None, labels=None, relative_eps=True,
                 source=None, quasi_random="auto", device=None, chunk_size=None, seed=0, process_group=None):
        if not isinstance(data, torch.Tensor) or data.dim() < 1 or data.shape[0] == 0:
            raise ValueError("argument 'data' must be a non-empty tensor (N, ...) of points")
        self.data = data
        self._flat = data.reshape(data.shape[0], -1)
        validation.check_points("data", self._flat)
        if self._flat.dtype not in (torch.float32, torch.float64):
            self._flat = self._flat.float()  # half data: the search runs in float32
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"argument 'eps' must be a finite number >= 0, got {eps!r}")
        costs.check_cost(cost)
        if source is not None and not callable(source):
            raise ValueError(f"argument 'source' must be a callable (n, generator) -> Tensor, got {type(source).__name__}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"argument 'chunk_size' must be None or an int >= 1, got {chunk_size!r}")
        self.eps, self.cost, self.relative_eps = float(eps), cost, bool(relative_eps)
        self.source, self.chunk_size = source, chunk_size
        self.device = torch.device(device) if device is not None else data.device
        n = data.shape[0]
        self.group, self.offset, self.total = process_group, 0, n
        if process_group is None:
            self.weights = validation.weights("weights", weights, n, self._flat).cpu()
        else:
            if labels is not None:
                raise ValueError("argument 'labels': a conditional sampler cannot be sharded yet; "
                                 "give each class its own sampler")
            rank, _ = distributed.group_info(process_group)
            sizes = distributed.shard_sizes(n, self._flat.device, process_group)
            self.offset, self.total = sum(sizes[:rank]), sum(sizes)
            self.weights = validation.shard_weights("weights", weights, self._flat, process_group).cpu()
            seed = distributed.broadcast_int(int(seed), self._flat.device, process_group)
        self.seed = int(seed)
        self.quasi_random = _resolve_quasi_random(quasi_random, source, self._flat.shape[1])
        self._quasi = QuasiNormal(self._flat.shape[1], distributed.derived_seed(self.seed, 7)) \
            if self.quasi_random else None
        self.groups = _groups(labels, n)  # [(label, global indices)], one per class
        for label, index in self.groups if labels is not None else []:
            total = self.weights[index].sum()
            if total <= 0:
                raise ValueError(f"argument 'weights': class {label} has no mass")
            self.weights[index] /= total
        self._set_frame(_Frame(*self._measure_data_frame(), *self._measure_noise_frame()))
        # The fit's potential in the standardised frame (the public one is ``potential``).
        self.g = torch.zeros(n, dtype=torch.float64)
        self.g_ema = None
        self.step = 0
        self.fitted = False  # True after a fit step or a loaded state: assign refuses before
        self.spread = None  # std(C) between noise and data in the frame, set by the first fit
        self.gap = None  # mean best - second-best score at the start of the first fit (lr unit)
        self.history = []
        self.warm_started = False  # the coarse-to-fine start has run (or was not wanted)
        self._generator = torch.Generator().manual_seed(int(seed))
        self._optimizer_state = None
        self._optimizer_name = None

    @property
    def potential(self):
        """The fitted potential g (N,), float64 (the moving average when one was kept), of the
        cost between the noise and the data as given: noise x goes to
        argmin_j C(x, y_j) - g_j. A point of weight 0 has -inf: it is never assigned.

        It is converted from the fit's standardised frame; for data far from the origin it
        carries the float64 rounding of |y_j|^2 / 2 (1e-4 at an offset of 1e6 for the
        squared-Euclidean cost), which ``assign`` never sees. Setting it (same meaning) gives
        the potential the next fit starts from, or ``assign`` uses once ``fitted`` is set.
        """
        g = self._frame.unit * self._current() + self._potential_shift
        return torch.where(self.weights > 0, g, -math.inf)

    @potential.setter
    def potential(self, value):
        n = self.g.shape[0]
        if not isinstance(value, torch.Tensor) or value.shape != (n,) or not value.is_floating_point():
            raise ValueError(f"argument 'potential' must be a float tensor of shape ({n},)")
        value = value.detach().double().cpu()
        if not torch.isfinite(value[self.weights > 0]).all():
            raise ValueError("argument 'potential' must be finite at every point of positive weight")
        self.g = self._from_public(value)
        self.g_ema = None

    def _current(self):
        """The potential in the frame that pairing uses: the average when one was kept."""
        return self.g_ema if self.g_ema is not None else self.g

    def _from_public(self, g):
        """The frame's potential of a potential of the data as given (0 at weight-0 points)."""
        u = (g - self._potential_shift) / self._frame.unit
        return torch.where(self.weights > 0, u, 0.0)

    @property
    def conditional(self):
        return self.groups[0][0] is not None

    # --- the standardised frame ----------------------------------------------------------

    def _row_blocks(self):
        return [(r0, min(self._flat.shape[0], r0 + _FRAME_ROWS)) for r0 in range(0, self._flat.shape[0], _FRAME_ROWS)]

    def _measure_data_frame(self):
        """(weighted mean, spread) of the data over all ranks, float64: the spread is the root
        mean square distance to the mean per feature, in two passes (one pass, E|y|^2 - |E y|^2,
        would cancel as badly as the scores it is meant to save)."""
        dim = self._flat.shape[1]
        w = self.weights.to(self._flat.device)  # sums to 1 (to 1 per class when conditional)
        total = torch.zeros(dim + 1, dtype=torch.float64, device=self._flat.device)
        for r0, r1 in self._row_blocks():
            total[:dim] += w[r0:r1] @ self._flat[r0:r1].double()
            total[dim] += w[r0:r1].sum()
        total = _total_vector(total, self.group).cpu()
        center = total[:dim] / total[dim]
        squares = torch.zeros(2, dtype=torch.float64, device=self._flat.device)
        for r0, r1 in self._row_blocks():
            d2 = (self._flat[r0:r1].double() - center.to(self._flat.device)).square().sum(1)
            squares += torch.stack([w[r0:r1] @ d2, d2.sum()])
        squares = _total_vector(squares, self.group).cpu()
        # The weighted spread; the points' own when the mass sits on one place; any unit when
        # every point is the same (then every score is too).
        for spread in (squares[0] / total[dim], squares[1] / self.total):
            if spread > 0:
                return center, math.sqrt(float(spread) / dim)
        return center, 1.0

    def _measure_noise_frame(self):
        """(mean, spread) of the noise: exactly (0, 1) for the default standard normal; a
        custom source's from a fixed sample of it (the same on every rank)."""
        dim = self._flat.shape[1]
        if self.source is None:
            return torch.zeros(dim, dtype=torch.float64), 1.0
        gen = torch.Generator().manual_seed(distributed.derived_seed(self.seed, 13))
        x = self._source_noise(_NOISE_FRAME_SAMPLES, gen).double().cpu()
        center = x.mean(0)
        spread = float((x - center).square().mean())
        return center, math.sqrt(spread) if spread > 0 else 1.0

    def _set_frame(self, frame):
        """Standardises the data into the frame (the search's copy), and with it the start
        (g = 0), the conversion of potentials and the fingerprint of the data."""
        self._frame = frame
        n, dim = self._flat.shape
        # The points the search reads: on the device, or beside the data to be streamed.
        where = self._flat.device if self.chunk_size is not None else self.device
        self._search = torch.empty((n, dim), dtype=self._flat.dtype, device=where)
        # The potential of the data as given is unit * g + shift (potential, _from_public):
        # g_j - |z_j|^2 / 2 is the bias of the frame's scores <x~, z_j>, and
        # <x, y_j> = unit <x~, z_j> + scale <noise_center, z_j> + (terms in x alone).
        self._potential_shift = torch.empty(n, dtype=torch.float64)
        probe = torch.randn(dim, generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
        probe = (probe / probe.norm()).to(self._flat.device)
        projections = torch.empty(n, dtype=torch.float64, device=self._flat.device)
        center, noise_center = frame.center.to(self._flat.device), frame.noise_center.to(self._flat.device)
        for r0, r1 in self._row_blocks():
            y = self._flat[r0:r1].double()
            z = (y - center) / frame.scale
            self._search[r0:r1] = z.to(where, self._flat.dtype)
            shift = costs.cost_offsets(y, self.cost) - frame.scale * (z @ noise_center) \
                - frame.unit * costs.cost_offsets(z, _FRAME_COST)
            self._potential_shift[r0:r1] = shift.cpu()
            projections[r0:r1] = z @ probe
        self._fingerprint = self._measure_fingerprint(projections.cpu())

    def _measure_fingerprint(self, projections):
        """What a fitted state belongs to: sizes, frame, and moments over all ranks of the
        standardised data along a fixed direction, tied to the points' order and weights."""
        n_local = self._flat.shape[0]
        position = (torch.arange(n_local, dtype=torch.float64) + self.offset + 0.5) / self.total
        w = self.weights.cpu()
        moments = torch.stack([projections.sum(), projections.square().sum(), (position * projections).sum(),
                               (w * projections).sum() * self.total, (position * w).sum() * self.total])
        if self.conditional:
            labels = torch.zeros(n_local, dtype=torch.float64)
            for label, index in self.groups:
                labels[index] = float(label)
            moments = torch.cat([moments, (position * labels).sum().reshape(1)])
        moments = _total_vector(moments.to(self._flat.device), self.group).cpu() / self.total
        classes = None if not self.conditional else [(label, len(index)) for label, index in self.groups]
        return {"rows": (self.offset, n_local, self.total), "dim": self._flat.shape[1], "classes": classes,
                "center": self._frame.center.clone(), "scale": self._frame.scale,
                "noise_center": self._frame.noise_center.clone(), "noise_scale": self._frame.noise_scale,
                "moments": moments}

    def _standardise_noise(self, x):
        """Noise (n, D) of the data's dtype into the frame (float64 arithmetic: a source far
        from the origin would cancel like the data)."""
        f = self._frame
        return ((x.double() - f.noise_center.to(x.device)) / f.noise_scale).to(x.dtype)

    # --- fitting -------------------------------------------------------------------------

    def fit(self, num_steps, batch_size=1024, lr=None, *, optimizer="auto", schedule="cosine", ema="auto",
            eps_start=None, anneal_fraction=0.5, target_chi2=None, warm_start="multiscale", progress=True,
            log_every=None, eval_samples=None, checkpoint=None, checkpoint_every=None):
        """Runs stochastic ascent until ``self.step == num_steps`` (a resumed fit continues), or
        until the chi-square marginal error measured every ``log_every`` steps is at most
        ``target_chi2`` (hard, unconditional fits).

        Args:
            num_steps: total steps of the fit (the schedule spans them).
            batch_size: noise samples per step (per class when conditional).
            lr: step size, decayed by ``schedule``. For "newton" the fraction of a Newton step
                (default 0.6, scaled by the hits a point expects per batch where under one);
                with "auto" it is that fraction on the Newton levels, and the Adam level takes
                its default. For Adam and SGD, in units of the mean score gap when
                ``relative_eps`` (the change of g_j that hands a typical noise point to its
                neighbour); default the smaller of 0.1 std(C) and 3 gaps for Adam; for SGD,
                which steps along the relative marginal error (b_j - p_j) / b_j, of 1 std(C)
                and 1 gap.
            optimizer: "newton": each point's step is its marginal error over its weight
                times its own mean score gap, a diagonal Newton step whose Hessian is read off
                a top-2 search (solvers/semidual_newton.py); "adam"; "sgd"; or "auto"
                (default): Adam when the points (per class) are at most one batch, as on the
                coarsest level of a multiscale fit, Newton above.
            schedule: "cosine", "linear", "inverse_sqrt" or "constant" decay of lr.
            ema: how the iterates of g are averaged: "auto" (default) weighs step t by
                4 / (t + 3), a window that grows with the fit; a number in (0, 1) is the decay
                of a fixed exponential moving average; 0 keeps no average.
            eps_start: when given, assignments start soft at this eps (relative like ``eps``)
                and decay geometrically to the final eps over ``anneal_fraction`` of the steps;
                with a final eps of 0, they turn hard after that.
            target_chi2: stop early at this marginal error (None: run all the steps).
            warm_start: "multiscale" (default): a fresh fit of more points than ``batch_size``
                (per class) first fits a random eighth of them with num_steps / 8 steps and the
                same settings (recursively) and extends that potential to every point; None
                starts from g = 0 in the standardised frame, which pairs each noise point with
                its nearest standardised data point (or from a ``potential`` set before).
            progress: show a tqdm bar with the chi-square marginal error.
            log_every: steps per entry of ``history`` and per chi-square measurement, which
                assigns ``eval_samples`` fresh noise points (default 16 N, within
                [65536, 400000]: the estimate's noise is about sqrt(2 N) / eval_samples) with the
                current potential. Default: a multiple of 100 steps at which the checks cost
                about a tenth of the fit's own searches (1,000 steps for N = 10^5, batch 4096).
            checkpoint, checkpoint_every: save ``state_dict()`` to this path every so many steps
                (written whole or not at all: a new file replaces the old one); a sharded sampler
                needs ``{rank}`` in the path, one file per rank.
        """
        self._check_fit_args(num_steps, batch_size, lr, optimizer, schedule, ema, eps_start, anneal_fraction,
                             target_chi2, warm_start, log_every, eval_samples, checkpoint, checkpoint_every)
        if checkpoint and self.group is not None:
            checkpoint = os.fspath(checkpoint).replace("{rank}", str(distributed.group_info(self.group)[0]))
        settings = dict(lr=lr, optimizer=optimizer, schedule=schedule, ema=ema, eps_start=eps_start,
                        anneal_fraction=anneal_fraction, target_chi2=target_chi2, log_every=log_every)
        if optimizer == "auto":
            optimizer = "adam" if self._largest_class() <= batch_size else "newton"
            lr = lr if optimizer == "newton" else None  # lr is a Newton fraction under "auto"
        if self._optimizer_name is not None and optimizer != self._optimizer_name:
            raise ValueError(f"argument 'optimizer': this fit was started with {self._optimizer_name!r}")
        if warm_start and self.step == 0 and not self.warm_started:
            self._multiscale_start(num_steps, batch_size, progress, settings)
        if self.spread is None:
            self.spread = self._measure_spread()
        unit = self._eps_unit()
        if optimizer == "newton":
            base_lr = _DEFAULT_NEWTON_STEP if lr is None else lr
        else:
            if self.gap is None:
                self.gap = self._measure_gap()
            if lr is None:
                base_lr = min(_DEFAULT_LR_SPREAD[optimizer] * self.spread, _DEFAULT_LR_GAP[optimizer] * self.gap)
            else:  # in gaps, or absolute in the potential's units
                base_lr = lr * (self.gap if self.relative_eps else 1.0 / self._frame.unit)
        g = self.g.to(self.device).requires_grad_(False)
        b = self.weights.to(self.device)
        opt = self._make_optimizer(optimizer, g, base_lr, b, batch_size)
        ema_g = None if not ema else (self.g_ema.to(self.device) if self.g_ema is not None else g.detach().clone())
        if eval_samples is None:
            eval_samples = min(_MAX_EVAL_SAMPLES, max(65_536, 16 * self.total))
        if log_every is None:  # no checks (conditional or soft fits): every 100 steps
            checks = 0 if self.conditional or self.eps > 0 else eval_samples / batch_size  # batches' worth
            log_every = 100 * max(1, math.ceil(_CHECK_OVERHEAD * checks / 100))
        bar = tqdm(total=num_steps, initial=self.step, disable=not progress, desc=f"semidiscrete fit, N={self.total}", leave=False)
        try:
            while self.step < num_steps:
                noise_state = self._noise_state()
                try:
                    frac = self.step / num_steps
                    eps = self._eps_at(frac, eps_start, anneal_fraction) * unit
                    for group in opt.param_groups:
                        group["lr"] = base_lr * _decay(schedule, frac, self.step)
                    estimate = self._gradient(g, b, eps, batch_size, gaps=optimizer == "newton")
                    value = estimate.value
                    if optimizer == "newton":
                        opt.step(estimate, eps)
                    else:
                        grad = estimate.gradient / b.clamp_min(1e-300) if optimizer == "sgd" else estimate.gradient
                        g.grad = -grad  # the optimisers minimise; the semi-dual is maximised
                        opt.step()
                    if ema_g is not None:
                        weight = (1 + _AVERAGING_POWER) / (self.step + 1 + _AVERAGING_POWER) if ema == "auto" \
                            else 1 - ema
                        ema_g.mul_(1 - weight).add_(g.detach(), alpha=weight)
                except BaseException:
                    self._set_noise_state(noise_state)  # the step did not happen
                    raise
                self.step += 1
                self.fitted = True
                # Copies: an interrupted next step must leave this step's state untouched.
                self.g = g.detach().clone().cpu()
                self.g_ema = ema_g.detach().clone().cpu() if ema_g is not None else None
                self._optimizer_state = copy.deepcopy(opt.state_dict())
                bar.update(1)
                if self.step % log_every == 0 or self.step == num_steps:
                    # Fresh noise against the current potential: the assignments of the training
                    # batches are no measure, since the potential reacts to them as it goes.
                    chi2 = self.marginal_error(eval_samples, seed=self.step) \
                        if eps == 0 and not self.conditional else float("nan")
                    # value, lr: in the standardised frame; eps: in the data's units.
                    self.history.append({"step": self.step, "chi2": chi2, "value": value,
                                         "lr": opt.param_groups[0]["lr"], "eps": eps * self._frame.unit})
                    bar.set_postfix(chi2=f"{chi2:.2e}", eps=f"{eps * self._frame.unit:.2g}")
                if checkpoint and self.step % checkpoint_every == 0:
                    _save_atomically(self.state_dict(), checkpoint)
                if target_chi2 is not None and self.history and self.history[-1]["step"] == self.step \
                        and self.history[-1]["chi2"] <= target_chi2:
                    break
        finally:
            bar.close()
        return self

    def _check_fit_args(self, num_steps, batch_size, lr, optimizer, schedule, ema, eps_start, anneal_fraction,
                        target_chi2, warm_start, log_every, eval_samples, checkpoint, checkpoint_every):
        """Every argument of fit, before any work: a value that fails here would otherwise
        fail (or be ignored) steps or minutes later."""
        counts = (("num_steps", num_steps), ("batch_size", batch_size), ("log_every", log_every),
                  ("eval_samples", eval_samples), ("checkpoint_every", checkpoint_every if checkpoint else 1))
        for name, value in counts:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"argument '{name}' must be an int >= 1, got {value!r}")
        if lr is not None:
            validation.positive("lr", lr)
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"argument 'optimizer' must be one of {_OPTIMIZERS}, got {optimizer!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"argument 'schedule' must be one of {_SCHEDULES}, got {schedule!r}")
        if ema != "auto" and (not isinstance(ema, (int, float)) or isinstance(ema, bool) or not 0 <= ema < 1):
            raise ValueError(f"argument 'ema' must be 'auto' or lie in [0, 1), got {ema!r}")
        if eps_start is not None:
            validation.positive("eps_start", eps_start)
        if target_chi2 is not None:
            validation.positive("target_chi2", target_chi2)
            if self.conditional or self.eps > 0:  # no chi2 is measured: it would never stop the fit
                raise ValueError("argument 'target_chi2' needs a hard (eps = 0), unconditional sampler")
        if warm_start not in _WARM_STARTS:
            raise ValueError(f"argument 'warm_start' must be one of {_WARM_STARTS}, got {warm_start!r}")
        if not isinstance(anneal_fraction, (int, float)) or isinstance(anneal_fraction, bool) \
                or not 0 < anneal_fraction <= 1:
            raise ValueError(f"argument 'anneal_fraction' must lie in (0, 1], got {anneal_fraction!r}")
        if checkpoint:
            if not isinstance(checkpoint, (str, os.PathLike)):
                raise ValueError(f"argument 'checkpoint' must be a path, got {type(checkpoint).__name__}")
            path = os.fspath(checkpoint)
            if self.group is not None and "{rank}" not in path:  # each rank holds its own shard's state
                raise ValueError(f"argument 'checkpoint': a sharded sampler saves one file per rank; put "
                                 f"'{{rank}}' in the path, got {path!r}")
            folder = os.path.dirname(path) or "."
            if not os.path.isdir(folder):
                raise ValueError(f"argument 'checkpoint': folder {folder!r} does not exist")

    def _make_optimizer(self, name, g, lr, b, batch_size):
        if name == "newton":
            opt = DiagonalNewton(g, lr, b, batch_size, self.group)
        elif name == "adam":
            opt = torch.optim.Adam([g], lr=lr, betas=(0.9, 0.999))
        else:
            opt = torch.optim.SGD([g], lr=lr)
        if self._optimizer_state is not None:
            opt.load_state_dict(self._optimizer_state)
        self._optimizer_name = name
        return opt

    def _multiscale_start(self, num_steps, batch_size, progress, settings):
        """Fits a random 1/_COARSENING of the points (a nested sampler, which does the same in
        turn) and extends its potential to all points. Nothing is drawn from the fit's own
        generator, so a fit that is interrupted here and restarted ends where an uninterrupted
        one does."""
        if self._largest_class() <= batch_size:
            self.warm_started = True
            return
        gen = torch.Generator().manual_seed(distributed.derived_seed(self.seed, 1 + self.total, 8))
        centers, center_labels, nearest = [], [], torch.empty(self._flat.shape[0], dtype=torch.long)
        for label, index in self.groups:
            points = self._points(index)
            rows = torch.arange(points.shape[0]) if index is None else index
            keep = rows[torch.randperm(len(rows), generator=gen)[:math.ceil(len(rows) / _COARSENING)]].sort().values
            nearest[rows] = keep[semidiscrete.nearest(points, self._points(keep).to(self.device),
                                                      chunk_size=self.chunk_size)]
            nearest[keep] = keep  # a centre is its own (float32 scores can tie close neighbours)
            centers.append(keep)
            center_labels.append(torch.full((len(keep),), -1 if label is None else label, dtype=torch.long))
        centers, order = torch.cat(centers).sort()
        # Each point's weight goes to its centre, so the coarse measure is the data's, moved
        # by at most the distance to the nearest centre (and each class keeps its mass).
        slot = torch.searchsorted(centers, nearest)
        weights = torch.zeros(len(centers), dtype=torch.float64).index_add_(0, slot, self.weights)
        labels = None
        if self.conditional:  # the weights sum to 1 per class: to 1 over all, for the constructor
            labels, weights = torch.cat(center_labels)[order], weights / len(self.groups)
        coarse = SemidiscreteSampler(
            self._flat[centers.to(self._flat.device)], self.eps, self.cost,
            weights=weights.to(self._flat.device), labels=labels, relative_eps=self.relative_eps,
            source=self.source, quasi_random=self.quasi_random, device=self.device, chunk_size=self.chunk_size,
            seed=distributed.derived_seed(self.seed, len(centers)), process_group=self.group)
        coarse._set_frame(self._frame)  # its potential, in this frame, extends to these points
        steps = min(num_steps, max(_MIN_COARSE_STEPS, num_steps // _COARSENING))
        coarse.fit(steps, batch_size, progress=progress, **settings)
        barycenters, _ = coarse._frame_cell_means(min(1_000_000, max(65_536, 16 * coarse.total)))
        g = semidiscrete.extend_potential(self._search, coarse._search, coarse._current(), barycenters,
                                          slot, _FRAME_COST)
        self.g, self.warm_started = g.cpu(), True

    def _largest_class(self):
        """Points of the largest class (all points, over all ranks, when unconditional)."""
        return self.total if not self.conditional else max(len(index) for _, index in self.groups)

    def _eps_at(self, frac, eps_start, anneal_fraction):
        if eps_start is None:
            return self.eps
        if frac >= anneal_fraction:
            return self.eps
        end = self.eps if self.eps > 0 else eps_start * 1e-3
        return eps_start * (end / eps_start) ** (frac / anneal_fraction)

    def _noise(self, n, generator=None):
        """n flat noise points on the device in the standardised frame, from ``generator``
        (default the fit's own stream: the quasi-random sequence when there is one)."""
        if generator is None and self._quasi is not None:
            return self._quasi.draw(n, self._flat.dtype, self.device)  # standard normal: frame (0, 1)
        return self._standardise_noise(self._source_noise(n, generator if generator is not None else self._generator))

    def _source_noise(self, n, generator):
        """n flat noise points on the device, as the source gives them."""
        if self.source is None:
            noise = torch.randn(n, self._flat.shape[1], generator=generator, dtype=self._flat.dtype)
        else:
            noise = self.source(n, generator)
            if not isinstance(noise, torch.Tensor) or noise.shape[0] != n:
                raise ValueError(f"argument 'source': source(n, generator) must return a tensor with n = {n} rows")
        noise = noise.reshape(n, -1)
        if noise.shape[1] != self._flat.shape[1]:
            raise ValueError(f"argument 'source': noise has {noise.shape[1]} features per point, data {self._flat.shape[1]}")
        return noise.to(self.device, self._flat.dtype)

    def _noise_state(self):
        """Where the fit's random streams stand: the generator and the quasi-random position."""
        return self._generator.get_state(), None if self._quasi is None else self._quasi.position

    def _set_noise_state(self, state):
        self._generator.set_state(state[0])
        if self._quasi is not None:
            self._quasi.seek(state[1])

    def _points(self, index):
        """The searched points of one class (``index`` its global indices), or all (None)."""
        return self._search if index is None else self._search[index.to(self._search.device)]

    def _gradient(self, g, b, eps, batch_size, gaps=False):
        """The semidual estimate on a fresh noise batch (one per class, joined)."""
        if not self.conditional:
            return semidiscrete.semidual_gradient(self._noise(batch_size), self._search, g, b, eps, _FRAME_COST,
                                                  chunk_size=self.chunk_size, process_group=self.group,
                                                  offset=self.offset, gaps=gaps)
        fields = ("gradient", "counts") + (("gap_sums", "gap_counts") if gaps else ())
        joined = {name: torch.zeros_like(b) for name in fields}
        value = 0.0
        for _, index in self.groups:
            index_d = index.to(self.device)
            estimate = semidiscrete.semidual_gradient(self._noise(batch_size), self._points(index), g[index_d],
                                                      b[index_d], eps, _FRAME_COST, chunk_size=self.chunk_size,
                                                      gaps=gaps)
            for name in fields:
                joined[name][index_d] = getattr(estimate, name)
            value += estimate.value / len(self.groups)
        return semidiscrete.SemidualEstimate(value=value, **{"gap_sums": None, "gap_counts": None, **joined})

    def _measure_spread(self):
        x = self._noise(min(4096, max(256, self.total)))
        a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64, device=x.device)
        # A subsample of the data; drawn over all shards' global indices so that every rank
        # (and one process holding everything) uses the same points and generator state.
        rows = torch.randperm(self.total, generator=self._generator)[:16384]
        rows = rows[(rows >= self.offset) & (rows < self.offset + self._flat.shape[0])] - self.offset
        # Renormalised to sum to 1 over the subsample (a conditional sampler's weights sum to 1
        # per class, so to the number of classes over all points).
        b = self.weights[rows] / _total(self.weights[rows].sum(), self.group)
        reduce_y = None if self.group is None else (lambda t: distributed.all_sum(t, self.group))
        # The user's cost between the standardised clouds: for centred data of unit spread the
        # std(C) between noise and data, and the same whatever the data's offset and scale.
        spread = costs.cost_std(x, self._search[rows.to(self._search.device)].to(x.device), a, b.to(x.device),
                                self.cost, reduce_y=reduce_y)
        return spread if spread > 0 else 1.0

    def _measure_gap(self):
        x = self._noise(min(4096, max(256, self.total)))
        gaps = [semidiscrete.score_gap(x, self._points(index), self.g if index is None else self.g[index],
                                       _FRAME_COST, b=self.weights if index is None else self.weights[index],
                                       chunk_size=self.chunk_size, process_group=self.group)
                for _, index in self.groups]
        gap = sum(gaps) / len(gaps)
        # One data point per class has no runner-up: fall back on the cost spread.
        return gap if gap > 0 else self.spread

    def _hard_assignments(self, num_samples, batch_size, seed):
        """Yields (noise in the frame, this process's local index of its point, mask of the rows
        that went to this process's points) for ``num_samples`` fresh noise points per class,
        drawn with ``seed`` and assigned with the current potential by hard assignment."""
        gen = torch.Generator().manual_seed(distributed.derived_seed(self.seed, seed, 12345))
        g = self._current()
        for _, index in self.groups:
            done = 0
            while done < num_samples:
                n = min(batch_size, num_samples - done)
                x = self._noise(n, gen)
                g_c, b_c = (g, self.weights) if index is None else (g[index], self.weights[index])
                idx = semidiscrete.assign(x, self._points(index), g_c, b_c, 0.0, _FRAME_COST,
                                          chunk_size=self.chunk_size,
                                          process_group=self.group, offset=self.offset).cpu()
                local = idx - self.offset if index is None else index[idx]
                mine = (local >= 0) & (local < self._flat.shape[0])
                yield x, local[mine], mine
                done += n

    def marginal_error(self, num_samples=100_000, batch_size=8192, seed=0):
        """Chi-square marginal error of the hard assignments of ``num_samples`` fresh noise
        points drawn with ``seed`` (unconditional only; the multinomial noise removed, see
        marginal_chi2)."""
        if self.conditional:
            raise ValueError("marginal_error: a conditional sampler has one marginal per class")
        counts = torch.zeros(self._flat.shape[0], dtype=torch.float64)
        for _, local, _ in self._hard_assignments(num_samples, batch_size, seed):
            counts += torch.bincount(local, minlength=counts.shape[0]).double()
        return semidiscrete.marginal_chi2(counts, self.weights, num_samples, self.group)

    def cell_means(self, num_samples=100_000, batch_size=8192, seed=1):
        """(N, D) float64: the mean of the noise that the current potential assigns to each of
        this process's points (per class: ``num_samples`` draws each), estimated from fresh
        noise; 0 for a point that received none."""
        means, counts = self._frame_cell_means(num_samples, batch_size, seed)
        f = self._frame
        return torch.where(counts[:, None] > 0, means * f.noise_scale + f.noise_center, 0.0)

    def _frame_cell_means(self, num_samples, batch_size=8192, seed=1):
        """cell_means in the standardised frame, and the counts behind them."""
        sums = torch.zeros(self._flat.shape, dtype=torch.float64)
        counts = torch.zeros(self._flat.shape[0], dtype=torch.float64)
        for x, local, mine in self._hard_assignments(num_samples, batch_size, seed):
            sums.index_add_(0, local, x.cpu().double()[mine])
            counts += torch.bincount(local, minlength=counts.shape[0]).double()
        return sums / counts.clamp_min(1)[:, None], counts

    # --- pairing -------------------------------------------------------------------------

    def _require_fitted(self, what):
        """The one check behind assign, pair and the pair dataset: a potential nobody fitted
        (g = 0) pairs each noise point with its nearest standardised point, not by OT."""
        if not self.fitted:
            raise ValueError(f"{what}: the sampler has not been fitted: call fit(...) or load_state_dict(...) "
                             "first, or set sampler.fitted = True to pair with its potential as it stands")

    def _eps_unit(self):
        """Absolute eps in the frame per unit of the sampler's eps (and of eps_start)."""
        if not self.relative_eps:
            return 1.0 / self._frame.unit
        if self.spread is None:
            self.spread = self._measure_spread()
        return self.spread

    def assign(self, x0, labels=None, generator=None):
        """LongTensor (B,): for each noise point x0[i] the index of its data point (never one
        of weight 0). Needs a fitted potential (see ``fitted``)."""
        flat = self._standardise_noise(_queries(x0, self._flat).to(self.device))
        if not self.conditional and labels is not None:
            raise ValueError("argument 'labels': this sampler was built without class labels")
        if self.conditional and (not isinstance(labels, torch.Tensor) or labels.shape != (flat.shape[0],)):
            raise ValueError(f"argument 'labels' must be a tensor of {flat.shape[0]} class labels")
        self._require_fitted("assign")
        g, b = self._current(), self.weights
        eps = self.eps * self._eps_unit()
        if not self.conditional:
            return semidiscrete.assign(flat, self._search, g, b, eps, _FRAME_COST, generator=generator,
                                       chunk_size=self.chunk_size, process_group=self.group, offset=self.offset)
        out = torch.full((flat.shape[0],), -1, dtype=torch.long, device=flat.device)
        labels = labels.to(flat.device)
        for label, index in self.groups:
            rows = (labels == label).nonzero().squeeze(1)
            if len(rows):
                local = semidiscrete.assign(flat[rows], self._points(index), g[index],
                                            b[index], eps, _FRAME_COST,
                                            generator=generator, chunk_size=self.chunk_size)
                out[rows] = index.to(flat.device)[local]
        if (out < 0).any():
            unknown = labels[out < 0][0].item()
            raise ValueError(f"argument 'labels': label {unknown} is not a class of the data")
        return out

    def pair(self, x0, labels=None, generator=None):
        """``(x0, data[assign(x0)])``, the data points on x0's device (fetched from the rank
        that holds them when the data set is sharded). Needs a fitted potential."""
        idx = self.assign(x0, labels, generator).to(self.data.device)
        if self.group is None:
            return x0, self.data[idx].to(x0.device)
        local = idx - self.offset
        mine = (local >= 0) & (local < self.data.shape[0])
        x1 = torch.zeros((idx.shape[0], *self.data.shape[1:]), dtype=self.data.dtype, device=self.data.device)
        x1[mine] = self.data[local[mine]]
        torch.distributed.all_reduce(x1, group=self.group)  # exactly one rank holds each row
        return x0, x1.to(x0.device)

    # --- state ---------------------------------------------------------------------------

    def state_dict(self):
        """Everything to pair with the fit or continue it. ``g``, ``g_ema``, ``spread`` and
        ``gap`` are in the standardised frame (``potential`` converts); ``fingerprint`` ties
        the state to the data, weights, labels and noise source it was fitted on."""
        return {"version": _STATE_VERSION, "g": self.g.clone(),
                "g_ema": None if self.g_ema is None else self.g_ema.clone(),
                "step": self.step, "fitted": self.fitted, "spread": self.spread, "gap": self.gap,
                "noise": self._noise_state(), "optimizer": copy.deepcopy(self._optimizer_state),
                "optimizer_name": self._optimizer_name, "history": list(self.history),
                "warm_started": self.warm_started, "eps": self.eps, "relative_eps": self.relative_eps,
                "cost": self.cost, "num_points": self.g.shape[0], "fingerprint": copy.deepcopy(self._fingerprint)}

    def load_state_dict(self, state):
        """Takes a state from ``state_dict()`` of a sampler built like this one: on the same
        data (checked by its fingerprint), weights, labels, cost, eps and noise source; a
        mismatch raises a ValueError naming it. States saved before fingerprints (whose
        potential was of the data as given) still load, with a warning that they cannot be
        checked."""
        self._check_state(state)
        old = "fingerprint" not in state
        if old:
            warnings.warn("load_state_dict: this state was saved without a fingerprint of its data, so it "
                          "cannot be checked against this sampler's data; save it again to have it checked",
                          UserWarning, stacklevel=2)
        # A state without a fingerprint holds the potential of the data as given, in its units.
        convert = self._from_public if old else (lambda g: g.clone())
        unit = self._frame.unit if old else 1.0
        self.g = convert(state["g"].double().cpu())
        self.g_ema = None if state["g_ema"] is None else convert(state["g_ema"].double().cpu())
        self.step = state["step"]
        self.spread = None if state["spread"] is None else state["spread"] / unit
        self.gap = None if state["gap"] is None else state["gap"] / unit
        noise = state["noise"] if "noise" in state else (state["generator"], None)  # before quasi_random
        if (noise[1] is None) != (self._quasi is None):
            raise ValueError("load_state_dict: the state was saved with quasi_random="
                             f"{noise[1] is not None}, this sampler has {self.quasi_random}")
        self._set_noise_state(noise)
        self._optimizer_state = copy.deepcopy(state["optimizer"])
        if old and state["optimizer_name"] == "newton":  # its score gaps, into the frame's units
            self._optimizer_state["gap_sums"] = self._optimizer_state["gap_sums"] / unit
        self._optimizer_name = state["optimizer_name"]
        self.history = list(state["history"])
        self.warm_started = state.get("warm_started", self.step > 0)
        self.fitted = state.get("fitted", self.step > 0)

    def _check_state(self, state):
        """Raises a ValueError naming what does not fit before anything is loaded."""
        if not isinstance(state, dict):
            raise ValueError(f"load_state_dict: argument 'state' must be a dict from SemidiscreteSampler.state_dict(), "
                             f"got {type(state).__name__}")
        missing = [k for k in ("g", "g_ema", "step", "spread", "gap", "optimizer", "optimizer_name", "history",
                               "num_points", "cost") if k not in state]
        if "noise" not in state and "generator" not in state:
            missing.append("noise")
        if missing:
            raise ValueError(f"load_state_dict: argument 'state' lacks {missing}: not a SemidiscreteSampler state")
        n = self.g.shape[0]
        if state["num_points"] != n or state["cost"] != self.cost:
            raise ValueError(f"load_state_dict: the state is for {state['num_points']} points and cost "
                             f"{state['cost']!r}, this sampler has {n} and {self.cost!r}")
        for name in ("eps", "relative_eps"):
            if name in state and state[name] != getattr(self, name):
                raise ValueError(f"load_state_dict: the state was fitted with {name}={state[name]!r}, this sampler "
                                 f"has {name}={getattr(self, name)!r}; build the sampler with the state's {name}")
        for name in ("g", "g_ema"):
            g = state[name]
            if g is None and name == "g_ema":
                continue
            if not isinstance(g, torch.Tensor) or g.shape != (n,) or not g.is_floating_point():
                shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
                raise ValueError(f"load_state_dict: the state's {name!r} must be a float tensor of shape ({n},), "
                                 f"got {shape}")
            if not torch.isfinite(g.cpu()[self.weights > 0]).all():
                raise ValueError(f"load_state_dict: the state's {name!r} has NaN or Inf at points of positive weight")
        if "fingerprint" in state:
            self._check_fingerprint(state["fingerprint"])

    def _check_fingerprint(self, saved):
        mine = self._fingerprint
        for key, what in (("rows", "rows (offset, local, total)"), ("dim", "features per point"),
                          ("classes", "classes (label, size)")):
            if saved.get(key) != mine[key]:
                raise ValueError(f"load_state_dict: the state was fitted on data with {what} {saved.get(key)}, "
                                 f"this sampler's data have {mine[key]}")

        def close(a, b, scale):
            return bool((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64))
                        .abs().max() <= _FINGERPRINT_RTOL * scale)

        if not (close(saved["scale"], mine["scale"], mine["scale"])
                and close(saved["center"], mine["center"], mine["scale"])
                and close(saved["moments"], mine["moments"], 1.0)):
            raise ValueError("load_state_dict: the state was fitted on other data (or weights, labels or order of "
                             "the points) than this sampler's: their fingerprints (mean, spread and moments) differ")
        if not (close(saved["noise_scale"], mine["noise_scale"], mine["noise_scale"])
                and close(saved["noise_center"], mine["noise_center"], mine["noise_scale"])):
            raise ValueError("load_state_dict: the state was fitted with another noise source (argument 'source'): "
                             "the mean or spread of its noise differs from this sampler's")


def _resolve_quasi_random(quasi_random, source, dim):
    if quasi_random == "auto":
        return source is None and dim <= _QUASI_RANDOM_MAX_DIM
    if not isinstance(quasi_random, bool):
        raise ValueError(f"argument 'quasi_random' must be True, False or 'auto', got {quasi_random!r}")
    if quasi_random and source is not None:
        raise ValueError("argument 'quasi_random': a quasi-random fit draws standard normal noise, "
                         "so it cannot be combined with a 'source'")
    if quasi_random and dim > QuasiNormal.max_dim:
        raise ValueError(f"argument 'quasi_random': the Sobol sequence has at most {QuasiNormal.max_dim} "
                         f"dimensions, the data {dim} features")
    return quasi_random


def _decay(schedule, frac, step):
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    if schedule == "linear":
        return 1.0 - frac
    return 1.0 / math.sqrt(1 + step / 100)  # inverse_sqrt


def _groups(labels, n):
    if labels is None:
        return [(None, None)]
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"argument 'labels' must be an integer tensor of shape ({n},)")
    labels = labels.cpu()
    return [(int(c), (labels == c).nonzero().squeeze(1)) for c in labels.unique().tolist()]


def _queries(x0, flat_data):
    if not isinstance(x0, torch.Tensor) or x0.dim() < 1 or x0.shape[0] == 0:
        raise ValueError("argument 'x0' must be a non-empty tensor (B, ...) of noise")
    flat = x0.reshape(x0.shape[0], -1)
    if flat.shape[1] != flat_data.shape[1]:
        raise ValueError(f"argument 'x0' has {flat.shape[1]} features per point, the data {flat_data.shape[1]}")
    validation.check_points("x0", flat)
    return flat.to(flat_data.dtype)


def _total(value, process_group):
    return value if process_group is None else distributed.all_sum(value.reshape(1), process_group)[0]


def _total_vector(values, process_group):
    """A float64 vector summed over the ranks (as it is without a group)."""
    return values.double() if process_group is None else distributed.all_sum(values, process_group)


def _save_atomically(state, path):
    """torch.save through a temporary file renamed over ``path``: a job killed while writing
    leaves the previous checkpoint, never a truncated one."""
    partial = f"{path}.partial"
    torch.save(state, partial)
    os.replace(partial, path)
