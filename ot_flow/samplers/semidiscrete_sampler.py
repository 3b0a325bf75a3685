"""SemidiscreteSampler: pairs fresh noise with the points of a data set through one dual
potential fitted over the whole data set, by a MIPS (semidiscrete flow matching, seeds 001/003).

The sampler is the fitted potential and what reads it: ``assign`` and ``pair``, the potential of
the data as given, and the measures of its cells on fresh noise. Its parts live beside it:
semidiscrete_frame.py (the standardised frame the searches run in), semidiscrete_noise.py (the
source and the fit's own noise stream), semidiscrete_fit.py (``fit``: optimisers, schedules,
averaging, chi-square checks, checkpoints) with semidiscrete_multiscale.py (its coarse-to-fine
start), semidiscrete_cells.py (marginal error and cell means) and semidiscrete_state.py (the
state, its fingerprint and checks).

Everything needed to continue a fit sits in ``state_dict()``: the potential, its average, the
optimiser's moments, the step and where the noise streams stand, with a fingerprint of the
data, weights and labels that ``load_state_dict`` checks. A fit interrupted (Ctrl-C, a lost
job) and resumed from its last state gives the same potential as an uninterrupted one.
"""

import math

import torch

from ot_flow import distributed
from ot_flow.ops import precision as op_precision
from ot_flow.samplers import semidiscrete_cells, semidiscrete_state
from ot_flow.samplers.semidiscrete_fit import SemidiscreteFit
from ot_flow.samplers.semidiscrete_frame import (FRAME_COST, StandardisedFrame, measure_data_frame,
                                                 measure_noise_frame, measure_spread, standardise_data)
from ot_flow.samplers.semidiscrete_noise import NoiseSource
from ot_flow.samplers.semidiscrete_placement import place_data
from ot_flow.solvers import costs, semidiscrete, validation

__all__ = ["SemidiscreteSampler"]


