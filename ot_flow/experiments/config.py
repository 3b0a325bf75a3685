"""Experiment configs: YAML files read into typed dataclasses, checked before anything trains.

An experiment is one task, one network, one training recipe, the methods to compare (each a
coupling: independent, OT with a coupling size and an eps or target entropy, or semidiscrete)
and the evaluation. Unknown keys, wrong types and impossible values fail with the key's full
path (``methods[2].coupling_size``) and the file's name.
"""

import dataclasses
import inspect
import math
import os
import typing

import yaml

__all__ = ["TaskConfig", "ModelConfig", "TrainConfig", "MethodConfig", "EvalConfig", "ExperimentConfig",
           "load_config", "config_from_dict", "select_methods", "COUPLINGS"]

COUPLINGS = ("independent", "ot", "semidiscrete", "nsgf", "nsgf++")
# Methods that --method can add by their coupling alone (an OT method needs its coupling size).
_DEFAULT_NAMES = {"independent": "I-FM", "semidiscrete": "SD-FM", "nsgf": "NSGF", "nsgf++": "NSGF++"}


@dataclasses.dataclass
class TaskConfig:
    """``name`` is one of ot_flow.flow.tasks.TASKS; the other keys go to its constructor."""
    name: str
    options: dict = dataclasses.field(default_factory=dict)


def _ranged(default, low=None, high=None, *, above=False, below=False, note=""):
    """A numeric config field with its admissible range, checked as the YAML is read (with the
    key's path), so that a value no run could use fails before anything trains. ``above`` /
    ``below``: the bound itself is excluded. Floats must also be finite; list fields are checked
    item by item."""
    kwargs = {"default_factory": default} if callable(default) else {"default": default}
    return dataclasses.field(**kwargs, metadata={"range": (low, high, above, below, note)})


_SEED_LIMIT = 2 ** 63  # torch.manual_seed and the derived seeds take up to 64 bits; runs use seed + 1


@dataclasses.dataclass
class ModelConfig:
    kind: str = "mlp"                      # mlp | unet
    width: int = _ranged(512, 1)           # mlp
    depth: int = _ranged(5, 1)             # mlp
    time_frequencies: typing.Optional[int] = _ranged(None, 1, note=" (or null for d / 8)")
    channels: int = _ranged(32, 1)         # unet


@dataclasses.dataclass
class TrainConfig:
    steps: int = _ranged(2000, 1)
    batch_size: int = _ranged(256, 1)
    lr: float = _ranged(1e-3, 0, above=True)
    weight_decay: float = _ranged(0.0, 0)
    ema: float = _ranged(0.999, 0, 1, below=True)
    grad_clip: typing.Optional[float] = _ranged(1.0, 0, above=True, note=" (or null for no clipping)")
    warmup_steps: int = _ranged(100, 0)
    schedule: str = "cosine"               # constant | cosine
    seed: int = _ranged(0, 0, _SEED_LIMIT, below=True)
    device: str = "auto"                   # auto | cpu | cuda | cuda:1 ...
    log_every: int = _ranged(100, 1)
    checkpoint_every: int = _ranged(500, 1)


@dataclasses.dataclass
class MethodConfig:
    name: str
    coupling: str                          # independent | ot | semidiscrete | nsgf | nsgf++
    coupling_size: typing.Optional[int] = _ranged(None, 1)  # ot: points per side of one coupling
    eps: typing.Optional[float] = _ranged(None, 0)      # ot / semidiscrete / nsgf: relative to std(C)
    target_entropy: typing.Optional[float] = _ranged(None, 0, 1, above=True, below=True)  # ot: of each coupling
    entropy_tol: float = _ranged(0.01, 0, above=True)   # ot: how close to target_entropy
    tol: float = _ranged(1e-3, 0, above=True)           # ot: Sinkhorn marginal tolerance
    fit_steps: int = _ranged(3000, 1)                    # semidiscrete: potential fitting
    fit_batch_size: int = _ranged(4096, 1)
    fit_lr: typing.Optional[float] = _ranged(None, 0, above=True, note=" (or null for the fit's default)")
    flow_steps: int = _ranged(5, 1)                      # nsgf / nsgf++: Sinkhorn-flow steps T
    flow_step_size: float = _ranged(0.5, 0, above=True)  # nsgf / nsgf++: eta of x <- x + eta u(x)
    flow_particles: int = _ranged(1024, 1)               # nsgf / nsgf++: particles per simulated trajectory
    flow_trajectories: int = _ranged(16, 1)              # nsgf / nsgf++: trajectories in the velocity pool


