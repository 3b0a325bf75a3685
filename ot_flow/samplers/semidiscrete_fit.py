"""SemidiscreteFit: the fit behind ``SemidiscreteSampler.fit``, one dual potential over a whole data set.

Fitting is stochastic ascent of the semi-dual (solvers/semidiscrete.py): each step draws a batch of
noise, assigns it to the data with the current potential g, and moves g along b - (assignment
frequencies) with diagonal Newton steps (Adam on the coarsest level), Adam or SGD, under a
learning-rate schedule, optionally with eps decaying from soft to hard assignments; an average of
the iterates is what the sampler then uses. Progress shows the chi-square marginal error of the
averaged potential on fresh noise. Large data sets start coarse to fine
(semidiscrete_multiscale.py). Everything works in the sampler's standardised frame
(semidiscrete_frame.py).

Every step leaves the whole fit in the sampler (potential, average, optimiser moments, step,
where the noise streams stand), and a step interrupted half way (Ctrl-C) is undone, so
``state_dict()`` after any step, saved as a checkpoint and loaded into a new sampler, continues to
the potential an uninterrupted fit reaches, bit for bit.

A step reads nothing back to the host: its semi-dual value, the potential and the sampler's copies
of it stay on the device (copied to the host when the fit ends, however it ends), and only a
``log_every`` step reads (the value and the chi-square check, one synchronisation each), so on a
GPU the host queues the next steps while the kernels of this one run. The ops' own argument
checks (mips, gumbel_argmax) still read their inputs' largest magnitudes on every call.

The fit works on the sampler's private state: it is the sampler's own, kept in a room of its own.
"""

import copy
import math
import os

import torch
from tqdm.auto import tqdm

from ot_flow import distributed
from ot_flow.samplers.semidiscrete_frame import FRAME_COST
from ot_flow.samplers.semidiscrete_multiscale import multiscale_start
from ot_flow.solvers import semidiscrete, validation
from ot_flow.solvers.semidual_newton import DiagonalNewton

__all__ = ["SemidiscreteFit"]

_SCHEDULES = ("constant", "cosine", "linear", "inverse_sqrt")
_OPTIMIZERS = ("auto", "newton", "adam", "sgd")
_WARM_STARTS = ("multiscale", None)
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
# mass across the data set when the points are few or far apart) and a few mean score gaps
# (semidiscrete.score_gap, the change of g_j that hands a typical noise point to its neighbour).
# The gap shrinks as the data get denser, where std(C) does not move: N = 1e4 points in d = 2
# have a gap of 1e-3 std(C); a 2,000-step fit there ended at chi2 1.1 with a step of
# 0.1 std(C) and at 0.23 with one gap.
_DEFAULT_LR_SPREAD = {"adam": 0.1, "sgd": 1.0}  # times std(C)
_DEFAULT_LR_GAP = {"adam": 3.0, "sgd": 1.0}     # times the mean score gap
# The default average of the iterates (ema="auto") weighs step t by (1 + p) / (t + p)
# (polynomial-decay averaging, Shamir & Zhang 2013): a window growing with the fit, which a fixed
# EMA is not. With batch B the mean of T steps' counts gives each point's share to a chi-square
# error of about N / (B T), so a window fixed at 100 samples per point floors at ~1e-2.
_AVERAGING_POWER = 3
# The chi-square checks assign up to _MAX_EVAL_SAMPLES fresh noise points (an estimate of the
# error to ~sqrt(2 N) / samples: 1.1e-3 at N = 10^5) and by default come every so many steps
# that they cost 1 / _CHECK_OVERHEAD of the fit (a check every 100 steps of 4096 at 10^6
# samples took 2.4x the fit's own time at N = 10^5).
_MAX_EVAL_SAMPLES = 400_000
_CHECK_OVERHEAD = 10


