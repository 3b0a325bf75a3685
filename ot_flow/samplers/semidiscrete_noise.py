"""NoiseSource: where a semidiscrete sampler's noise comes from, and the fit's own stream of it.

Pairing draws independent noise (``SemidiscreteSampler.noise``, from a caller's generator). The
fit draws from a stream of its own that ``state_dict`` records and a resumed fit continues: the
sampler's seeded generator, or, in few features with the default standard normal source, a
scrambled Sobol sequence (quasi_normal.py), whose counts per cell scatter less than independent
draws', so the fit's estimates of each point's share are less noisy.
"""

import torch

from ot_flow import distributed
from ot_flow.samplers.quasi_normal import QuasiNormal
from ot_flow.solvers import host_transfer

__all__ = ["NoiseSource"]

# quasi_random="auto" draws the fit's noise from a scrambled Sobol sequence up to this many
# features: the gain falls with the dimension (chi2 at equal steps x0.5 in d = 2, x0.66 in d = 8,
# x0.9 in d = 64; quasi_normal.py) while the sequence's cost, drawn on the CPU, grows with it
# (4096 points: 0.14 ms in d = 2, 0.55 ms in d = 16, 43 ms in d = 64; randn 0.24 ms in d = 16).
_QUASI_RANDOM_MAX_DIM = 16


class NoiseSource:
    """Flat noise (n, dim) of ``dtype`` on ``device``: from ``source(n, generator)``, shaped like
    the data or flat, or standard normal (``source`` None). ``generator`` and ``sobol`` (None
    unless ``quasi_random``) are the fit's stream, seeded by ``seed``."""

    def __init__(self, source, quasi_random, dim, dtype, device, seed):
        if source is not None and not callable(source):
            raise ValueError("argument 'source' must be a callable (n, generator) -> Tensor, "
                             f"got {type(source).__name__}")
        self.source, self.dim, self.dtype, self.device = source, dim, dtype, device
        self.quasi_random = _resolve_quasi_random(quasi_random, source, dim)
        self.generator = torch.Generator().manual_seed(seed)
        self.sobol = QuasiNormal(dim, distributed.derived_seed(seed, 7)) if self.quasi_random else None

    def draw(self, n, generator):
        """n flat noise points as the source gives them (a ValueError naming 'source' when it
        returns another number of rows or of features)."""
        if self.source is None:
            noise = torch.randn(n, self.dim, generator=generator, dtype=self.dtype)
        else:
            noise = self.source(n, generator)
            if not isinstance(noise, torch.Tensor) or noise.shape[0] != n:
                raise ValueError(f"argument 'source': source(n, generator) must return a tensor with n = {n} rows")
        noise = noise.reshape(n, -1)
        if noise.shape[1] != self.dim:
            raise ValueError(f"argument 'source': noise has {noise.shape[1]} features per point, data {self.dim}")
        return host_transfer.to_device(noise, self.device, self.dtype)

    def stream_state(self):
        """Where the fit's stream stands: (the generator's state, the Sobol position or None)."""
        return self.generator.get_state(), None if self.sobol is None else self.sobol.position

    def set_stream_state(self, state):
        """Back to a ``stream_state()`` (of a stream with the same ``quasi_random``)."""
        generator_state, position = state
        self.generator.set_state(generator_state)
        if self.sobol is not None:
            self.sobol.seek(position)


def _resolve_quasi_random(quasi_random, source, dim):
    if quasi_random == "auto":
        return source is None and dim <= _QUASI_RANDOM_MAX_DIM
    if not isinstance(quasi_random, bool):
        raise ValueError(f"argument 'quasi_random' must be True, False or 'auto', got {quasi_random!r}")
    if quasi_random and source is not None:
        raise ValueError("argument 'quasi_random': a quasi-random fit draws standard normal noise, "
                         "so it cannot be combined with a 'source'")
    if quasi_random and dim > QuasiNormal.max_dim:
        raise ValueError(f"argument 'quasi_random': the Sobol sequence has at most {QuasiNormal.max_dim} "
                         f"dimensions, the data {dim} features")
    return quasi_random
