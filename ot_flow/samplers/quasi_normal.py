"""QuasiNormal: standard normal noise from a scrambled Sobol sequence, with a resumable position.

A semidiscrete fit estimates each point's share of the noise from the counts of the noise that
lands in its cell. With independent draws those counts carry multinomial noise; consecutive
blocks of a scrambled Sobol sequence fill the cube evenly, so the counts of a cell over many
steps scatter less than a Poisson count would. Measured on the fit (N = 10^4, batch 4096,
chi2 on fresh independent noise at equal steps): half the chi2 in d = 2, two thirds in d = 8,
0.9 of it in d = 64, where the sequence's balance no longer reaches cells this small.
"""

import torch

from ot_flow.solvers import host_transfer

__all__ = ["QuasiNormal"]

# ndtri(0) = -inf: keep the uniforms off the cube's faces (the sequence has 2^-30 resolution).
_EDGE = 2.0 ** -40


class QuasiNormal:
    """Draws (n, dim) standard normal points, the inverse normal CDF of a scrambled Sobol
    sequence seeded with ``seed``; ``position`` counts the points drawn so far and ``seek``
    returns to any position, so a stream can be rolled back or resumed from a checkpoint."""

    max_dim = torch.quasirandom.SobolEngine.MAXDIM

    def __init__(self, dim, seed):
        if not 1 <= dim <= self.max_dim:
            raise ValueError(f"QuasiNormal: dim must lie in [1, {self.max_dim}], got {dim}")
        self._engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=int(seed))

    @property
    def position(self):
        return self._engine.num_generated

    def seek(self, position):
        if position < self.position:
            self._engine.reset()
        self._engine.fast_forward(position - self.position)

    def draw(self, n, dtype=torch.float32, device=None):
        u = host_transfer.to_device(self._engine.draw(n, dtype=torch.float64), device or "cpu")
        return torch.special.ndtri(u.clamp_(_EDGE, 1 - _EDGE)).to(dtype)
