"""Flow-matching training with the coupling as a component.

For each minibatch (x0, x1) of a pair stream, t ~ U[0, 1] and x_t = (1 - t) x0 + t x1; the
network regresses the velocity of the straight path, x1 - x0 (seed paper 002, Algorithm 2). The
coupling only decides which x1 goes with which x0: independent (I-FM), a Sinkhorn coupling
(OT-FM) or a semidiscrete potential (SD-FM) all plug in as a
:class:`ot_flow.flow.pair_streams.PairStream`. Two other regressions share the loop: velocity
matching on (x, t, v) triples (NSGF's pool of Sinkhorn-flow velocities) and the prediction of t
from x_t (NSGF++'s phase-transition time).

AdamW, an exponential moving average of the weights (what is evaluated), gradient clipping,
a warm-up then constant or cosine learning rate, a progress bar, metrics to CSV (and to
TensorBoard when it is installed), and checkpoints: a run resumed from its checkpoint ends with
the same weights as an uninterrupted one, because the batches and the times t are functions of
(seed, step) alone.
"""

import copy
import csv
import math
import os
import time

import torch
from tqdm.auto import tqdm

from ot_flow.distributed import derived_seed
from ot_flow.flow.pair_streams import PairStream

__all__ = ["FlowMatchingTrainer", "OBJECTIVES"]

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
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"argument 'model' must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(pairs, PairStream) and not hasattr(pairs, "__iter__"):
            raise ValueError(f"argument 'pairs' must be a PairStream or an iterable of (x0, x1), got {type(pairs).__name__}")
        if not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"argument 'lr' must be > 0, got {lr!r}")
        if not isinstance(ema, (int, float)) or not 0 <= ema < 1:
            raise ValueError(f"argument 'ema' must lie in [0, 1), got {ema!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"argument 'grad_clip' must be None or > 0, got {grad_clip!r}")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"argument 'warmup_steps' must be an int >= 0, got {warmup_steps!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"argument 'schedule' must be one of {_SCHEDULES}, got {schedule!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"argument 'objective' must be one of {tuple(OBJECTIVES)}, got {objective!r}")
        self.objective = objective
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False) if ema else None
        self.ema_decay = float(ema)
        self.pairs = pairs
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
        self.base_lr, self.grad_clip, self.warmup_steps, self.schedule = float(lr), grad_clip, warmup_steps, schedule
        self.seed = int(seed)
        self.step = 0
        self.train_seconds = 0.0
        self.history = []
        self.log_dir = log_dir
        self._stream = None
        self._writer = None

    @property
    def velocity(self):
        """The network to evaluate: the moving average of the weights when one is kept."""
        return self.ema_model if self.ema_model is not None else self.model

    def train(self, num_steps, *, progress=True, log_every=100, checkpoint=None, checkpoint_every=None):
        """Trains until ``self.step == num_steps`` (a resumed run continues from its step).

        ``checkpoint``: a path that ``state_dict()`` is saved to every ``checkpoint_every`` steps
        and at the end; an interrupted run restarts from it with :meth:`load_state_dict`.
        """
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"argument 'num_steps' must be an int >= 1, got {num_steps!r}")
        if not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"argument 'log_every' must be an int >= 1, got {log_every!r}")
        if checkpoint and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ValueError("argument 'checkpoint_every' must be an int >= 1 when 'checkpoint' is given")
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
                loss, grad_norm = self._train_step(batch, num_steps)
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
                               "lr": self.optimizer.param_groups[0]["lr"], "seconds": self.train_seconds,
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

    def _train_step(self, batch, num_steps):
        """One optimiser step; returns the loss and the gradient norm as device tensors."""
        gen = torch.Generator().manual_seed(derived_seed(self.seed, self.step, 7))
        loss = OBJECTIVES[self.objective](self.model, batch, gen, self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr_at(self.step, num_steps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip else math.inf)
        self.optimizer.step()
        if self.ema_model is not None:
            with torch.no_grad():
                for p_ema, p in zip(self.ema_model.parameters(), self.model.parameters()):
                    p_ema.lerp_(p, 1 - self.ema_decay)
                for b_ema, b in zip(self.ema_model.buffers(), self.model.buffers()):
                    b_ema.copy_(b)
        return loss.detach().double(), norm

    def _lr_at(self, step, num_steps):
        scale = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.schedule == "cosine":
            scale *= 0.5 * (1 + math.cos(math.pi * min(step / num_steps, 1.0)))
        return self.base_lr * scale

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
                "seed": self.seed, "train_seconds": self.train_seconds, "history": list(self.history)}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        if (state["ema_model"] is None) != (self.ema_model is None):
            raise ValueError("load_state_dict: the checkpoint and this trainer disagree on keeping an EMA of the weights")
        if self.ema_model is not None:
            self.ema_model.load_state_dict(state["ema_model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.seed = state["step"], state["seed"]
        self.train_seconds, self.history = state["train_seconds"], list(state["history"])
        self._stream = None  # restart the pair stream at the loaded step

    def save(self, path):
        """Writes ``state_dict()`` atomically (a crash mid-write leaves the previous file)."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        tmp = f"{path}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path):
        if not os.path.exists(path):
            raise ValueError(f"argument 'path': no checkpoint at {path}")
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))
        return self
