"""What a SemidiscreteSampler's state holds, and the checks that it belongs to the sampler loading it.

A state (``SemidiscreteSampler.state_dict()``) carries everything to pair with a fit or continue
it: the potential, its average, the optimiser's moments, the step and where the noise streams
stand, and a fingerprint of the data, weights and labels it was fitted on. ``load_state_dict``
checks all of it before loading anything, so a state of other data, another eps or another noise
source fails with a message naming the difference instead of pairing wrongly.

The format is version 2; states saved before fingerprints (version 1: the potential of the data
as given, a ``generator`` instead of ``noise``) still load, with a warning (the sampler converts).
"""

import copy
import warnings

import torch

from ot_flow import distributed

__all__ = ["STATE_VERSION", "state_of", "load_state", "measure_fingerprint", "check_potential"]

STATE_VERSION = 2
# Keys every state has had (``noise`` was ``generator`` before quasi-random noise).
_REQUIRED_KEYS = ("g", "g_ema", "step", "spread", "gap", "optimizer", "optimizer_name", "history", "num_points",
                 "cost")
# Fingerprints of the same data agree to rounding (float64 sums in another order, on another
# device); another data set of the same size differs by ~1 / sqrt(N) in its moments.
_FINGERPRINT_RTOL = 1e-6


def state_of(sampler):
    """``sampler.state_dict()``: everything to pair with the fit or continue it. ``g``, ``g_ema``,
    ``spread`` and ``gap`` are in the standardised frame; ``fingerprint`` ties the state to the
    data, weights, labels and noise source it was fitted on."""
    s = sampler
    # On the host (copies): during a fit the sampler's potential is on the fit's device.
    return {"version": STATE_VERSION, "g": s.g.to("cpu", copy=True),
            "g_ema": None if s.g_ema is None else s.g_ema.to("cpu", copy=True),
            "step": s.step, "fitted": s.fitted, "spread": s.spread, "gap": s.gap,
            "noise": s._noise_source.stream_state(), "optimizer": copy.deepcopy(s._optimizer_state),
            "optimizer_name": s._optimizer_name, "history": list(s.history),
            "warm_started": s.warm_started, "eps": s.eps, "relative_eps": s.relative_eps,
            "cost": s.cost, "num_points": s.g.shape[0], "fingerprint": copy.deepcopy(s.fingerprint)}


def load_state(sampler, state):
    """``sampler.load_state_dict(state)``: every check first (``check_state``), then the load; a
    state without a fingerprint (version 1) is converted from the data's units into the frame."""
    check_state(state, sampler)
    s, old = sampler, "fingerprint" not in state
    if old:
        warnings.warn("load_state_dict: this state was saved without a fingerprint of its data, so it "
                      "cannot be checked against this sampler's data; save it again to have it checked",
                      UserWarning, stacklevel=3)
    # A state without a fingerprint holds the potential of the data as given, in its units.
    convert = s._from_public if old else (lambda g: g.clone())
    unit = s._frame.unit if old else 1.0
    s.g = convert(state["g"].double().cpu())
    s.g_ema = None if state["g_ema"] is None else convert(state["g_ema"].double().cpu())
    s.step = state["step"]
    s.spread = None if state["spread"] is None else state["spread"] / unit
    s.gap = None if state["gap"] is None else state["gap"] / unit
    s._noise_source.set_stream_state(_noise_of(state))
    s._optimizer_state = copy.deepcopy(state["optimizer"])
    if old and state["optimizer_name"] == "newton":  # its score gaps, into the frame's units
        s._optimizer_state["gap_sums"] = s._optimizer_state["gap_sums"] / unit
    s._optimizer_name = state["optimizer_name"]
    s.history = list(state["history"])
    s.warm_started = state.get("warm_started", s.step > 0)
    s.fitted = state.get("fitted", s.step > 0)


def _noise_of(state):
    """Where the fit's noise stream stood: (generator state, Sobol position or None); a state
    saved before quasi-random noise has only its generator's."""
    return state["noise"] if "noise" in state else (state["generator"], None)


