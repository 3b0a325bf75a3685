"""Runs experiments from configs: train each method's flow, evaluate it with the papers' metrics,
and put the methods side by side.

Layout of a run directory (``runs/<name>`` by default)::

    config.yaml                  the config as it was run
    <method>/checkpoint.pt       trainer state (resume with ``--resume``)
    <method>/semidiscrete.pt     the fitted potential of an SD-FM method
    <method>/semidiscrete-fit.pt its fit in progress, saved every tenth of the fit (``--resume`` continues it)
    <method>/metrics.csv         training log
    results.json, table.md       the evaluation of every method
    *.png                        plots (ot_flow.experiments.plots)
"""

import dataclasses
import json
import os
import sys
import time

import torch
import yaml

from ot_flow.experiments import plots
from ot_flow.experiments.config import select_methods
from ot_flow.experiments.nsgf_training import NSGF_METHODS, load_nsgf, part_dirs, train_nsgf
from ot_flow.experiments.runs import build_model, clear_run, load_weights, method_dir, run_files, train_in, trained_step
from ot_flow.flow import metrics, tasks
from ot_flow.flow.ode import odeint
from ot_flow.flow.pair_streams import IndependentPairs, OTPairs, SemidiscretePairs
from ot_flow.flow.trainer import CheckpointError, load_checkpoint, save_checkpoint
from ot_flow.nsgf.plus_plus import NSGFPlusPlus
from ot_flow.samplers.ot_sampler import OTSampler
from ot_flow.samplers.semidiscrete_sampler import SemidiscreteSampler

__all__ = ["resolve_device", "build_task", "build_pairs", "train_method", "evaluate", "load_trained",
           "trained_steps", "check_not_replacing", "run_experiment", "format_table"]


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"argument 'train.device': {name} was asked for but CUDA is not available")
    return device


def build_task(config):
    return tasks.make_task(config.task.name, **config.task.options)


