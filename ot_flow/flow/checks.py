"""Argument checks of the flow layer (ODE integration, metrics, pair streams, the trainer, NSGF's
pool), in one place so that every function words a bad argument the same way: a ValueError
that names the argument as ``argument 'name'`` and says what it got."""

import math

import torch

from ot_flow.solvers import validation

__all__ = ["check_batch", "check_callable", "check_choice", "check_data", "check_int", "check_module", "check_number",
           "check_output", "check_points", "check_source"]


def check_callable(name, fn):
    if not callable(fn):
        raise ValueError(f"argument '{name}' must be callable, got {type(fn).__name__}")


def check_module(name, module):
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"argument '{name}' must be a torch.nn.Module, got {type(module).__name__}")


def check_batch(name, x):
    """A finite floating-point tensor (B, *event_shape) with B >= 1."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"argument '{name}' must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"argument '{name}' must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"argument '{name}' must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"argument '{name}' contains NaN or Inf")


def check_points(name, x):
    """A tensor of points (n, *event_shape)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"argument '{name}' must be a tensor of points (n, *event_shape), got {shape}")


def check_int(name, value, low, optional=False):
    return validation.integer(name, value, low, optional)


def check_number(name, value, *, above=None, at_least=None, below=None):
    """A finite real number (not a bool), optionally > ``above``, >= ``at_least`` and < ``below``;
    returned as a float."""
    bounds = [(op, bound) for op, bound in ((">", above), (">=", at_least), ("<", below)) if bound is not None]
    holds = {">": lambda v, b: v > b, ">=": lambda v, b: v >= b, "<": lambda v, b: v < b}
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or not all(holds[op](value, bound) for op, bound in bounds)):
        wanted = " and ".join(f"{op} {bound:g}" for op, bound in bounds) + " and finite" if bounds else "a finite number"
        raise ValueError(f"argument '{name}' must be {wanted}, got {value!r}")
    return float(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"argument '{name}' must be one of {tuple(choices)}, got {value!r}")


def check_output(name, out, shape):
    """What the callable argument ``name`` returned must be a tensor of ``shape``."""
    if not isinstance(out, torch.Tensor) or out.shape != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"argument '{name}' must return a tensor of shape {tuple(shape)}, got {got}")


def check_source(source):
    if not callable(source):
        raise ValueError(f"argument 'source' must be a callable (n, generator) -> Tensor, got {type(source).__name__}")


def check_data(data):
    if not isinstance(data, torch.Tensor) or data.dim() < 2 or data.shape[0] == 0 or not data.is_floating_point():
        raise ValueError("argument 'data' must be a non-empty floating-point tensor (N, ...) of points")