@dataclasses.dataclass
class EvalConfig:
    num_samples: int = _ranged(2000, 1)    # generated samples per quality measurement
    steps: typing.List[int] = _ranged(lambda: [1, 2, 4, 8, 16], 1)
    adaptive: bool = True                  # also dopri5 (rtol/atol below)
    rtol: float = _ranged(1e-4, 0, above=True)
    curvature_steps: int = _ranged(50, 1)
    nll_samples: int = _ranged(500, 1)
    nll_steps: int = _ranged(50, 1)
    divergence: str = "auto"               # exact | hutchinson | auto (exact up to d = 64)
    probes: int = _ranged(4, 1)            # Hutchinson probes
    sinkhorn_eps: float = _ranged(0.1, 0, above=True)  # relative to std(C), as in ot_flow.sinkhorn_divergence


@dataclasses.dataclass
class ExperimentConfig:
    name: str
    task: TaskConfig
    methods: typing.List[MethodConfig]
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    output_dir: typing.Optional[str] = None  # default runs/<name>

    @property
    def run_dir(self):
        return self.output_dir or os.path.join("runs", self.name)


def load_config(path):
    """Reads and checks one experiment config (YAML)."""
    if not os.path.isfile(path):
        raise ValueError(f"argument 'config': no such file {path}")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
    return config_from_dict(raw, source=path)


def config_from_dict(raw, source="config"):
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: the config must be a mapping of keys, got {type(raw).__name__}")
    raw = dict(raw)
    if isinstance(raw.get("task"), dict):
        task = dict(raw["task"])
        raw["task"] = {"name": task.pop("name", None), "options": task}
    config = _build(ExperimentConfig, raw, source, "")
    _check(config, source)
    return config


def select_methods(config, names):
    """The methods that ``--method`` names: a method's name, or a coupling (``nsgf``, ``ot``, ...)
    for every method of that coupling. A coupling the config does not list is added with its
    defaults (``--method nsgf++`` on any config). None selects all methods."""
    if not names:
        return list(config.methods)
    chosen = []
    for name in names:
        matches = [m for m in config.methods if m.name == name] or \
                  [m for m in config.methods if m.coupling == name]
        if not matches and name in _DEFAULT_NAMES:
            matches = [MethodConfig(name=_DEFAULT_NAMES[name], coupling=name)]
            config.methods.append(matches[0])
        if not matches:
            raise ValueError(f"argument 'method': {name!r} is neither a method of the config "
                             f"{[m.name for m in config.methods]} nor one of the couplings {COUPLINGS}"
                             + (" (an OT method needs its coupling size in the config)" if name == "ot" else ""))
        chosen += [m for m in matches if m not in chosen]
    return chosen