def build_pairs(config, method, task, device, progress=True, resume=True):
    """The method's pair stream; an SD-FM method fits its potential (resuming: reloads it, or
    continues its fit from the checkpoint that the fit writes every tenth of the way)."""
    t = config.train
    data = task.train_data.to(device)
    source = task.sample_source
    if method.coupling == "independent":
        return IndependentPairs(source, data, t.batch_size, seed=t.seed)
    if method.coupling == "ot":
        sampler = OTSampler(eps=method.eps if method.eps is not None else 0.05, target_entropy=method.target_entropy,
                            entropy_tol=method.entropy_tol, tol=method.tol)
        return OTPairs(source, data, sampler, method.coupling_size, t.batch_size, seed=t.seed)
    sampler = SemidiscreteSampler(data, eps=method.eps or 0.0, source=source, seed=t.seed, device=device)
    out, what = method_dir(config, method), f"method {method.name!r}"
    state_path, fit_path = os.path.join(out, "semidiscrete.pt"), os.path.join(out, "semidiscrete-fit.pt")
    start = time.perf_counter()
    if resume and os.path.exists(state_path):
        state = load_checkpoint(state_path, name=what)
        sampler.load_state_dict(state["sampler"])
        seconds = state["seconds"]
    else:
        if resume and os.path.exists(fit_path):
            sampler.load_state_dict(load_checkpoint(fit_path, name=what))
            if progress:
                print(f"{method.name}: resuming the semidiscrete fit from {fit_path} at step {sampler.step} of "
                      f"{method.fit_steps}", file=sys.stderr, flush=True)
        os.makedirs(out, exist_ok=True)
        every = max(1, method.fit_steps // 10)
        sampler.fit(method.fit_steps, batch_size=method.fit_batch_size, lr=method.fit_lr, progress=progress,
                    log_every=every, checkpoint=fit_path, checkpoint_every=every)
        seconds = time.perf_counter() - start  # of a resumed fit: since it resumed
        save_checkpoint({"sampler": sampler.state_dict(), "seconds": seconds}, state_path)
        if os.path.exists(fit_path):
            os.remove(fit_path)
    return SemidiscretePairs(source, sampler, t.batch_size, seed=t.seed, setup_seconds=seconds)


def check_not_replacing(config, methods, *, resume=False, overwrite=False):
    """Raises a ValueError when training ``methods`` afresh would replace runs in their
    directories and neither ``resume`` nor ``overwrite`` says what to do with them."""
    if resume or overwrite:
        return
    held = [f"{method.name!r} ({method_dir(config, method)})" for method in methods
            if run_files(method_dir(config, method))]
    if held:
        raise ValueError(f"{config.run_dir} already holds runs of {', '.join(held)}: pass resume=True (--resume) to "
                         "continue them, or overwrite=True (--overwrite) to train them afresh")


def train_method(config, method, task=None, *, progress=True, resume=False, overwrite=False):
    """Trains one method of ``config``; returns (model, pair stream, trainers): the velocity
    field (or, for NSGF++, its sampler), what paired the training data, and the trainers.
    ``resume``: continue the run in the method's directory; ``overwrite``: replace it (one of
    them is needed when the directory holds a run)."""
    task = task or build_task(config)
    device = resolve_device(config.train.device)
    out = method_dir(config, method)
    check_not_replacing(config, [method], resume=resume, overwrite=overwrite)
    if not resume:
        clear_run(out)
    if progress:  # the progress bars below do not say whose they are
        print(f"{method.name}: training ({method.coupling} coupling, {config.train.steps} steps)", file=sys.stderr,
              flush=True)
    torch.manual_seed(config.train.seed)  # the networks' initial weights
    if method.coupling in NSGF_METHODS:
        return train_nsgf(config, method, task, device, out, progress=progress, resume=resume)
    model = build_model(config, task)
    pairs = build_pairs(config, method, task, device, progress=progress, resume=resume)
    trainer = train_in(config, model, pairs, out, device, progress=progress, resume=resume)
    return trainer.velocity, pairs, [trainer]


def load_trained(config, method, task=None):
    """The evaluated network (EMA weights) of a trained method, from its checkpoint(s)."""
    task = task or build_task(config)
    device = resolve_device(config.train.device)
    if method.coupling in NSGF_METHODS:
        return load_nsgf(config, method, task, device, method_dir(config, method))
    return load_weights(build_model(config, task), method_dir(config, method), device, f"method {method.name!r}")


def trained_steps(config, method):
    """The steps the method's checkpoint was saved at (for NSGF / NSGF++, the fewest of their
    networks'): fewer than ``config.train.steps`` for a run stopped early."""
    out = method_dir(config, method)
    dirs = part_dirs(method, out).values() if method.coupling in NSGF_METHODS else [(out, f"method {method.name!r}")]
    return min(trained_step(d, what) for d, what in dirs)


def evaluate(model, task, config, device=None, seed=0):
    """The metrics of seed paper 002 (section 4.1) for one trained method.

    ``model`` is a velocity field v(x, t) on [0, 1] or an NSGF++ sampler. Returns a dict:
    curvature, reconstruction (None without a known map), nll and bpd of the held-out data (None
    for NSGF++, whose two phases are not one flow), and per step count the Sinkhorn divergence and
    energy distance of the generated samples to the held-out data and the function evaluations
    it took (Euler; with ``adaptive``, dopri5 as well).
    """
    e = config.eval
    device = device or next(model.parameters()).device
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    test = task.test_data[:max(e.num_samples, e.nll_samples)].to(device)
    x0 = (task.test_source[:e.num_samples] if task.test_source is not None
          else task.sample_source(e.num_samples, gen)).to(device)
    two_phase = isinstance(model, NSGFPlusPlus)
    out = {"curvature": None, "reconstruction": None, "nll": None, "bpd": None}
    with torch.no_grad():
        if two_phase:
            mapped = model.sample(x0, e.curvature_steps)[0]
        else:  # the curvature's Euler pass is also the flow map the reconstruction error needs
            out["curvature"], mapped = metrics.curvature(model, x0, steps=e.curvature_steps, return_endpoint=True)
        if task.test_source is not None:
            out["reconstruction"] = metrics.map_error(mapped, x0, task.true_map)
    if not two_phase:
        estimator = e.divergence if e.divergence != "auto" else ("exact" if task.dim <= 64 else "hutchinson")
        log_prob = metrics.log_likelihood(model, test[:e.nll_samples], metrics.standard_normal_log_prob,
                                          steps=e.nll_steps, estimator=estimator, probes=e.probes, generator=gen)
        out["nll"] = -float(log_prob.mean())
        out["bpd"] = metrics.bits_per_dim(log_prob, task.dim, log_scale=task.log_scale)
    quality = {}
    with torch.no_grad():
        runs = [(f"euler{s}", dict(method="euler", steps=s)) for s in e.steps]
        if e.adaptive and not two_phase:
            runs.append(("dopri5", dict(method="dopri5", rtol=e.rtol, atol=e.rtol)))
        for key, kwargs in runs:
            if two_phase:  # the step count is the straight phase's, after the NSGF steps
                samples, nfe = model.sample(x0, kwargs["steps"])
            else:
                solution = odeint(model, x0, **kwargs)
                samples, nfe = solution.x, solution.nfe
            quality[key] = {"nfe": nfe,
                            "sinkhorn": metrics.sinkhorn_distance(samples, test[:e.num_samples], eps=e.sinkhorn_eps),
                            "energy": metrics.energy_distance(samples, test[:e.num_samples])}
    out["quality"] = quality
    return out


def run_experiment(config, *, methods=None, progress=True, resume=False, overwrite=False, evaluate_only=False):
    """Trains (unless ``evaluate_only``) and evaluates the chosen methods (names or couplings, see
    config.select_methods; default all) and writes config.yaml, results.json and table.md under
    the run directory. Returns the rows.

    Training afresh over existing runs needs ``resume`` or ``overwrite`` (checked for every
    method before any trains). Evaluating, a method without a readable checkpoint is reported in
    one line on stderr and skipped; a checkpoint saved before ``config.train.steps`` is evaluated
    and marked partial (row keys ``trained_steps``, ``partial``; the table says so)."""
    chosen = select_methods(config, methods)
    if not evaluate_only:
        check_not_replacing(config, chosen, resume=resume, overwrite=overwrite)
    task = build_task(config)
    device = resolve_device(config.train.device)
    os.makedirs(config.run_dir, exist_ok=True)
    with open(os.path.join(config.run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(_as_yaml(config), f, sort_keys=False)
    rows = _load_rows(config.run_dir)
    models = {}
    for method in chosen:
        row = {"method": method.name, "coupling": method.coupling}
        if evaluate_only:
            try:
                model, steps = load_trained(config, method, task), trained_steps(config, method)
            except CheckpointError as error:  # missing or unreadable: say so, evaluate the others
                print(f"{method.name}: not evaluated: {error}", file=sys.stderr, flush=True)
                rows.pop(method.name, None)  # an earlier row would describe a checkpoint no longer there
                continue
        else:
            start = time.perf_counter()
            model, pairs, trainers = train_method(config, method, task, progress=progress, resume=resume,
                                                  overwrite=overwrite)
            steps = min(trainer.step for trainer in trainers)
            row.update(pairs.describe())
            row.update({"train_seconds": time.perf_counter() - start, "pairing_us_per_pair": 1e6 * pairs.seconds_per_pair,
                        "setup_seconds": pairs.setup_seconds, "final_loss": trainers[0].history[-1]["loss"]})
        row.update({"trained_steps": steps, "partial": steps < config.train.steps})
        if row["partial"]:
            print(f"{method.name}: partial: its checkpoint was saved at step {steps} of {config.train.steps} "
                  "(train --resume finishes it)", file=sys.stderr, flush=True)
        if progress:
            print(f"{method.name}: evaluating", file=sys.stderr, flush=True)
        row.update(evaluate(model, task, config, device, seed=config.train.seed + 1))
        models[method.name] = model
        rows[method.name] = {**rows.get(method.name, {}), **row}
        if progress:
            print(format_table([rows[method.name]], config), flush=True)
    if not models:
        raise ValueError(f"{config.name}: no method of {[m.name for m in chosen]} could be evaluated "
                         f"(see the lines above): train them first")
    with open(os.path.join(config.run_dir, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    ordered = [rows[m.name] for m in config.methods if m.name in rows]
    with open(os.path.join(config.run_dir, "table.md"), "w") as f:
        f.write(format_table(ordered, config) + "\n")
    plots.write_plots(ordered, config.run_dir, task, models, device)
    return ordered


def format_table(rows, config):
    """A markdown table of the rows (lower is better everywhere but the entropy column)."""
    steps = config.eval.steps
    head = ["method", "E(P)", "curvature", "reconstruction", "BPD"] + [f"S_eps {s} step{'s' if s > 1 else ''}"
                                                                        for s in steps]
    if config.eval.adaptive:
        head.append("S_eps dopri5 (NFE)")
    head += [f"energy {steps[0]} / {steps[-1]} steps", "coupling us/pair", "setup s", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        q = r.get("quality", {})
        name = f"{r['method']} (partial: {r['trained_steps']} of {config.train.steps} steps)" if r.get("partial") \
            else r["method"]
        cells = [name, _fmt(r.get("entropy"), ".2f"), _fmt(r.get("curvature"), ".3g"),
                 _fmt(r.get("reconstruction"), ".3g"), _fmt(r.get("bpd"), ".3f")]
        cells += [_fmt(q.get(f"euler{s}", {}).get("sinkhorn"), ".3g") for s in steps]
        if config.eval.adaptive:
            d = q.get("dopri5")
            cells.append(f"{d['sinkhorn']:.3g} ({d['nfe']})" if d else "-")
        first, last = q.get(f"euler{steps[0]}", {}), q.get(f"euler{steps[-1]}", {})
        cells += [f"{_fmt(first.get('energy'), '.3g')} / {_fmt(last.get('energy'), '.3g')}",
                  _fmt(r.get("pairing_us_per_pair"), ".1f"),
                  _fmt(r.get("setup_seconds"), ".1f"), _fmt(r.get("train_seconds"), ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _load_rows(run_dir):
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _as_yaml(config):
    raw = dataclasses.asdict(config)
    raw["task"] = {"name": config.task.name, **config.task.options}
    return raw