def measure_fingerprint(projections, weights, groups, frame, dim, offset, total, device, process_group=None):
    """What a fitted state belongs to: sizes, frame, and moments over all ranks of the
    standardised data along a fixed direction (``projections``, this rank's N points), tied to
    the points' order (global position ``offset`` + i of ``total``), weights and labels
    (``groups``: [(label, indices)], [(None, None)] without labels). The ranks sum on ``device``."""
    n_local = projections.shape[0]
    position = (torch.arange(n_local, dtype=torch.float64) + offset + 0.5) / total
    w = weights.cpu()
    moments = torch.stack([projections.sum(), projections.square().sum(), (position * projections).sum(),
                           (w * projections).sum() * total, (position * w).sum() * total])
    conditional = groups[0][0] is not None
    if conditional:
        labels = torch.zeros(n_local, dtype=torch.float64)
        for label, index in groups:
            labels[index] = float(label)
        moments = torch.cat([moments, (position * labels).sum().reshape(1)])
    moments = moments.to(device)
    if process_group is not None:
        moments = distributed.all_sum(moments, process_group)
    classes = [(label, len(index)) for label, index in groups] if conditional else None
    return {"rows": (offset, n_local, total), "dim": dim, "classes": classes,
            "center": frame.center.clone(), "scale": frame.scale,
            "noise_center": frame.noise_center.clone(), "noise_scale": frame.noise_scale,
            "moments": moments.cpu() / total}


def check_potential(what, g, weights):
    """A potential (N,) of floats, finite wherever the weight is positive (weight-0 points are
    never assigned, so their -inf or anything else is ignored)."""
    n = weights.shape[0]
    if not isinstance(g, torch.Tensor) or g.shape != (n,) or not g.is_floating_point():
        shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
        raise ValueError(f"{what} must be a float tensor of shape ({n},), got {shape}")
    if not torch.isfinite(g.detach().cpu()[weights > 0]).all():
        raise ValueError(f"{what} has NaN or Inf at points of positive weight")


def check_state(state, sampler):
    """Raises a ValueError naming what does not fit ``sampler`` before anything is loaded."""
    if not isinstance(state, dict):
        raise ValueError(f"load_state_dict: argument 'state' must be a dict from SemidiscreteSampler.state_dict(), "
                         f"got {type(state).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in state]
    if "noise" not in state and "generator" not in state:
        missing.append("noise")
    if missing:
        raise ValueError(f"load_state_dict: argument 'state' lacks {missing}: not a SemidiscreteSampler state")
    n = sampler.weights.shape[0]
    if state["num_points"] != n or state["cost"] != sampler.cost:
        raise ValueError(f"load_state_dict: the state is for {state['num_points']} points and cost "
                         f"{state['cost']!r}, this sampler has {n} and {sampler.cost!r}")
    for name in ("eps", "relative_eps"):
        if name in state and state[name] != getattr(sampler, name):
            raise ValueError(f"load_state_dict: the state was fitted with {name}={state[name]!r}, this sampler "
                             f"has {name}={getattr(sampler, name)!r}; build the sampler with the state's {name}")
    for name in ("g", "g_ema"):
        if state[name] is not None or name == "g":
            check_potential(f"load_state_dict: the state's {name!r}", state[name], sampler.weights)
    if "fingerprint" in state:
        _check_fingerprint(state["fingerprint"], sampler.fingerprint)
    if (_noise_of(state)[1] is None) == sampler.quasi_random:
        raise ValueError(f"load_state_dict: the state was saved with quasi_random={not sampler.quasi_random}, "
                         f"this sampler has {sampler.quasi_random}")


def _check_fingerprint(saved, mine):
    for key, what in (("rows", "rows (offset, local, total)"), ("dim", "features per point"),
                      ("classes", "classes (label, size)")):
        if saved.get(key) != mine[key]:
            raise ValueError(f"load_state_dict: the state was fitted on data with {what} {saved.get(key)}, "
                             f"this sampler's data have {mine[key]}")

    def close(a, b, scale):
        return bool((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64))
                    .abs().max() <= _FINGERPRINT_RTOL * scale)

    if not (close(saved["scale"], mine["scale"], mine["scale"])
            and close(saved["center"], mine["center"], mine["scale"])
            and close(saved["moments"], mine["moments"], 1.0)):
        raise ValueError("load_state_dict: the state was fitted on other data (or weights, labels or order of "
                         "the points) than this sampler's: their fingerprints (mean, spread and moments) differ")
    if not (close(saved["noise_scale"], mine["noise_scale"], mine["noise_scale"])
            and close(saved["noise_center"], mine["noise_center"], mine["noise_scale"])):
        raise ValueError("load_state_dict: the state was fitted with another noise source (argument 'source'): "
                         "the mean or spread of its noise differs from this sampler's")
