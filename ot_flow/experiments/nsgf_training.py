"""Training NSGF and NSGF++ from an experiment config (the ``nsgf`` / ``nsgf++`` methods of
``python -m ot_flow train|compare``).

NSGF: simulate the Sinkhorn flow into a pool, regress a velocity network on it. NSGF++ adds a
straight flow (flow matching on independent noise/data pairs) and the phase-transition time
predictor, each with its own checkpoint in the method's run directory.
"""

import os

from ot_flow.experiments.runs import build_model, load_weights, train_in
from ot_flow.flow.pair_streams import IndependentPairs
from ot_flow.nsgf.plus_plus import NSGFPlusPlus, TimePredictor
from ot_flow.nsgf.pool import SinkhornFlowPool

__all__ = ["NSGF_METHODS", "train_nsgf", "load_nsgf", "part_dirs"]

NSGF_METHODS = ("nsgf", "nsgf++")
_PARTS = {"nsgf": ("nsgf",), "nsgf++": ("nsgf", "straight", "predictor")}


def _build_part(part, config, task):
    return TimePredictor(task.shape) if part == "predictor" else build_model(config, task)


def train_nsgf(config, method, task, device, out_dir, *, progress=True, resume=False):
    """Trains the networks of an NSGF / NSGF++ method; returns (model, pool, trainers): the
    NSGF velocity field or the NSGFPlusPlus sampler, the simulated pool, and one trainer per
    network (each trains ``config.train.steps`` steps)."""
    t = config.train
    data = task.train_data.to(device)
    pool = SinkhornFlowPool(task.sample_source, data, num_steps=method.flow_steps, step_size=method.flow_step_size,
                            particles=method.flow_particles, trajectories=method.flow_trajectories,
                            eps=method.eps if method.eps is not None else 0.1, batch_size=t.batch_size, seed=t.seed,
                            device=device, progress=progress)
    streams = {"nsgf": (pool, "velocity_matching"),
               "straight": (IndependentPairs(task.sample_source, data, t.batch_size, seed=t.seed), "flow_matching"),
               "predictor": (IndependentPairs(task.sample_source, data, t.batch_size, seed=t.seed + 1),
                             "time_prediction")}
    trainers = {}
    for part in _PARTS[method.coupling]:
        stream, objective = streams[part]
        trainers[part] = train_in(config, _build_part(part, config, task), stream, os.path.join(out_dir, part), device,
                                  objective=objective, progress=progress, resume=resume)
    return _assemble(method, {part: tr.velocity for part, tr in trainers.items()}), pool, list(trainers.values())


def part_dirs(method, out_dir):
    """{part: (its run directory, how errors name it)} for each network of the method."""
    return {part: (os.path.join(out_dir, part), f"method {method.name!r} ({part})") for part in _PARTS[method.coupling]}


def load_nsgf(config, method, task, device, out_dir):
    """The trained model of an NSGF / NSGF++ method from its checkpoints."""
    return _assemble(method, {part: load_weights(_build_part(part, config, task), out, device, what)
                              for part, (out, what) in part_dirs(method, out_dir).items()})


def _assemble(method, models):
    if method.coupling == "nsgf":
        return models["nsgf"]
    return NSGFPlusPlus(models["nsgf"], models["straight"], models["predictor"], method.flow_steps)
