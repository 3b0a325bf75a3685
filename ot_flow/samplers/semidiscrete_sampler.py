"""SemidiscreteSampler: fit one dual potential over a whole data set, then pair fresh noise with
data by a MIPS (semidiscrete flow matching, seeds 001/003).

Fitting is stochastic ascent of the semi-dual (solvers/semidiscrete.py): each step draws a batch
of noise, assigns it to the data with the current potential g, and moves g along
b - (assignment frequencies) with Adam or SGD, under a learning-rate schedule, optionally with
eps decaying from soft to hard assignments; an exponential moving average of g is what the
sampler then uses. Progress shows the chi-square marginal error of the recent assignments.

Everything needed to continue a fit sits in ``state_dict()``: the potential, its average, the
optimiser's moments, the step and the noise generator's state. A fit interrupted (Ctrl-C, a
lost job) and resumed from its last state gives the same potential as an uninterrupted one.
"""

import copy
import math

import torch
from tqdm.auto import tqdm

from ot_flow import distributed
from ot_flow.solvers import costs, semidiscrete, validation

__all__ = ["SemidiscreteSampler"]

_SCHEDULES = ("constant", "cosine", "linear", "inverse_sqrt")
_OPTIMIZERS = ("adam", "sgd")
# The default step is the smaller of two scales: a fraction of std(C) (what moves mass across the
# data set when the points are few or far apart) and a few mean score gaps (semidiscrete.score_gap,
# the change of g_j that hands a typical noise point to its neighbour). The gap shrinks as the data
# get denser, where std(C) does not move: N = 1e4 points in d = 2 have a gap of 1e-3 std(C); a
# 2,000-step fit there ended at chi2 1.1 with a step of 0.1 std(C) and at 0.23 with one gap.
_DEFAULT_LR_SPREAD = {"adam": 0.1, "sgd": 1.0}  # times std(C)
_DEFAULT_LR_GAP = {"adam": 3.0, "sgd": 1.0}     # times the mean score gap
# Samples per target point that the moving average of g spans by default: the assignment
# counts behind one step are a few per point at most, and the average must pool enough of them
# for each point's share to be known to ~10% (chi2 ~ 1e-2).
_EMA_SAMPLES_PER_POINT = 100


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
        relative_eps: eps in units of std(C) between noise and data, and the fit's ``lr`` in
            units of the mean gap between the best and second-best scores of a noise point.
        source: ``source(n, generator) -> Tensor`` of noise, shaped like the data or flat;
            default a standard normal.
        device: where the search runs (default: the data's device).
        chunk_size: stream the data through the device in chunks of this many points.
        seed: seeds the noise generator of ``fit`` (rank 0's seed on every rank).
        process_group: the data set is sharded over the ranks of this torch.distributed group:
            every rank passes its own slice of the points (and of ``weights``, which sum to 1
            over all ranks), keeps its slice of g, and draws the same noise; the MIPS runs on
            the local shard and the winner over the ranks is agreed by a (value, index)
            exchange. Indices returned by ``assign`` are global (shards in rank order).
    """

    def __init__(self, data, eps=0.0, cost="sqeuclidean", *, weights=None, labels=None, relative_eps=True,
                 source=None, device=None, chunk_size=None, seed=0, process_group=None):
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
        # The points the search reads: on the device once, or streamed from where they are.
        self._search = self._flat if chunk_size is not None else self._flat.to(self.device)
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
            self.weights = _shard_weights(weights, n, self.total, self._flat.device, process_group).cpu()
            seed = distributed.broadcast_int(int(seed), self._flat.device, process_group)
        self.seed = int(seed)
        self.groups = _groups(labels, n)  # [(label, global indices)], one per class
        for label, index in self.groups if labels is not None else []:
            total = self.weights[index].sum()
            if total <= 0:
                raise ValueError(f"argument 'weights': class {label} has no mass")
            self.weights[index] /= total
        self.g = torch.zeros(n, dtype=torch.float64)
        self.g_ema = None
        self.step = 0
        self.spread = None  # std(C) between noise and data, set by the first fit
        self.gap = None  # mean best - second-best score at the start of the first fit (lr unit)
        self.history = []
        self._generator = torch.Generator().manual_seed(int(seed))
        self._optimizer_state = None
        self._optimizer_name = None

    @property
    def potential(self):
        """The fitted potential g (N,), float64: the moving average when one was kept."""
        return (self.g_ema if self.g_ema is not None else self.g).clone()

    @property
    def conditional(self):
        return self.groups[0][0] is not None

    # --- fitting -------------------------------------------------------------------------

    def fit(self, num_steps, batch_size=1024, lr=None, *, optimizer="adam", schedule="cosine", ema="auto",
            eps_start=None, anneal_fraction=0.5, target_chi2=None, progress=True, log_every=100, eval_samples=None,
            checkpoint=None, checkpoint_every=None):
        """Runs stochastic ascent until ``self.step == num_steps`` (a resumed fit continues), or
        until the chi-square marginal error measured every ``log_every`` steps is at most
        ``target_chi2`` (hard, unconditional fits).

        Args:
            num_steps: total steps of the fit (the schedule spans them).
            batch_size: noise samples per step (per class when conditional).
            lr: step size, in units of the mean score gap when ``relative_eps`` (the change of
                g_j that hands a typical noise point to its neighbour), decayed by ``schedule``.
                Default: the smaller of 0.1 std(C) and 3 gaps for Adam; for SGD, which steps
                along the relative marginal error (b_j - p_j) / b_j, of 1 std(C) and 1 gap.
            optimizer: "adam" or "sgd".
            schedule: "cosine", "linear", "inverse_sqrt" or "constant" decay of lr.
            ema: decay of the moving average of g (0 keeps none); "auto" spans about 100
                noise samples per data point, 1 - batch_size / (100 N), within [0.99, 0.9999].
            eps_start: when given, assignments start soft at this eps (relative like ``eps``)
                and decay geometrically to the final eps over ``anneal_fraction`` of the steps;
                with a final eps of 0, they turn hard after that.
            target_chi2: stop early at this marginal error (None: run all the steps).
            progress: show a tqdm bar with the chi-square marginal error.
            log_every: steps per entry of ``history`` and per chi-square measurement, which
                assigns ``eval_samples`` fresh noise points (default 16 N, within
                [65536, 10^6]) with the current potential.
            checkpoint, checkpoint_every: save ``state_dict()`` to this path every so many steps.
        """
        self._check_fit_args(num_steps, batch_size, lr, optimizer, schedule, ema, eps_start, anneal_fraction,
                             target_chi2, log_every, checkpoint, checkpoint_every)
        if self.spread is None:
            self.spread = self._measure_spread()
        if self.gap is None:
            self.gap = self._measure_gap()
        unit = self.spread if self.relative_eps else 1.0
        if lr is None:
            base_lr = min(_DEFAULT_LR_SPREAD[optimizer] * self.spread, _DEFAULT_LR_GAP[optimizer] * self.gap)
        else:
            base_lr = lr * (self.gap if self.relative_eps else 1.0)
        if ema == "auto":
            ema = min(0.9999, max(0.99, 1.0 - batch_size / (_EMA_SAMPLES_PER_POINT * self.total)))
        g = self.g.to(self.device).requires_grad_(False)
        opt = self._make_optimizer(optimizer, g, base_lr)
        ema_g = None if not ema else (self.g_ema.to(self.device) if self.g_ema is not None else g.detach().clone())
        b = self.weights.to(self.device)
        if eval_samples is None:
            eval_samples = min(1_000_000, max(65_536, 16 * self.total))
        bar = tqdm(total=num_steps, initial=self.step, disable=not progress, desc="semidiscrete fit", leave=False)
        try:
            while self.step < num_steps:
                generator_state = self._generator.get_state()
                try:
                    frac = self.step / num_steps
                    eps = self._eps_at(frac, eps_start, anneal_fraction) * unit
                    for group in opt.param_groups:
                        group["lr"] = base_lr * _decay(schedule, frac, self.step)
                    grad, value, counts = self._gradient(g, b, eps, batch_size)
                    if optimizer == "sgd":
                        grad = grad / b.clamp_min(1e-300)
                    g.grad = -grad  # the optimisers minimise; the semi-dual is maximised
                    opt.step()
                    if ema_g is not None:
                        ema_g.mul_(ema).add_(g.detach(), alpha=1 - ema)
                except BaseException:
                    self._generator.set_state(generator_state)  # the step did not happen
                    raise
                self.step += 1
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
                    self.history.append({"step": self.step, "chi2": chi2, "value": value,
                                         "lr": opt.param_groups[0]["lr"], "eps": eps})
                    bar.set_postfix(chi2=f"{chi2:.2e}", eps=f"{eps:.2g}")
                if checkpoint and self.step % checkpoint_every == 0:
                    torch.save(self.state_dict(), checkpoint)
                if target_chi2 is not None and self.history and self.history[-1]["step"] == self.step \
                        and self.history[-1]["chi2"] <= target_chi2:
                    break
        finally:
            bar.close()
        return self

    def _check_fit_args(self, num_steps, batch_size, lr, optimizer, schedule, ema, eps_start, anneal_fraction,
                        target_chi2, log_every, checkpoint, checkpoint_every):
        for name, value in (("num_steps", num_steps), ("batch_size", batch_size), ("log_every", log_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"argument '{name}' must be an int >= 1, got {value!r}")
        if lr is not None:
            validation.positive("lr", lr)
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"argument 'optimizer' must be one of {_OPTIMIZERS}, got {optimizer!r}")
        if self._optimizer_name is not None and optimizer != self._optimizer_name:
            raise ValueError(f"argument 'optimizer': this fit was started with {self._optimizer_name!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"argument 'schedule' must be one of {_SCHEDULES}, got {schedule!r}")
        if ema != "auto" and (not isinstance(ema, (int, float)) or not 0 <= ema < 1):
            raise ValueError(f"argument 'ema' must be 'auto' or lie in [0, 1), got {ema!r}")
        if eps_start is not None:
            validation.positive("eps_start", eps_start)
        if target_chi2 is not None:
            validation.positive("target_chi2", target_chi2)
        if not 0 < anneal_fraction <= 1:
            raise ValueError(f"argument 'anneal_fraction' must lie in (0, 1], got {anneal_fraction!r}")
        if checkpoint and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ValueError("argument 'checkpoint_every' must be an int >= 1 when 'checkpoint' is given")

    def _make_optimizer(self, name, g, lr):
        opt = torch.optim.Adam([g], lr=lr, betas=(0.9, 0.999)) if name == "adam" else torch.optim.SGD([g], lr=lr)
        if self._optimizer_state is not None:
            opt.load_state_dict(self._optimizer_state)
        self._optimizer_name = name
        return opt

    def _eps_at(self, frac, eps_start, anneal_fraction):
        if eps_start is None:
            return self.eps
        if frac >= anneal_fraction:
            return self.eps
        end = self.eps if self.eps > 0 else eps_start * 1e-3
        return eps_start * (end / eps_start) ** (frac / anneal_fraction)

    def _noise(self, n, generator=None):
        """n flat noise points on the device, from ``generator`` (default the fit's)."""
        generator = generator if generator is not None else self._generator
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

    def _points(self, index):
        """The searched points of one class (``index`` its global indices), or all (None)."""
        return self._search if index is None else self._search[index.to(self._search.device)]

    def _gradient(self, g, b, eps, batch_size):
        grad = torch.zeros_like(b)
        counts = torch.zeros_like(b)
        value = 0.0
        for _, index in self.groups:
            index_d = index.to(self.device) if index is not None else None
            y = self._points(index)
            g_c = g if index_d is None else g[index_d]
            b_c = b if index_d is None else b[index_d]
            grad_c, value_c, counts_c = semidiscrete.semidual_gradient(
                self._noise(batch_size), y, g_c, b_c, eps, self.cost, chunk_size=self.chunk_size,
                process_group=self.group, offset=self.offset)
            if index_d is None:
                grad, counts = grad_c, counts_c
            else:
                grad[index_d], counts[index_d] = grad_c, counts_c
            value += value_c / len(self.groups)
        return grad, value, counts

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
        spread = costs.cost_std(x, self._flat[rows.to(self._flat.device)].to(x.device), a, b.to(x.device), self.cost,
                                reduce_y=reduce_y)
        return spread if spread > 0 else 1.0

    def _measure_gap(self):
        x = self._noise(min(4096, max(256, self.total)))
        gaps = [semidiscrete.score_gap(x, self._points(index),
                                       self.g if index is None else self.g[index], self.cost,
                                       chunk_size=self.chunk_size, process_group=self.group)
                for _, index in self.groups]
        gap = sum(gaps) / len(gaps)
        # One data point per class has no runner-up: fall back on the cost spread.
        return gap if gap > 0 else self.spread

    def marginal_error(self, num_samples=100_000, batch_size=8192, seed=0):
        """Chi-square marginal error of the hard assignments of ``num_samples`` fresh noise
        points drawn with ``seed`` (unconditional only; the multinomial noise removed, see
        marginal_chi2)."""
        if self.conditional:
            raise ValueError("marginal_error: a conditional sampler has one marginal per class")
        gen = torch.Generator().manual_seed(distributed.derived_seed(self.seed, seed, 12345))
        counts = torch.zeros(self._flat.shape[0], dtype=torch.float64)
        done = 0
        while done < num_samples:
            n = min(batch_size, num_samples - done)
            x = self._noise(n, gen)
            idx = semidiscrete.assign(x, self._search, self.potential, self.weights, 0.0, self.cost,
                                      chunk_size=self.chunk_size, process_group=self.group, offset=self.offset)
            idx = idx.cpu() - self.offset
            idx = idx[(idx >= 0) & (idx < counts.shape[0])]
            counts += torch.bincount(idx, minlength=counts.shape[0]).double()
            done += n
        return semidiscrete.marginal_chi2(counts, self.weights, num_samples, self.group)

    # --- pairing -------------------------------------------------------------------------

    def assign(self, x0, labels=None, generator=None):
        """LongTensor (B,): for each noise point x0[i] the index of its data point."""
        flat = _queries(x0, self._flat).to(self.device)
        g, b = self.potential, self.weights
        eps = self.eps * (self.spread if self.relative_eps and self.spread else 1.0)
        if not self.conditional:
            if labels is not None:
                raise ValueError("argument 'labels': this sampler was built without class labels")
            return semidiscrete.assign(flat, self._search, g, b, eps, self.cost, generator=generator,
                                       chunk_size=self.chunk_size, process_group=self.group, offset=self.offset)
        if not isinstance(labels, torch.Tensor) or labels.shape != (flat.shape[0],):
            raise ValueError(f"argument 'labels' must be a tensor of {flat.shape[0]} class labels")
        out = torch.full((flat.shape[0],), -1, dtype=torch.long, device=flat.device)
        labels = labels.to(flat.device)
        for label, index in self.groups:
            rows = (labels == label).nonzero().squeeze(1)
            if len(rows):
                local = semidiscrete.assign(flat[rows], self._points(index), g[index],
                                            b[index], eps, self.cost,
                                            generator=generator, chunk_size=self.chunk_size)
                out[rows] = index.to(flat.device)[local]
        if (out < 0).any():
            unknown = labels[out < 0][0].item()
            raise ValueError(f"argument 'labels': label {unknown} is not a class of the data")
        return out

    def pair(self, x0, labels=None, generator=None):
        """``(x0, data[assign(x0)])``, the data points on x0's device (fetched from the rank
        that holds them when the data set is sharded)."""
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
        return {"g": self.g.clone(), "g_ema": None if self.g_ema is None else self.g_ema.clone(),
                "step": self.step, "spread": self.spread, "gap": self.gap, "generator": self._generator.get_state(),
                "optimizer": copy.deepcopy(self._optimizer_state), "optimizer_name": self._optimizer_name,
                "history": list(self.history), "eps": self.eps, "cost": self.cost, "num_points": self.g.shape[0]}

    def load_state_dict(self, state):
        if state.get("num_points") != self.g.shape[0] or state.get("cost") != self.cost:
            raise ValueError(f"load_state_dict: the state is for {state.get('num_points')} points and cost "
                             f"{state.get('cost')!r}, this sampler has {self.g.shape[0]} and {self.cost!r}")
        self.g = state["g"].clone()
        self.g_ema = None if state["g_ema"] is None else state["g_ema"].clone()
        self.step, self.spread, self.gap = state["step"], state["spread"], state["gap"]
        self._generator.set_state(state["generator"])
        self._optimizer_state = copy.deepcopy(state["optimizer"])
        self._optimizer_name = state["optimizer_name"]
        self.history = list(state["history"])


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


def _shard_weights(weights, n_local, n_total, device, process_group):
    """This rank's slice of target weights summing to 1 over all ranks (uniform by default)."""
    def local():
        if weights is None:
            return torch.full((n_local,), 1.0 / n_total, dtype=torch.float64, device=device)
        if not isinstance(weights, torch.Tensor) or weights.shape != (n_local,) or not weights.is_floating_point():
            raise ValueError(f"argument 'weights' must be a float tensor with this rank's {n_local} entries")
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("argument 'weights' must be finite and non-negative")
        return weights.detach().double().to(device)

    w = distributed.checked_together(local, process_group)
    total = float(_total(w.sum(), process_group))
    if abs(total - 1.0) > 1e-5:
        raise ValueError(f"argument 'weights' must sum to 1 over all ranks, sums to {total:.6g}")
    return w / total
