"""The standardised frame of a semidiscrete sampler: where its fit and its searches work.

The data are centred at their weighted mean and divided by their spread, z_j = (y_j - c) / s,
and noise from a custom ``source`` likewise by its own mean and spread (the default standard
normal is left as it is). For both costs this changes C(x, y_j) only by a positive factor and by
terms in x alone or in j alone, which the potential absorbs, so the assignments are those of the
data as given; but the scores <x, z_j> + h_j keep their float32 precision however far the data
sit from the origin (in the data as given, |y_j|^2 / 2 and <x, y_j> cancel: 200 points offset by
100 lost all but 2-7 of them), and every length the fit uses (step sizes, score gaps, eps) is in
the data's own unit. The start, g = 0 in that frame, pairs each noise point with its nearest
standardised data point. Data moved as y -> a y + t (a > 0), with the noise fixed, therefore give
the same fit up to rounding; so does a source moved with them.

This is not the Sinkhorn solvers' frame (solvers/frame.py: one centre for both clouds, a
power-of-two unit): here the noise and the data have a frame each, measured once per sampler.
"""

import math
from typing import NamedTuple

import torch

from ot_flow import distributed
from ot_flow.solvers import costs, host_transfer

__all__ = ["FRAME_COST", "StandardisedFrame", "StandardisedData", "measure_data_frame", "measure_noise_frame",
           "standardise_data", "measure_spread"]

# The fit's own problem in the frame: squared-Euclidean, whose potential 0 is the nearest-point
# assignment (the coupling is the same for both costs; see the module notes).
FRAME_COST = "sqeuclidean"
# Rows standardised at a time (float64 scratch of this many rows).
_FRAME_ROWS = 65536
# Draws of a custom source that fix its frame (mean and spread): the frame only has to bring the
# noise near the origin at its own scale, so the sampling error of 1 / sqrt(4096) does no harm.
_NOISE_FRAME_SAMPLES = 4096


class StandardisedFrame(NamedTuple):
    """z = (y - center) / scale for the data, and (x - noise_center) / noise_scale for the noise."""
    center: torch.Tensor  # (D,) float64, CPU
    scale: float
    noise_center: torch.Tensor  # (D,) float64, CPU
    noise_scale: float

    @property
    def unit(self):
        """Scores of the data as given per score of the frame: C(x, y) = unit C(x~, z) + terms
        in x alone and in j alone."""
        return self.scale * self.noise_scale

    def standardise_noise(self, x):
        """Noise (n, D) into the frame, in its own dtype (float64 arithmetic: a source far from
        the origin would cancel like the data)."""
        return ((x.double() - host_transfer.to_device(self.noise_center, x.device)) / self.noise_scale).to(x.dtype)


class StandardisedData(NamedTuple):
    """The data in a frame: what the searches read, and what converts and fingerprints a potential."""
    points: torch.Tensor  # (N, D) z_j, in the data's floating dtype, where the search runs
    # The potential of the data as given is unit * g + potential_shift (g the frame's potential):
    # g_j - |z_j|^2 / 2 is the bias of the frame's scores <x~, z_j>, and
    # <x, y_j> = unit <x~, z_j> + scale <noise_center, z_j> + (terms in x alone).
    potential_shift: torch.Tensor  # (N,) float64, CPU
    projections: torch.Tensor  # (N,) float64, CPU: z_j along a fixed direction, for the fingerprint
    # (N,) float64 beside the points: |z_j|^2 / 2 of the stored points, the per-point half of every
    # search's bias (semidiscrete.dot_bias), once instead of a float64 copy of the data per step
    offsets: torch.Tensor


def _row_blocks(n):
    return [(r0, min(n, r0 + _FRAME_ROWS)) for r0 in range(0, n, _FRAME_ROWS)]


def _total_vector(values, process_group):
    """A float64 vector summed over the ranks (as it is without a group)."""
    return values.double() if process_group is None else distributed.all_sum(values, process_group)


