"""Training NSGF and NSGF++ from an experiment config (the ``nsgf`` / ``nsgf++`` methods of
``python -m ot_flow train|compare``).

NSGF: simulate the Sinkhorn flow into a pool, regress a velocity network on it. NSGF++ adds a
straight flow (flow matching on independent noise/data pairs) and the phase-transition time
predictor, each with its own checkpoint in the method's run directory.
"""

import os

from ot_flow.flow.pair_streams import IndependentPairs
from ot_flow.flow.trainer import FlowMatchingTrainer
from ot_flow.nsgf.plus_plus import NSGFPlusPlus, TimePredictor
from ot_flow.nsgf.pool import SinkhornFlowPool

__all__ = ["NSGF_METHODS", "train_nsgf", "load_nsgf"]

NSGF_METHODS = ("nsgf", "nsgf++")
_PARTS = {"nsgf": ("nsgf",), "nsgf++": ("nsgf", "straight", "predictor")}


def _trainer(config, model, stream, out, objective, device):
    t = config.train
    return FlowMatchingTrainer(model, stream, lr=t.lr, weight_decay=t.weight_decay, ema=t.ema, grad_clip=t.grad_clip,
                               warmup_steps=t.warmup_steps, schedule=t.schedule, device=device, seed=t.seed,
                               log_dir=out, objective=objective)


def _build_part(part, config, task, build_model):
    return TimePredictor(task.shape) if part == "predictor" else build_model(config, task)


def train_nsgf(config, method, task, device, out_dir, build_model, *, progress=True, resume=False):
    """Trains the networks of an NSGF / NSGF++ method; returns (model, pool, trainers): the
    NSGF velocity field or the NSGFPlusPlus sampler, the simulated pool, and one trainer per
    network (each trains ``config.train.steps`` steps)."""
    t = config.train
    pool = SinkhornFlowPool(task.sample_source, task.train_data.to(device), num_steps=method.flow_steps,
                            step_size=method.flow_step_size, particles=method.flow_particles,
                            trajectories=method.flow_trajectories, eps=method.eps if method.eps is not None else 0.1,
                            batch_size=t.batch_size, seed=t.seed, device=device, progress=progress)
    streams = {"nsgf": (pool, "velocity_matching"),
               "straight": (IndependentPairs(task.sample_source, task.train_data.to(device), t.batch_size,
                                             seed=t.seed), "flow_matching"),
               "predictor": (IndependentPairs(task.sample_source, task.train_data.to(device), t.batch_size,
                                              seed=t.seed + 1), "time_prediction")}
    trainers = {}
    for part in _PARTS[method.coupling]:
        out = os.path.join(out_dir, part)
        checkpoint = os.path.join(out, "checkpoint.pt")
        stream, objective = streams[part]
        trainer = _trainer(config, _build_part(part, config, task, build_model), stream, out, objective, device)
        if resume and os.path.exists(checkpoint):
            trainer.load(checkpoint)
        trainer.train(t.steps, progress=progress, log_every=t.log_every, checkpoint=checkpoint,
                      checkpoint_every=t.checkpoint_every)
        trainers[part] = trainer
    return _assemble(method, {part: tr.velocity for part, tr in trainers.items()}), pool, list(trainers.values())


def load_nsgf(config, method, task, device, out_dir, build_model):
    """The trained model of an NSGF / NSGF++ method from its checkpoints."""
    import torch

    models = {}
    for part in _PARTS[method.coupling]:
        path = os.path.join(out_dir, part, "checkpoint.pt")
        if not os.path.exists(path):
            raise ValueError(f"method {method.name!r} has no checkpoint at {path}: train it first")
        state = torch.load(path, map_location=device, weights_only=False)
        model = _build_part(part, config, task, build_model).to(device)
        model.load_state_dict(state["ema_model"] if state["ema_model"] is not None else state["model"])
        models[part] = model
    return _assemble(method, models)


def _assemble(method, models):
    if method.coupling == "nsgf":
        return models["nsgf"]
    return NSGFPlusPlus(models["nsgf"], models["straight"], models["predictor"], method.flow_steps)