class SemidiscreteFit:
    """One call of ``SemidiscreteSampler.fit`` (whose docstring gives the arguments): they are
    checked and resolved on construction, before any work, and ``run`` steps the sampler's
    potential until ``sampler.step == num_steps`` or the target chi-square is reached."""

    def __init__(self, sampler, num_steps, batch_size, lr, *, optimizer, schedule, ema, eps_start, anneal_fraction,
                 target_chi2, warm_start, progress, log_every, eval_samples, checkpoint, checkpoint_every):
        _check_arguments(sampler, num_steps, batch_size, lr, optimizer, schedule, ema, eps_start, anneal_fraction,
                         target_chi2, warm_start, log_every, eval_samples, checkpoint, checkpoint_every)
        self.sampler, self.num_steps, self.batch_size = sampler, num_steps, batch_size
        self.schedule, self.ema, self.eps_start, self.anneal_fraction = schedule, ema, eps_start, anneal_fraction
        self.target_chi2, self.warm_start, self.progress = target_chi2, warm_start, progress
        # A coarse level of the multiscale start fits with the arguments as given.
        self.coarse_settings = dict(lr=lr, optimizer=optimizer, schedule=schedule, ema=ema, eps_start=eps_start,
                                    anneal_fraction=anneal_fraction, target_chi2=target_chi2, log_every=log_every)
        if optimizer == "auto":
            optimizer = "adam" if sampler._largest_class() <= batch_size else "newton"
            lr = lr if optimizer == "newton" else None  # lr is a Newton fraction under "auto"
        if sampler._optimizer_name is not None and optimizer != sampler._optimizer_name:
            raise ValueError(f"argument 'optimizer': this fit was started with {sampler._optimizer_name!r}")
        self.optimizer, self.lr = optimizer, lr
        if checkpoint and sampler.group is not None:
            checkpoint = os.fspath(checkpoint).replace("{rank}", str(distributed.group_info(sampler.group)[0]))
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        if eval_samples is None:
            eval_samples = min(_MAX_EVAL_SAMPLES, max(65_536, 16 * sampler.total))
        self.measures_chi2 = not sampler.conditional and sampler.eps == 0
        if log_every is None:  # without chi2 checks (conditional or soft fits): every 100 steps
            checks = eval_samples / batch_size if self.measures_chi2 else 0  # batches' worth
            log_every = 100 * max(1, math.ceil(_CHECK_OVERHEAD * checks / 100))
        self.eval_samples, self.log_every = eval_samples, log_every

    def run(self):
        """The multiscale start (of a fresh fit), the units of eps and lr (measured once per
        sampler), then the steps. g, its average and the optimiser's moments live on the device
        while the fit runs; the sampler gets copies of them after every step (on the device, brought
        to the host when the loop ends)."""
        s = self.sampler
        if self.warm_start and s.step == 0 and not s.warm_started:
            multiscale_start(s, self.num_steps, self.batch_size, self.progress, self.coarse_settings)
        if s.spread is None:
            s.spread = s._measure_spread()
        self.eps_unit = s._eps_unit()
        self.base_lr = self._base_lr()
        self.g = s.g.to(s.device).requires_grad_(False)
        self.b = s.weights.to(s.device)
        # Each class's indices where g and where the points are, once: a copy per step would wait
        # for the GPU.
        self.class_index = [None if index is None else (index.to(s.device), index.to(s._search.device))
                            for _, index in s.groups]
        self.opt = self._make_optimizer()
        self.average = None if not self.ema else \
            (s.g_ema.to(s.device) if s.g_ema is not None else self.g.detach().clone())
        bar = tqdm(total=self.num_steps, initial=s.step, disable=not self.progress,
                   desc=f"semidiscrete fit, N={s.total}", leave=False)
        try:
            while s.step < self.num_steps:
                value, eps = self._step()
                self._keep_step()
                bar.update(1)
                if s.step % self.log_every == 0 or s.step == self.num_steps:
                    chi2 = self._log(value, eps)
                    bar.set_postfix(chi2=f"{chi2:.2e}", eps=f"{eps * s._frame.unit:.2g}")
                if self.checkpoint and s.step % self.checkpoint_every == 0:
                    _save_atomically(s.state_dict(), self.checkpoint)
                if self.target_chi2 is not None and s.history and s.history[-1]["step"] == s.step \
                        and s.history[-1]["chi2"] <= self.target_chi2:
                    break
        finally:
            bar.close()
            s.g, s.g_ema = s.g.cpu(), None if s.g_ema is None else s.g_ema.cpu()

    def _base_lr(self):
        """The step size before the schedule: a Newton fraction, or for Adam and SGD a length in
        the frame's potential (their defaults, or ``lr`` in gaps, or absolute in the data's units)."""
        s = self.sampler
        if self.optimizer == "newton":
            return _DEFAULT_NEWTON_STEP if self.lr is None else self.lr
        if s.gap is None:
            s.gap = self._measure_gap()
        if self.lr is None:
            return min(_DEFAULT_LR_SPREAD[self.optimizer] * s.spread, _DEFAULT_LR_GAP[self.optimizer] * s.gap)
        return self.lr * (s.gap if s.relative_eps else 1.0 / s._frame.unit)

    def _make_optimizer(self):
        s = self.sampler
        if self.optimizer == "newton":
            opt = DiagonalNewton(self.g, self.base_lr, self.b, self.batch_size, s.group)
        elif self.optimizer == "adam":
            opt = torch.optim.Adam([self.g], lr=self.base_lr, betas=(0.9, 0.999))
        else:
            opt = torch.optim.SGD([self.g], lr=self.base_lr)
        if s._optimizer_state is not None:
            opt.load_state_dict(s._optimizer_state)
        s._optimizer_name = self.optimizer
        return opt

    def _step(self):
        """One ascent step on a fresh batch: (the semi-dual estimate, the step's eps in the frame).
        Interrupted, it is undone: the noise streams go back to where they stood."""
        s = self.sampler
        noise_state = s._noise_source.stream_state()
        try:
            frac = s.step / self.num_steps
            eps = self._eps_at(frac) * self.eps_unit
            for group in self.opt.param_groups:
                group["lr"] = self.base_lr * _decay(self.schedule, frac, s.step)
            estimate = self._gradient(self.g, self.b, eps, self.batch_size, gaps=self.optimizer == "newton")
            if self.optimizer == "newton":
                self.opt.step(estimate, eps)
            else:
                grad = estimate.gradient / self.b.clamp_min(1e-300) if self.optimizer == "sgd" else estimate.gradient
                self.g.grad = -grad  # the optimisers minimise; the semi-dual is maximised
                self.opt.step()
            if self.average is not None:
                weight = (1 + _AVERAGING_POWER) / (s.step + 1 + _AVERAGING_POWER) if self.ema == "auto" \
                    else 1 - self.ema
                self.average.mul_(1 - weight).add_(self.g.detach(), alpha=weight)
        except BaseException:
            s._noise_source.set_stream_state(noise_state)  # the step did not happen
            raise
        return estimate.value, eps

    def _keep_step(self):
        """The step done, into the sampler: copies (on the device: to the host would wait for the
        step), so that an interrupted next step leaves this step's state untouched."""
        s = self.sampler
        s.step += 1
        s.fitted = True
        s.g = self.g.detach().clone()
        s.g_ema = self.average.detach().clone() if self.average is not None else None
        s._optimizer_state = copy.deepcopy(self.opt.state_dict())

    def _log(self, value, eps):
        """Appends to the sampler's history; returns the chi-square marginal error, measured on
        fresh noise against the current potential (the assignments of the training batches are
        no measure, since the potential reacts to them as it goes)."""
        s = self.sampler
        value = float(value)
        # The steps' ops skip their checks of the data (validate=False): a NaN or infinite
        # potential shows here instead, in the semi-dual value (g . b; the same on every rank).
        if not math.isfinite(value):
            raise RuntimeError(f"ot_flow.SemidiscreteSampler.fit: the potential became non-finite by step {s.step} "
                               f"(semi-dual value {value}); lower the learning rate")
        chi2 = s.marginal_error(self.eval_samples, seed=s.step) if eps == 0 and self.measures_chi2 else float("nan")
        # value, lr: in the standardised frame; eps: in the data's units.
        s.history.append({"step": s.step, "chi2": chi2, "value": value, "lr": self.opt.param_groups[0]["lr"],
                          "eps": eps * s._frame.unit})
        return chi2

    def _eps_at(self, frac):
        """eps (in units of the sampler's eps) at fraction ``frac`` of the fit: with ``eps_start``,
        geometric from it to the final eps (or, for a hard fit, to 1e-3 of it, then 0)."""
        eps = self.sampler.eps
        if self.eps_start is None or frac >= self.anneal_fraction:
            return eps
        end = eps if eps > 0 else self.eps_start * 1e-3
        return self.eps_start * (end / self.eps_start) ** (frac / self.anneal_fraction)

    def _gradient(self, g, b, eps, batch_size, gaps=False):
        """The semi-dual estimate on a fresh noise batch (one per class, joined)."""
        s = self.sampler
        if not s.conditional:
            return semidiscrete.semidual_gradient(s._frame_noise(batch_size), s._search, g, b, eps, FRAME_COST,
                                                  chunk_size=s.chunk_size, process_group=s.group, offset=s.offset,
                                                  gaps=gaps, precision=s.precision, stream=s.stream_data,
                                                  validate=False, y_offsets=s._search_offsets)
        fields = ("gradient", "counts") + (("gap_sums", "gap_counts") if gaps else ())
        joined = {name: torch.zeros_like(b) for name in fields}
        value = 0.0
        for index_d, index_y in self.class_index:
            estimate = semidiscrete.semidual_gradient(s._frame_noise(batch_size), s._points(index_y), g[index_d],
                                                      b[index_d], eps, FRAME_COST, chunk_size=s.chunk_size, gaps=gaps,
                                                      precision=s.precision, stream=s.stream_data, validate=False,
                                                      y_offsets=s._offsets(index_y))
            for name in fields:
                joined[name][index_d] = getattr(estimate, name)
            value += estimate.value / len(s.groups)
        return semidiscrete.SemidualEstimate(value=value, **{"gap_sums": None, "gap_counts": None, **joined})

    def _measure_gap(self):
        """The mean best - second-best score of noise against the current potential (per class,
        averaged): the unit of Adam's and SGD's steps."""
        s = self.sampler
        x = s._frame_noise(min(4096, max(256, s.total)))
        gaps = [semidiscrete.score_gap(x, s._points(index), s.g if index is None else s.g[index], FRAME_COST,
                                       b=s.weights if index is None else s.weights[index],
                                       chunk_size=s.chunk_size, process_group=s.group, precision=s.precision,
                                       stream=s.stream_data, y_offsets=s._offsets(index))
                for _, index in s.groups]
        gap = sum(gaps) / len(gaps)
        # One data point per class has no runner-up: fall back on the cost spread.
        return gap if gap > 0 else s.spread