class SemidiscreteSampler:
    """Pairs noise with the points of a finite data set through a semidiscrete OT potential.

    Args:
        data: (N, ...) tensor of target points (images are flattened for the cost), float32,
            float64, or bfloat16 / float16 (kept in 16 bits, searched in float32). It may stay on
            the CPU while the work runs on ``device`` (see ``stream_data``).
        eps: entropic regularisation of the final potential; 0 (default) gives hard
            assignments by MIPS, eps > 0 draws from the soft assignment (Gumbel-max).
        cost: "sqeuclidean" or "dot".
        weights: (N,) target weights b (uniform by default); with ``labels``, the weights of
            each class are renormalised within it.
        labels: (N,) integer class labels for class-conditional use: one potential per class
            (SD-FM's conditional generation); ``assign`` then needs the query's labels.
        relative_eps: eps in units of std(C) between the noise and the data in the fit's
            standardised frame (semidiscrete_frame.py; for centred data of unit spread, std(C)
            between noise and data), brought back to the data's units, and the fit's ``lr`` in
            units of the mean gap between the best and second-best scores of a noise point.
        source: ``source(n, generator) -> Tensor`` of noise, shaped like the data or flat;
            default a standard normal. ``noise(n)`` draws from it.
        quasi_random: the fit's standard normal noise comes from a scrambled Sobol sequence
            (quasi_normal.py), whose counts per cell scatter less than independent draws':
            True, False, or "auto" (default): with the default source and at most 16 features
            per point. Pairing (``assign``) and the chi-square checks always use independent
            noise.
        device: where the search runs (default: the data's device).
        chunk_size: search the data in chunks of this many points (the unit of streaming).
        stream_data: True: the data stay where they are held (pinned, for a GPU ``device``, when
            on the host) and every pass over them (each fit step, pairing, chi-square check)
            copies them to ``device`` in chunks of ``chunk_size``, each copy overlapping the
            kernels of the chunk before: for data sets larger than the device's memory. False:
            they are copied to ``device`` once and stay there. None (default): True when
            ``chunk_size`` is given and the data are held on another device than ``device``.
        seed: seeds the noise generator of ``fit`` (rank 0's seed on every rank).
        process_group: the data set is sharded over the ranks of this torch.distributed group:
            every rank passes its own slice of the points (and of ``weights``, which sum to 1
            over all ranks), keeps its slice of g, and draws the same noise; the MIPS runs on
            the local shard and the winner over the ranks is agreed by a (value, index)
            exchange. Indices returned by ``assign`` are global (shards in rank order).
        precision: of the dot products of the fit and the pairing ("highest", "tf32" or "bf16",
            ot_flow.ops.precision); a setting of this sampler, not of its state (any state loads).

    ``assign`` and ``pair`` need a fitted potential: after ``fit`` (one step at least) or
    ``load_state_dict`` ``fitted`` is True; set ``sampler.fitted = True`` to pair with the
    potential as it stands (g = 0, or one set through ``potential``).

    Memory: the sampler keeps one standardised copy of the data, N x D in the data's dtype (16-bit
    data stay 16-bit), on ``device`` or, streamed, where the data are held (semidiscrete_placement.py);
    a streamed fit holds on the device two chunks in that dtype and one widened to float32, the
    noise batch, and the per-point vectors, which are always resident: the potential, its average,
    the weights and the optimiser's state (about 16 float64 numbers a point during a fit).
    """

    def __init__(self, data, eps=0.0, cost="sqeuclidean", *, weights=None, labels=None, relative_eps=True,
                 source=None, quasi_random="auto", device=None, chunk_size=None, stream_data=None, seed=0,
                 process_group=None, precision="highest"):
        if not isinstance(data, torch.Tensor) or data.dim() < 1 or data.shape[0] == 0:
            raise ValueError("argument 'data' must be a non-empty tensor (N, ...) of points")
        self.data = data
        self._flat = data.reshape(data.shape[0], -1)
        validation.check_points("data", self._flat)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"argument 'eps' must be a finite number >= 0, got {eps!r}")
        costs.check_cost(cost)
        validation.integer("chunk_size", chunk_size, 1, optional=True)
        self.eps, self.cost, self.relative_eps, self.chunk_size = float(eps), cost, bool(relative_eps), chunk_size
        self.precision = op_precision.checked("SemidiscreteSampler", precision)
        self.device = torch.device(device) if device is not None else data.device
        self._placement = place_data(self._flat, self.device, chunk_size, stream_data)
        self.stream_data = self._placement.streamed
        n, dim = self._flat.shape
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
        self._noise_source = NoiseSource(source, quasi_random, dim, self.dtype, self.device, self.seed)
        self.source, self.quasi_random = source, self._noise_source.quasi_random
        self.groups = _groups(labels, n)  # [(label, global indices)], one per class
        for label, index in self.groups if labels is not None else []:
            total = self.weights[index].sum()
            if total <= 0:
                raise ValueError(f"argument 'weights': class {label} has no mass")
            self.weights[index] /= total
        data_frame = measure_data_frame(self._flat, self.weights, self.total, self.group)
        noise_frame = measure_noise_frame(None if source is None else self._noise_source.draw, dim, self.seed)
        self._set_frame(StandardisedFrame(*data_frame, *noise_frame))
        # The fit's potential in the standardised frame (the public one is ``potential``).
        self.g = torch.zeros(n, dtype=torch.float64)
        self.g_ema = None
        self.step = 0
        self.fitted = False  # True after a fit step or a loaded state: assign refuses before
        self.spread = None  # std(C) between noise and data in the frame, set by the first fit
        self.gap = None  # mean best - second-best score at the start of the first fit (lr unit)
        self.history = []
        self.warm_started = False  # the coarse-to-fine start has run (or was not wanted)
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
        semidiscrete_state.check_potential("argument 'potential'", value, self.weights)
        self.g = self._from_public(value.detach().double().cpu())
        self.g_ema = None

    @property
    def conditional(self):
        """Whether the sampler was built with class labels (one potential per class)."""
        return self.groups[0][0] is not None

    @property
    def dtype(self):
        """The floating dtype of the noise and of the search: the data's (float32 for 16-bit data)."""
        return self._placement.search_dtype

    @property
    def fingerprint(self):
        """What a state must have been fitted on to load here (semidiscrete_state.py): sizes,
        the standardised frame, and moments of the data, weights and labels."""
        return self._fingerprint

    def _current(self):
        """The potential in the frame that pairing uses: the average when one was kept."""
        return self.g_ema if self.g_ema is not None else self.g

    def _from_public(self, g):
        """The frame's potential of a potential of the data as given (0 at weight-0 points)."""
        u = (g - self._potential_shift) / self._frame.unit
        return torch.where(self.weights > 0, u, 0.0)

    def _set_frame(self, frame):
        """Puts the data into ``frame``: the points the search reads (on the device, or beside
        the data to be streamed), the conversion of potentials and the fingerprint."""
        self._frame = frame
        standardised = standardise_data(self._flat, frame, self.cost, self._placement.where, self._placement.pinned)
        self._search, self._potential_shift = standardised.points, standardised.potential_shift
        self._search_offsets = standardised.offsets
        self._fingerprint = semidiscrete_state.measure_fingerprint(
            standardised.projections, self.weights, self.groups, frame, self._flat.shape[1], self.offset, self.total,
            self._flat.device, self.group)

    def _points(self, index):
        """The searched points of one class (``index`` its global indices), or all (None)."""
        return self._search if index is None else self._search[index.to(self._search.device)]

    def _offsets(self, index):
        """Their cost offsets |z_j|^2 / 2 (float64, semidiscrete.dot_bias), as ``_points``."""
        return self._search_offsets if index is None else self._search_offsets[index.to(self._search.device)]

    def _largest_class(self):
        """Points of the largest class (all points, over all ranks, when unconditional)."""
        return self.total if not self.conditional else max(len(index) for _, index in self.groups)

    # --- noise ---------------------------------------------------------------------------

    def noise(self, n, generator=None):
        """n source points x0 to pair, shaped like the data points, (n, *data.shape[1:]), in
        ``dtype`` on ``device``: ``source(n, generator)``, or standard normal by default.

        Drawn from ``generator`` (torch's default one when None): always independent draws,
        never from the fit's quasi-random sequence or generator, so drawing them changes
        nothing in the sampler (a fit resumes as before)."""
        return self._noise_source.draw(n, generator).reshape(n, *self.data.shape[1:])

    def _frame_noise(self, n, generator=None):
        """n flat noise points on the device in the standardised frame, from ``generator``
        (default the fit's own stream: the quasi-random sequence when there is one)."""
        if generator is None and self._noise_source.sobol is not None:
            return self._noise_source.sobol.draw(n, self.dtype, self.device)  # standard normal: frame (0, 1)
        noise = self._noise_source.draw(n, generator if generator is not None else self._noise_source.generator)
        return self._frame.standardise_noise(noise)

    # --- fitting -------------------------------------------------------------------------

    def fit(self, num_steps, batch_size=1024, lr=None, *, optimizer="auto", schedule="cosine", ema="auto",
            eps_start=None, anneal_fraction=0.5, target_chi2=None, warm_start="multiscale", progress=True,
            log_every=None, eval_samples=None, checkpoint=None, checkpoint_every=None):
        """Runs stochastic ascent (semidiscrete_fit.py) until ``self.step == num_steps`` (a
        resumed fit continues), or until the chi-square marginal error measured every
        ``log_every`` steps is at most ``target_chi2`` (hard, unconditional fits).

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
        SemidiscreteFit(self, num_steps, batch_size, lr, optimizer=optimizer, schedule=schedule, ema=ema,
                        eps_start=eps_start, anneal_fraction=anneal_fraction, target_chi2=target_chi2,
                        warm_start=warm_start, progress=progress, log_every=log_every, eval_samples=eval_samples,
                        checkpoint=checkpoint, checkpoint_every=checkpoint_every).run()
        return self

    def _measure_spread(self):
        """std(C) between noise and data in the frame: the unit of a relative eps."""
        return measure_spread(self._frame_noise(min(4096, max(256, self.total))), self._search, self.weights,
                              self.cost, self._noise_source.generator, self.offset, self.total, self.group)

    # --- pairing -------------------------------------------------------------------------

    def require_fitted(self, what):
        """Raises a ValueError, prefixed by ``what``, unless there is a potential to pair with
        (``fitted``): the one check behind assign, pair and the pair datasets, since a potential
        nobody fitted (g = 0) pairs each noise point with its nearest standardised point, not by OT."""
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
        flat = self._frame.standardise_noise(_queries(x0, self._flat).to(self.device, self.dtype))
        if not self.conditional and labels is not None:
            raise ValueError("argument 'labels': this sampler was built without class labels")
        if self.conditional and (not isinstance(labels, torch.Tensor) or labels.shape != (flat.shape[0],)):
            raise ValueError(f"argument 'labels' must be a tensor of {flat.shape[0]} class labels")
        self.require_fitted("assign")
        g, b = self._current(), self.weights
        eps = self.eps * self._eps_unit()
        if not self.conditional:
            return semidiscrete.assign(flat, self._search, g, b, eps, FRAME_COST, generator=generator,
                                       chunk_size=self.chunk_size, process_group=self.group, offset=self.offset,
                                       precision=self.precision, stream=self.stream_data,
                                       y_offsets=self._search_offsets)
        out = torch.full((flat.shape[0],), -1, dtype=torch.long, device=flat.device)
        labels = labels.to(flat.device)
        for label, index in self.groups:
            rows = (labels == label).nonzero().squeeze(1)
            if len(rows):
                local = semidiscrete.assign(flat[rows], self._points(index), g[index],
                                            b[index], eps, FRAME_COST,
                                            generator=generator, chunk_size=self.chunk_size, precision=self.precision,
                                            stream=self.stream_data, y_offsets=self._offsets(index))
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

    # --- the cells of the potential, on fresh noise ---------------------------------------

    def marginal_error(self, num_samples=100_000, batch_size=8192, seed=0):
        """Chi-square marginal error of the hard assignments of ``num_samples`` fresh noise
        points drawn with ``seed`` (unconditional only; the multinomial noise removed, see
        marginal_chi2)."""
        return semidiscrete_cells.marginal_error(self, num_samples, batch_size, seed)

    def cell_means(self, num_samples=100_000, batch_size=8192, seed=1):
        """(N, D) float64: the mean of the noise that the current potential assigns to each of
        this process's points (per class: ``num_samples`` draws each), estimated from fresh
        noise; 0 for a point that received none."""
        means, counts = semidiscrete_cells.frame_cell_means(self, num_samples, batch_size, seed)
        f = self._frame
        return torch.where(counts[:, None] > 0, means * f.noise_scale + f.noise_center, 0.0)

    # --- state ---------------------------------------------------------------------------

    def state_dict(self):
        """Everything to pair with the fit or continue it. ``g``, ``g_ema``, ``spread`` and
        ``gap`` are in the standardised frame (``potential`` converts); ``fingerprint`` ties
        the state to the data, weights, labels and noise source it was fitted on."""
        return semidiscrete_state.state_of(self)

    def load_state_dict(self, state):
        """Takes a state from ``state_dict()`` of a sampler built like this one: on the same
        data (checked by its fingerprint), weights, labels, cost, eps and noise source; a
        mismatch raises a ValueError naming it before anything is loaded. States saved before
        fingerprints (whose potential was of the data as given) still load, with a warning that
        they cannot be checked."""
        semidiscrete_state.load_state(self, state)


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
    return flat