def _build(cls, raw, source, where):
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: '{where or cls.__name__}' must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(_join(where, k) for k in unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name not in raw:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ValueError(f"{source}: missing key '{_join(where, name)}'")
            continue
        values[name] = _convert(hints[name], raw[name], source, _join(where, name))
        if "range" in field.metadata:
            _check_range(values[name], field.metadata["range"], source, _join(where, name))
    return cls(**values)


def _check_range(value, bounds, source, where):
    if isinstance(value, list):
        for k, item in enumerate(value):
            _check_range(item, bounds, source, f"{where}[{k}]")
        return
    if value is None:
        return
    low, high, above, below, note = bounds
    parts = [f"{'>' if above else '>='} {_show(low)}" if low is not None else "",
             f"{'<' if below else '<='} {_show(high)}" if high is not None else ""]
    wanted = " and ".join(p for p in parts if p) + (" (finite)" if isinstance(value, float) else "")
    ok = math.isfinite(value) and (low is None or (value > low if above else value >= low)) \
        and (high is None or (value < high if below else value <= high))
    if not ok:
        raise ValueError(f"{source}: '{where}' must be {wanted}{note}, got {value!r}")


def _convert(hint, value, source, where):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[T]
        if value is None:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, source, where)
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise ValueError(f"{source}: '{where}' must be a list, got {value!r}")
        return [_convert(args[0], v, source, f"{where}[{k}]") for k, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, where)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is dict and isinstance(value, dict):
        return dict(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ValueError(f"{source}: '{where}' must be a {hint.__name__}, got {value!r}")


def _show(bound):
    """A bound as written in messages: large powers of two as such (2**63, not 19 digits)."""
    if isinstance(bound, int) and bound > 2 ** 32 and bound & (bound - 1) == 0:
        return f"2**{bound.bit_length() - 1}"
    return str(bound)


def _join(where, key):
    return f"{where}.{key}" if where else key


def _check(config, source):
    from ot_flow.flow import tasks  # late: the config module stays importable without the extension

    def fail(where, message):
        raise ValueError(f"{source}: '{where}' {message}")

    if config.task.name not in tasks.TASKS:
        fail("task.name", f"must be one of {', '.join(tasks.TASKS)}, got {config.task.name!r}")
    signature = inspect.signature(tasks.task_class(config.task.name))
    try:
        signature.bind(**config.task.options)
    except TypeError as error:
        fail("task", f"does not fit {config.task.name}{signature}: {error}")
    path = config.task.options.get("path")
    if path is not None and not os.path.exists(path):
        fail("task.path", f"names a file that does not exist: {path}")
    # Ranges of single numbers are checked as they are read (_ranged); here the rules that
    # join several keys or name a choice.
    if config.model.kind not in ("mlp", "unet"):
        fail("model.kind", f"must be 'mlp' or 'unet', got {config.model.kind!r}")
    t = config.train
    if t.schedule not in ("constant", "cosine"):
        fail("train.schedule", f"must be 'constant' or 'cosine', got {t.schedule!r}")
    if not config.methods:
        fail("methods", "must list at least one method")
    names = [m.name for m in config.methods]
    if len(set(names)) != len(names):
        fail("methods", f"have repeated names: {names}")
    for k, m in enumerate(config.methods):
        where = f"methods[{k}]"
        if m.coupling not in COUPLINGS:
            fail(f"{where}.coupling", f"must be one of {', '.join(COUPLINGS)}, got {m.coupling!r}")
        if m.coupling == "ot":
            if m.coupling_size is None or m.coupling_size < t.batch_size:
                fail(f"{where}.coupling_size", f"must be an int >= train.batch_size ({t.batch_size}) for an OT coupling")
            if (m.eps is None) == (m.target_entropy is None):
                fail(where, "needs exactly one of 'eps' and 'target_entropy' for an OT coupling")
        if m.eps == 0 and m.coupling != "semidiscrete":  # eps = 0 is the hard semidiscrete assignment only
            fail(f"{where}.eps", f"must be > 0 for the {m.coupling!r} coupling, got {m.eps}")
    e = config.eval
    if not e.steps:
        fail("eval.steps", "must be a non-empty list of step counts >= 1")
    if e.divergence not in ("exact", "hutchinson", "auto"):
        fail("eval.divergence", f"must be exact, hutchinson or auto, got {e.divergence!r}")