def measure_data_frame(flat, weights, total_points, process_group=None):
    """(weighted mean, spread) of the data (N, D) over all ranks, float64: the spread is the root
    mean square distance to the mean per feature, in two passes (one pass, E|y|^2 - |E y|^2,
    would cancel as badly as the scores it is meant to save). ``weights`` sum to 1 (to 1 per
    class for a conditional sampler); ``total_points`` counts the points over all ranks."""
    dim = flat.shape[1]
    w = weights.to(flat.device)
    total = torch.zeros(dim + 1, dtype=torch.float64, device=flat.device)
    for r0, r1 in _row_blocks(flat.shape[0]):
        total[:dim] += w[r0:r1] @ flat[r0:r1].double()
        total[dim] += w[r0:r1].sum()
    total = _total_vector(total, process_group).cpu()
    center = total[:dim] / total[dim]
    squares = torch.zeros(2, dtype=torch.float64, device=flat.device)
    for r0, r1 in _row_blocks(flat.shape[0]):
        d2 = (flat[r0:r1].double() - center.to(flat.device)).square().sum(1)
        squares += torch.stack([w[r0:r1] @ d2, d2.sum()])
    squares = _total_vector(squares, process_group).cpu()
    # The weighted spread; the points' own when the mass sits on one place; any unit when
    # every point is the same (then every score is too).
    for spread in (squares[0] / total[dim], squares[1] / total_points):
        if spread > 0:
            return center, math.sqrt(float(spread) / dim)
    return center, 1.0


def measure_noise_frame(draw, dim, seed):
    """(mean, spread) of the noise: exactly (0, 1) for the default standard normal (``draw`` None);
    a custom source's from a fixed sample of it, ``draw(n, generator)`` of flat points seeded by
    ``seed`` (the same on every rank)."""
    if draw is None:
        return torch.zeros(dim, dtype=torch.float64), 1.0
    gen = torch.Generator().manual_seed(distributed.derived_seed(seed, 13))
    x = draw(_NOISE_FRAME_SAMPLES, gen).double().cpu()
    center = x.mean(0)
    spread = float((x - center).square().mean())
    return center, math.sqrt(spread) if spread > 0 else 1.0


def standardise_data(flat, frame, cost, where, pinned=False):
    """The data (N, D) in ``frame``, their points stored on ``where`` in the data's dtype (in
    page-locked host memory when ``pinned``), with the shift that converts the frame's potential
    to one of ``cost`` on the data as given."""
    n, dim = flat.shape
    points = torch.empty((n, dim), dtype=flat.dtype, device=where, pin_memory=pinned)
    shift = torch.empty(n, dtype=torch.float64)
    probe = torch.randn(dim, generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
    probe = (probe / probe.norm()).to(flat.device)
    projections = torch.empty(n, dtype=torch.float64, device=flat.device)
    offsets = torch.empty(n, dtype=torch.float64, device=where)
    center, noise_center = frame.center.to(flat.device), frame.noise_center.to(flat.device)
    for r0, r1 in _row_blocks(n):
        y = flat[r0:r1].double()
        z = (y - center) / frame.scale
        points[r0:r1] = z.to(where, flat.dtype)
        offsets[r0:r1] = costs.cost_offsets(points[r0:r1].double(), FRAME_COST)  # of the stored, rounded z
        block_shift = costs.cost_offsets(y, cost) - frame.scale * (z @ noise_center) \
            - frame.unit * costs.cost_offsets(z, FRAME_COST)
        shift[r0:r1] = block_shift.cpu()
        projections[r0:r1] = z @ probe
    return StandardisedData(points, shift, projections.cpu(), offsets)


def measure_spread(x, points, weights, cost, generator, offset, total, process_group=None):
    """std(C) between the noise ``x`` and the standardised ``points`` (this rank's, global indices
    from ``offset`` of ``total``) in the frame: the unit of a relative eps."""
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64, device=x.device)
    # A subsample of the data; drawn over all shards' global indices so that every rank
    # (and one process holding everything) uses the same points and generator state.
    rows = torch.randperm(total, generator=generator)[:16384]
    rows = rows[(rows >= offset) & (rows < offset + points.shape[0])] - offset
    # Renormalised to sum to 1 over the subsample (a conditional sampler's weights sum to 1
    # per class, so to the number of classes over all points).
    mass = weights[rows].sum()
    b = weights[rows] / (mass if process_group is None else distributed.all_sum(mass.reshape(1), process_group)[0])
    reduce_y = None if process_group is None else (lambda t: distributed.all_sum(t, process_group))
    # The user's cost between the standardised clouds: for centred data of unit spread the
    # std(C) between noise and data, and the same whatever the data's offset and scale.
    y = points[rows.to(points.device)].to(x.device, x.dtype)
    spread = costs.cost_std(x, y, a, b.to(x.device), cost, reduce_y=reduce_y)
    return spread if spread > 0 else 1.0
