"""The working frame of the solvers: the clouds moved to their common centre, in their own unit.

Both costs are C_ij = alpha_i + beta_j - <x_i, y_j> (costs.py), and the kernels work on the dot
products. That form is not invariant to a common translation where the cost is: for clouds far
from the origin (pixel values, embeddings) alpha, beta and <x, y> are huge and cancel, and float32
keeps nothing of their differences. So the solvers work on

    x' = (x - c) / s,   y' = (y - c) / s,

c the mean of the two clouds' means (rounded to a grid of s / 256, so that clouds centred already
keep c = 0 and their exact points) and s a power of two near their RMS distance to c (scaling by a
power of two is exact: it only keeps dot products and potentials inside the dtype's range). Then

    C_ij = s^2 C'_ij + k,   C'_ij = alpha'_i + beta'_j - <x'_i, y'_j>,

with alpha'_i = |x'_i|^2 / 2, k = 0 for "sqeuclidean" and alpha'_i = -<x'_i, c> / s, k = -|c|^2 for
"dot": the coupling of C at eps is that of C' at eps / s^2, and its potentials are
f = s^2 f' + k / 2, g = s^2 g' + k / 2.
"""

import functools
import math
from dataclasses import dataclass

import torch

__all__ = ["Frame"]

_CENTRE_GRID = 256  # c is a multiple of s / _CENTRE_GRID
# Points whose RMS distance to their centre is below this fraction of the centre's size are one
# point: what is left is float64 rounding of the mean.
_ONE_POINT = 1e-13


@dataclass(frozen=True)
class Frame:
    center: torch.Tensor  # (d,) float64
    scale: float  # s, a power of two
    cost: str

    @staticmethod
    def of(clouds, cost, reduce=None):
        """The frame of weighted clouds [(points, weights summing to 1), ...]; ``reduce`` sums a
        float64 tensor over the ranks that hold shards of the clouds (the sharded solver), one
        function for all clouds or a list of one per cloud."""
        reduces = reduce if isinstance(reduce, (list, tuple)) else [reduce] * len(clouds)
        reduces = [r or (lambda t: t) for r in reduces]
        clouds = [(p.detach().double(), w.double()) for p, w in clouds]
        center = torch.stack([r(w @ p) for (p, w), r in zip(clouds, reduces)]).mean(0)
        spreads = [r((w @ (p - center).square().sum(1)).reshape(1)) for (p, w), r in zip(clouds, reduces)]
        rms = math.sqrt(max(float(torch.cat(spreads).mean()), 0.0))
        one_point = rms <= _ONE_POINT * float(center.abs().max())  # any unit will do
        scale = 2.0 ** round(math.log2(rms)) if rms > 0 and math.isfinite(rms) and not one_point else 1.0
        grid = scale / _CENTRE_GRID
        center = torch.round(center / grid) * grid
        return Frame(center, scale, cost)

    @functools.cached_property
    def shifted(self):
        """Whether c != 0 (else the points only scale, exactly); read once, then kept (every
        ``points`` call asks)."""
        return bool((self.center != 0).any())

    @property
    def unit(self):
        """s^2, the unit of costs, potentials and eps in the working frame (a float: inf, not an
        error, past float64's range)."""
        return self.scale * self.scale

    def points(self, x, dtype=None):
        """x' = (x - c) / s in ``dtype`` (default x's; x itself when the frame is the identity)."""
        x = x.detach()
        dtype = dtype or x.dtype
        if not self.shifted:
            x = x.to(dtype)
            return x if self.scale == 1.0 else x * (1.0 / self.scale)  # exact: a power of two
        return ((x.double() - self.center.to(x.device)) / self.scale).to(dtype)

    def offsets(self, xw):
        """alpha' (float64) of working points x' (``points``)."""
        x64 = xw.double()
        if self.cost == "sqeuclidean":
            return 0.5 * x64.square().sum(1)
        return -(x64 @ self.center.to(x64.device)) / self.scale

    @property
    def constant(self):
        """k in C = s^2 C' + k."""
        return 0.0 if self.cost == "sqeuclidean" else -float(self.center.square().sum())

    def potential_out(self, p_dot, offsets):
        """A potential of C (float64) from the working dot-cost potential p_dot of C'."""
        return self.unit * (p_dot.double() + offsets) + 0.5 * self.constant

    def potential_in(self, p, offsets):
        """The working dot-cost potential (float64) of a potential p of C."""
        return (p.double() - 0.5 * self.constant) / self.unit - offsets

    def point_out(self, xw):
        """x = s x' + c, for points computed in the working frame (barycentres)."""
        if not self.shifted:
            return xw if self.scale == 1.0 else xw * self.scale
        return (xw.double() * self.scale + self.center.to(xw.device)).to(xw.dtype)
