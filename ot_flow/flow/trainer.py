"""Flow-matching training with the coupling as a component.

For each minibatch (x0, x1) of a pair stream, t ~ U[0, 1] and x_t = (1 - t) x0 + t x1; the
network regresses the velocity of the straight path, x1 - x0 (seed paper 002, Algorithm 2). The
coupling only decides which x1 goes with which x0: independent (I-FM), a Sinkhorn coupling
(OT-FM) or a semidiscrete potential (SD-FM) all plug in as a
:class:`ot_flow.flow.pair_streams.PairStream`. Two other regressions share the loop: velocity
matching on (x, t, v) triples (NSGF's pool of Sinkhorn-flow velocities) and the prediction of t
from x_t (NSGF++'s phase-transition time).

AdamW, an exponential moving average of the weights (what is evaluated; torch.optim.swa_utils),
gradient clipping, a warm-up then constant or cosine learning rate (torch.optim.lr_scheduler), a
progress bar, metrics to CSV (and to TensorBoard when it is installed), and checkpoints: a run
resumed from its checkpoint ends with the same weights as an uninterrupted one, because the
batches and the times t are functions of (seed, step) alone. A checkpoint is never overwritten silently: ``train(checkpoint=path)`` resumes
the run that ``path`` holds, refuses one of another recipe, and replaces it only when told to.
"""

import csv
import errno
import functools
import math
import os
import pickle
import sys
import time

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ot_flow.distributed import derived_seed
from ot_flow.flow.checks import check_choice, check_int, check_module, check_number
from ot_flow.flow.pair_streams import PairStream

__all__ = ["FlowMatchingTrainer", "OBJECTIVES", "CheckpointError", "load_checkpoint", "save_checkpoint"]

_SCHEDULES = ("constant", "cosine")


def _straight_path(x0, x1, gen, device):
    t = torch.rand(x0.shape[0], generator=gen).to(device, x0.dtype)
    t_b = t.reshape(-1, *([1] * (x0.dim() - 1)))
    return (1 - t_b) * x0 + t_b * x1, t


def _flow_matching_loss(model, batch, gen, device):
    x0, x1 = batch[0], batch[1]
    xt, t = _straight_path(x0, x1, gen, device)
    return (model(xt, t) - (x1 - x0)).square().mean()


def _velocity_matching_loss(model, batch, gen, device):
    x, t, v = batch[0], batch[1], batch[2]
    return (model(x, t) - v).square().mean()


def _time_prediction_loss(model, batch, gen, device):
    xt, t = _straight_path(batch[0], batch[1], gen, device)
    return (model(xt) - t).square().mean()


OBJECTIVES = {"flow_matching": _flow_matching_loss,        # batches (x0, x1): model(x_t, t) ~ x1 - x0
              "velocity_matching": _velocity_matching_loss,  # batches (x, t, v): model(x, t) ~ v
              "time_prediction": _time_prediction_loss}      # batches (x0, x1): model(x_t) ~ t


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated or corrupt; the message names the file."""


# What torch.load raises on a file cut short or damaged: an empty file, a zip archive without its
# central directory, a pickle that stops early, or a seek past the end (EINVAL).
_UNREADABLE = (EOFError, pickle.UnpicklingError, RuntimeError, OSError)
# ...but not these, whose own messages say what is wrong with the path.
_PATH_ERRNOS = (errno.ENOENT, errno.EACCES, errno.EISDIR)


def load_checkpoint(path, map_location=None, *, name="checkpoint"):
    """``torch.load`` of a checkpoint this package wrote, with errors that name the file:
    :class:`CheckpointError` when it is missing or cannot be read back (truncated, corrupt)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{name}: no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except _UNREADABLE as error:
        if isinstance(error, OSError) and error.errno in _PATH_ERRNOS:
            raise
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{name}: {path} is truncated or corrupt ({os.path.getsize(path)} bytes; torch.load: "
                              f"{reason}); delete it, or start afresh (overwrite=True, --overwrite)") from error


