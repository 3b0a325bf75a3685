"""Solvers run in the points' own precision, whatever autocast region they are called from.

Mixed-precision training wraps the model in ``torch.autocast``; the samplers are called inside
that region, where a float32 matmul would come back in bfloat16 (the cached cost path, the
moments of std(C)) and the dual potentials would lose the digits they live on.
"""

import functools

import torch

__all__ = ["autocast_off"]


def autocast_off(fn):
    """Runs ``fn`` with autocast disabled on the CPU and on CUDA."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*args, **kwargs)

    return wrapper
