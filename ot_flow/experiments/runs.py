"""A method's run directory: the networks a config describes, trained to a checkpoint there
(resumable), and loaded back with their evaluated (EMA) weights. Shared by the flow-matching
methods (runner.py) and NSGF / NSGF++ (nsgf_training.py), which keeps one trainer per network
in a subdirectory.

A method's directory holds a run once any of its files exists: training then either resumes it or,
asked to, starts afresh (``clear_run``); nothing replaces it silently."""

import os
import re

from ot_flow.flow.networks import make_velocity_model
from ot_flow.flow.trainer import CheckpointError, FlowMatchingTrainer, load_checkpoint

__all__ = ["build_model", "method_dir", "clear_run", "run_files", "train_in", "load_weights", "trained_step"]

# semidiscrete-fit.pt: the potential's fit in progress (runner.build_pairs); .tmp: a save cut short.
_RUN_FILES = ("checkpoint.pt", "checkpoint.pt.tmp", "metrics.csv", "semidiscrete.pt", "semidiscrete.pt.tmp",
              "semidiscrete-fit.pt")


def build_model(config, task):
    """The velocity network of ``config.model`` for the task's point shape."""
    m = config.model
    if m.kind == "mlp":
        return make_velocity_model(task.shape, "mlp", width=m.width, depth=m.depth, time_frequencies=m.time_frequencies)
    return make_velocity_model(task.shape, "unet", channels=m.channels)


def method_dir(config, method):
    return os.path.join(config.run_dir, re.sub(r"[^A-Za-z0-9_.=+-]+", "_", method.name))


def run_files(out):
    """The checkpoints, logs and fitted potentials under ``out``: what a fresh run would replace."""
    return [os.path.join(root, name) for root, _, files in os.walk(out) for name in _RUN_FILES if name in files]


def clear_run(out):
    """Removes the files of ``run_files(out)`` (a fresh, not resumed, run)."""
    for path in run_files(out):
        os.remove(path)


def train_in(config, model, stream, out, device, *, objective="flow_matching", progress=True, resume=False):
    """Trains ``model`` on ``stream`` with ``config.train``, checkpointing to ``out``/checkpoint.pt
    and logging to ``out``/metrics.csv; with ``resume``, continues from that checkpoint (one
    of another recipe is refused: see FlowMatchingTrainer.train), else replaces it."""
    t = config.train
    checkpoint = os.path.join(out, "checkpoint.pt")
    trainer = FlowMatchingTrainer(model, stream, lr=t.lr, weight_decay=t.weight_decay, ema=t.ema,
                                  grad_clip=t.grad_clip, warmup_steps=t.warmup_steps, schedule=t.schedule,
                                  device=device, seed=t.seed, log_dir=out, objective=objective)
    trainer.train(t.steps, progress=progress, log_every=t.log_every, checkpoint=checkpoint,
                  checkpoint_every=t.checkpoint_every, overwrite=not resume)
    return trainer


def _read(out, device, what):
    path = os.path.join(out, "checkpoint.pt")
    if not os.path.exists(path):  # the usual case of a method not trained yet: say what to do
        raise CheckpointError(f"{what} has no checkpoint at {path}: train it first")
    return load_checkpoint(path, device, name=what)


def load_weights(model, out, device, what):
    """``model`` with the evaluated weights (the EMA when one was kept) of ``out``/checkpoint.pt;
    a CheckpointError (a ValueError) names a missing or unreadable file."""
    state = _read(out, device, what)
    model = model.to(device)
    model.load_state_dict(state["ema_model"] if state["ema_model"] is not None else state["model"])
    return model


def trained_step(out, what):
    """The step that ``out``/checkpoint.pt was saved at (a run stopped early has fewer than its
    config's ``train.steps``)."""
    return _read(out, "cpu", what)["step"]