def save_checkpoint(state, path):
    """``torch.save`` through a temporary file, so that a crash mid-write leaves the previous file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


class FlowMatchingTrainer:
    """Trains ``model(x, t)`` on the pairs of ``pairs``.

    Args:
        model: a velocity network, ``model(x, t) -> Tensor`` shaped like x, t of shape (B,).
        pairs: a :class:`PairStream` (exact resume), or any iterable of (x0, x1) minibatches
            (resume then continues that iterable wherever it is).
        lr, weight_decay, betas: AdamW.
        ema: decay of the moving average of the weights (0: evaluate the raw weights).
        grad_clip: clip the gradient's global norm to this (None: no clipping).
        warmup_steps: linear warm-up of the learning rate.
        schedule: "constant" or "cosine" (to 0 at ``num_steps`` of :meth:`train`).
        device: where the model trains (default: where its parameters are).
        seed: seeds the times t of each step.
        log_dir: write ``metrics.csv`` (and TensorBoard events, when installed) here.
        objective: one of OBJECTIVES: "flow_matching" (default), "velocity_matching" or
            "time_prediction".
    """

    def __init__(self, model, pairs, *, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), ema=0.999, grad_clip=1.0,
                 warmup_steps=0, schedule="constant", device=None, seed=0, log_dir=None, objective="flow_matching"):
        check_module("model", model)
        if not isinstance(pairs, PairStream) and not hasattr(pairs, "__iter__"):
            raise ValueError(f"argument 'pairs' must be a PairStream or an iterable of (x0, x1), got {type(pairs).__name__}")
        check_number("lr", lr, above=0)
        check_number("weight_decay", weight_decay, at_least=0)
        check_number("ema", ema, at_least=0, below=1)
        if grad_clip is not None:
            check_number("grad_clip", grad_clip, above=0)
        check_int("seed", seed, 0)
        check_int("warmup_steps", warmup_steps, 0)
        check_choice("schedule", schedule, _SCHEDULES)
        check_choice("objective", objective, OBJECTIVES)
        self.objective = objective
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.ema_decay = float(ema)
        self._ema = None
        if ema:
            # use_buffers=False: buffers (BatchNorm statistics) are copied from the model, not averaged.
            self._ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay),
                                      use_buffers=False).requires_grad_(False)
            # Its first update copies the weights instead of averaging; spent here, on the initial
            # weights, the average starts from them and every training step is an EMA step.
            self._ema.update_parameters(self.model)
        self._scheduler = None
        self.pairs = pairs
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
        self.base_lr, self.grad_clip, self.warmup_steps, self.schedule = float(lr), grad_clip, warmup_steps, schedule
        self.weight_decay, self.betas = float(weight_decay), tuple(betas)
        self.seed = int(seed)
        self.step = 0
        self.train_seconds = 0.0
        self.history = []
        self.log_dir = log_dir
        self._stream = None
        self._writer = None
        self._num_steps = None       # the length of the run being trained (its schedule's)
        self._own_checkpoint = None  # the file this trainer last saved or loaded: its own to replace

    @property
    def ema_model(self):
        """The moving average of the weights (a copy of the model), or None without one."""
        return None if self._ema is None else self._ema.module

    @property
    def velocity(self):
        """The network to evaluate: the moving average of the weights when one is kept."""
        return self.ema_model if self.ema_model is not None else self.model

    def train(self, num_steps, *, progress=True, log_every=100, checkpoint=None, checkpoint_every=None,
              overwrite=False):
        """Trains until ``self.step == num_steps`` (a resumed run continues from its step).

        ``checkpoint``: a path that ``state_dict()`` is saved to every ``checkpoint_every`` steps
        and at the end. When the file exists and is not this trainer's own (saved or loaded by
        it), the run in it is never overwritten silently: a fresh trainer resumes from it, so
        that running the same script again continues an interrupted run where it stopped (and
        returns at once from a finished one); a run of another recipe (network, optimiser
        settings, seed, objective, or the length of a cosine schedule) is refused with a
        ValueError, as is any run when this trainer has trained steps of its own. To continue a
        run with new settings on purpose, :meth:`load` it first.
        ``overwrite``: train from this trainer's own state and replace the file.
        """
        check_int("num_steps", num_steps, 1)
        check_int("log_every", log_every, 1)
        if checkpoint and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ValueError("argument 'checkpoint_every' must be an int >= 1 when 'checkpoint' is given")
        if checkpoint and not overwrite:
            self._resume_from(checkpoint, num_steps, progress)
        self._num_steps = num_steps
        self._start_schedule(num_steps)
        if self._stream is None:
            self._stream = iter(self.pairs.batches(self.step) if isinstance(self.pairs, PairStream) else self.pairs)
        self.model.train()
        bar = tqdm(total=num_steps, initial=self.step, disable=not progress, desc="flow matching", leave=False)
        # Losses stay on the device between log steps: reading one per step would make the host
        # wait for every step on a GPU.
        loss_sum, loss_count = 0.0, 0
        try:
            while self.step < num_steps:
                start = time.perf_counter()
                batch = [t.to(self.device) for t in next(self._stream)]
                loss, grad_norm, lr = self._train_step(batch)
                self.train_seconds += time.perf_counter() - start
                self.step += 1
                loss_sum, loss_count = loss_sum + loss, loss_count + 1
                bar.update(1)
                log = self.step % log_every == 0 or self.step == num_steps
                save = checkpoint and (self.step % checkpoint_every == 0 or self.step == num_steps)
                if log or save:
                    mean_loss = float(loss_sum) / loss_count
                    if not math.isfinite(mean_loss):
                        raise RuntimeError(f"{self.objective} loss is {mean_loss} by step {self.step}: "
                                           "lower 'lr' or set 'grad_clip'")
                if log:
                    self._log({"step": self.step, "loss": mean_loss, "grad_norm": float(grad_norm),
                               "lr": lr, "seconds": self.train_seconds,
                               "pairing_seconds": getattr(self.pairs, "pairing_seconds", 0.0)})
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    loss_sum, loss_count = 0.0, 0
                if save:
                    self.save(checkpoint)
        finally:
            bar.close()
            if self._writer:
                self._writer.flush()
        return self

    def _resume_from(self, path, num_steps, progress):
        """Loads the run that ``path`` holds, unless it is this trainer's own; see :meth:`train`."""
        if not os.path.exists(path) or self._own_checkpoint == os.path.abspath(path):
            return
        advice = "pass overwrite=True (--overwrite on the command line) to replace it, or choose another path"
        if self.step > 0:
            raise ValueError(f"argument 'checkpoint': {path} holds another run, and this trainer has trained "
                             f"{self.step} steps of its own: {advice}")
        state = load_checkpoint(path, self.device, name="argument 'checkpoint'")
        conflicts = self._conflicts(state, num_steps)
        if conflicts:
            raise ValueError(f"argument 'checkpoint': {path} holds a run that this one would not continue "
                             f"({'; '.join(conflicts)}): {advice}, or load() it to continue it with these settings")
        self._adopt(state, path)
        if progress:
            tqdm.write(f"resuming from {path} at step {self.step} of {num_steps}", file=sys.stderr)

    def _recipe(self):
        """What decides the weights besides the batches: a run resumed under another recipe
        would not be the run it continues."""
        recipe = {"objective": self.objective, "lr": self.base_lr, "weight_decay": self.weight_decay,
                  "betas": self.betas, "ema": self.ema_decay, "grad_clip": self.grad_clip,
                  "warmup_steps": self.warmup_steps, "schedule": self.schedule, "seed": self.seed}
        if isinstance(self.pairs, PairStream):  # its batches are a function of (seed, step)
            recipe["pairs"] = f"{type(self.pairs).__name__}(batch_size={self.pairs.batch_size}, seed={self.pairs.seed})"
        return recipe

    def _conflicts(self, state, num_steps):
        theirs = state.get("recipe") or {}  # checkpoints written before recipes were recorded have none
        found = [f"{key} {theirs[key]!r} there, {value!r} here" for key, value in self._recipe().items()
                 if key in theirs and theirs[key] != value]
        shapes = {key: tuple(value.shape) for key, value in self.model.state_dict().items()}
        if {key: tuple(value.shape) for key, value in state["model"].items()} != shapes:
            found.append("another network (parameter names or shapes differ)")
        if self.schedule == "cosine" and state.get("num_steps") not in (None, num_steps):
            found.append(f"a cosine schedule over {state['num_steps']} steps there, {num_steps} here")
        return found

    def _train_step(self, batch):
        """One optimiser step; returns the loss and the gradient norm as device tensors, and the
        learning rate of the step."""
        gen = torch.Generator().manual_seed(derived_seed(self.seed, self.step, 7))
        loss = OBJECTIVES[self.objective](self.model, batch, gen, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip else math.inf)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self._scheduler.step()
        if self._ema is not None:
            self._ema.update_parameters(self.model)
        return loss.detach().double(), norm, lr

    def _start_schedule(self, num_steps):
        """The learning rates of a run of ``num_steps`` from ``self.step`` on.

        A LambdaLR of `_lr_scale`, made at each train() since a cosine schedule depends on the
        run's length. Its position is ``self.step``, so checkpoints keep no scheduler state, and
        those written before the trainer had schedulers load as they are. Its base rate is this
        trainer's ``lr``, whatever a loaded optimizer brings ('initial_lr', or none in older files).
        """
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.base_lr
        self._scheduler = LambdaLR(self.optimizer, functools.partial(self._lr_scale, num_steps=num_steps),
                                   last_epoch=self.step - 1)

    def _lr_scale(self, step, num_steps):
        """Factor of ``lr`` at (0-based) ``step``: a linear warm-up over ``warmup_steps`` times,
        for "cosine", a half cosine to 0 at ``num_steps``. Both at once during the warm-up, hence
        one LambdaLR rather than SequentialLR(LinearLR, CosineAnnealingLR), whose recursive
        cosine would not give these rates to the bit either."""
        scale = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.schedule == "cosine":
            scale *= 0.5 * (1 + math.cos(math.pi * min(step / num_steps, 1.0)))
        return scale

    def _log(self, row):
        self.history.append(row)
        if self.log_dir is None:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        path = os.path.join(self.log_dir, "metrics.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # TensorBoard is optional; the CSV has everything
                self._writer = False
            else:
                self._writer = SummaryWriter(self.log_dir)
        if self._writer:
            for key, value in row.items():
                if key != "step":
                    self._writer.add_scalar(f"train/{key}", value, row["step"])

    # --- state ---------------------------------------------------------------------------

    def state_dict(self):
        return {"model": self.model.state_dict(), "ema_model": None if self.ema_model is None else
                self.ema_model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                "seed": self.seed, "train_seconds": self.train_seconds, "history": list(self.history),
                "num_steps": self._num_steps, "recipe": self._recipe()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        if (state["ema_model"] is None) != (self.ema_model is None):
            raise ValueError("load_state_dict: the checkpoint and this trainer disagree on keeping an EMA of the weights")
        if self.ema_model is not None:
            self.ema_model.load_state_dict(state["ema_model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.seed = state["step"], state["seed"]
        self.train_seconds, self.history = state["train_seconds"], list(state["history"])
        self._num_steps = state.get("num_steps")
        self._stream = None  # restart the pair stream at the loaded step

    def save(self, path):
        """Writes ``state_dict()`` atomically (a crash mid-write leaves the previous file)."""
        save_checkpoint(self.state_dict(), path)
        self._own_checkpoint = os.path.abspath(path)

    def load(self, path):
        """Loads a checkpoint; a later ``train(checkpoint=path)`` continues it and writes to it."""
        self._adopt(load_checkpoint(path, self.device, name="argument 'path'"), path)
        return self

    def _adopt(self, state, path):
        """Continues the run of checkpoint ``path``: its state, its file, and its log, which keeps
        the rows up to the loaded step (those after it were logged by the interrupted run, and the
        resumed one logs them again)."""
        self.load_state_dict(state)
        self._own_checkpoint = os.path.abspath(path)
        log = os.path.join(self.log_dir, "metrics.csv") if self.log_dir is not None else None
        if log is None or not os.path.exists(log):
            return
        with open(f"{log}.tmp", "w", newline="") as f:
            if self.history:
                writer = csv.DictWriter(f, fieldnames=list(self.history[0]))
                writer.writeheader()
                writer.writerows(self.history)
        os.replace(f"{log}.tmp", log)