def _check_arguments(sampler, num_steps, batch_size, lr, optimizer, schedule, ema, eps_start, anneal_fraction,
                     target_chi2, warm_start, log_every, eval_samples, checkpoint, checkpoint_every):
    """Every argument of fit, before any work: a value that fails here would otherwise fail (or
    be ignored) steps or minutes later."""
    counts = (("num_steps", num_steps), ("batch_size", batch_size), ("log_every", log_every),
              ("eval_samples", eval_samples), ("checkpoint_every", checkpoint_every if checkpoint else 1))
    for name, value in counts:
        validation.integer(name, value, 1, optional=True)
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
        if sampler.conditional or sampler.eps > 0:  # no chi2 is measured: it would never stop the fit
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
        if sampler.group is not None and "{rank}" not in path:  # each rank holds its own shard's state
            raise ValueError(f"argument 'checkpoint': a sharded sampler saves one file per rank; put "
                             f"'{{rank}}' in the path, got {path!r}")
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            raise ValueError(f"argument 'checkpoint': folder {folder!r} does not exist")


def _decay(schedule, frac, step):
    """The learning rate's factor at ``step``, fraction ``frac`` of the fit."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    if schedule == "linear":
        return 1.0 - frac
    return 1.0 / math.sqrt(1 + step / 100)  # inverse_sqrt


def _save_atomically(state, path):
    """torch.save through a temporary file renamed over ``path``: a job killed while writing
    leaves the previous checkpoint, never a truncated one."""
    partial = f"{path}.partial"
    torch.save(state, partial)
    os.replace(partial, path)
