"""A method's run directory: the networks a config describes, trained to a checkpoint there
(resumable), and loaded back with their evaluated (EMA) weights. Shared by the flow-matching
methods (experiment.py) and NSGF / NSGF++ (ot_flow/nsgf/training.py), which keeps one trainer
per network in a subdirectory."""

import os
import re

import torch

from ot_flow.flow.networks import make_velocity_model
from ot_flow.flow.trainer import FlowMatchingTrainer

__all__ = ["build_model", "method_dir", "clear_run", "train_in", "load_weights"]

_RUN_FILES = ("checkpoint.pt", "metrics.csv", "semidiscrete.pt")


def build_model(config, task):
    """The velocity network of ``config.model`` for the task's point shape."""
    m = config.model
    if m.kind == "mlp":
        return make_velocity_model(task.shape, "mlp", width=m.width, depth=m.depth, time_frequencies=m.time_frequencies)
    return make_velocity_model(task.shape, "unet", channels=m.channels)


def method_dir(config, method):
    return os.path.join(config.run_dir, re.sub(r"[^A-Za-z0-9_.=+-]+", "_", method.name))


def clear_run(out):
    """Removes the checkpoints, logs and fitted potentials under ``out`` (a fresh, not resumed, run)."""
    for root, _, files in os.walk(out):
        for name in _RUN_FILES:
            if name in files:
                os.remove(os.path.join(root, name))


def train_in(config, model, stream, out, device, *, objective="flow_matching", progress=True, resume=False):
    """Trains ``model`` on ``stream`` with ``config.train``, checkpointing to ``out``/checkpoint.pt
    and logging to ``out``/metrics.csv; with ``resume``, continues from that checkpoint."""
    t = config.train
    checkpoint = os.path.join(out, "checkpoint.pt")
    trainer = FlowMatchingTrainer(model, stream, lr=t.lr, weight_decay=t.weight_decay, ema=t.ema,
                                  grad_clip=t.grad_clip, warmup_steps=t.warmup_steps, schedule=t.schedule,
                                  device=device, seed=t.seed, log_dir=out, objective=objective)
    if resume and os.path.exists(checkpoint):
        trainer.load(checkpoint)
    trainer.train(t.steps, progress=progress, log_every=t.log_every, checkpoint=checkpoint,
                  checkpoint_every=t.checkpoint_every)
    return trainer


def load_weights(model, out, device, what):
    """``model`` with the evaluated weights (the EMA when one was kept) of ``out``/checkpoint.pt."""
    path = os.path.join(out, "checkpoint.pt")
    if not os.path.exists(path):
        raise ValueError(f"{what} has no checkpoint at {path}: train it first")
    state = torch.load(path, map_location=device, weights_only=False)
    model = model.to(device)
    model.load_state_dict(state["ema_model"] if state["ema_model"] is not None else state["model"])
    return model
