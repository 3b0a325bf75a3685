"""What every task is: a source to flow from (N(0, I)), a target to flow to, the finite data set a
run trains on, held-out points, and the true OT map where one is known; and the seeded random
streams and argument checks that the tasks of ``tasks`` and ``datasets`` share.

Every draw goes through a torch.Generator: the tasks' own data come from streams keyed on `seed`, and
the samplers take the caller's generator, so that runs repeat exactly and never touch the global RNG.
"""

import math

import numpy as np
import torch

from ot_flow.flow.checks import check_int

__all__ = ["Task"]

# One independent random stream per purpose, so that e.g. changing num_train does not move the test set.
_STREAMS = ("params", "fit", "train", "test", "split")


def _generator(seed, stream):
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"argument 'seed' must be a non-negative int, got {seed!r}")
    state = np.random.SeedSequence([seed, _STREAMS.index(stream)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _count(name, value, minimum=1):
    return check_int(name, value, minimum)


def _check_generator(generator):
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"argument 'generator' must be a torch.Generator, got {type(generator).__name__}")
    return generator


class Task:
    """One experiment's data. Subclasses set `train_data` and `test_data` (tensors (N, *shape)) and,
    where the OT map from the source is known, `test_source` with test_data = true_map(test_source)."""

    is_image = False
    # Nats added to the mean -log p(x) before dividing by dim * log 2, so that bits per dimension come
    # out in the data's own units rather than the model's.
    log_scale = 0.0
    test_source = None

    def __init__(self, name, shape):
        self.name = name
        self.shape = tuple(shape)

    @property
    def dim(self):
        return math.prod(self.shape)

    def sample_source(self, n, generator):
        """n draws of N(0, I), float32, shape (n, *shape)."""
        n = _count("n", n)
        return torch.randn((n, *self.shape), generator=_check_generator(generator))

    def sample_target(self, n, generator):
        """n fresh target points, float32, shape (n, *shape)."""
        raise NotImplementedError

    def true_map(self, x0):
        """The OT map from the source applied to x0, or None where none is known."""
        return None

    def _check_points(self, name, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"argument '{name}' must be a floating-point torch.Tensor, got {kind}")
        if x.dim() != 1 + len(self.shape) or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"argument '{name}' must have shape (n, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(x.shape)}")
        return x
