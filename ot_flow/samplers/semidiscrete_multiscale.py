"""The coarse-to-fine start of a semidiscrete fit.

The semi-dual's Hessian is a graph Laplacian over neighbouring cells, so per-point steps move
mass across the data set only slowly (the slowest mode relaxes in ~N^(2/d) steps), while a
potential fitted on a subsample N/8 carries exactly that long-range transport. The subsample is
fitted first (recursively, down to about one batch of points), its potential is extended to every
point to first order (solvers/semidiscrete.extend_potential), and the full fit only corrects
locally.

It works on the sampler's own state (its standardised points, frame and potential): it is part
of the sampler's fit, kept apart for being a concept of its own.
"""

import math

import torch

from ot_flow import distributed
from ot_flow.samplers.semidiscrete_cells import frame_cell_means
from ot_flow.samplers.semidiscrete_frame import FRAME_COST
from ot_flow.solvers import semidiscrete

__all__ = ["multiscale_start"]

# Each level fits a random 1/_COARSENING of the points (per class), for 1/_COARSENING of the
# steps (at least _MIN_COARSE_STEPS, at most all), down to a level no larger than the batch.
_COARSENING = 8
_MIN_COARSE_STEPS = 200


def multiscale_start(sampler, num_steps, batch_size, progress, settings):
    """Fits a random 1/_COARSENING of ``sampler``'s points (a nested sampler, whose ``fit`` does
    the same in turn, with ``settings``, the fit's other arguments) and sets the sampler's
    potential to its extension to all points. Nothing is drawn from the fit's own generator, so a
    fit that is interrupted here and restarted ends where an uninterrupted one does."""
    if sampler._largest_class() <= batch_size:
        sampler.warm_started = True
        return
    gen = torch.Generator().manual_seed(distributed.derived_seed(sampler.seed, 1 + sampler.total, 8))
    flat = sampler._flat
    centers, center_labels, nearest = [], [], torch.empty(flat.shape[0], dtype=torch.long)
    for label, index in sampler.groups:
        points = sampler._points(index)
        rows = torch.arange(points.shape[0]) if index is None else index
        keep = rows[torch.randperm(len(rows), generator=gen)[:math.ceil(len(rows) / _COARSENING)]].sort().values
        nearest[rows] = keep[semidiscrete.nearest(points, sampler._points(keep).to(sampler.device),
                                                  chunk_size=sampler.chunk_size, precision=sampler.precision)]
        nearest[keep] = keep  # a centre is its own (float32 scores can tie close neighbours)
        centers.append(keep)
        center_labels.append(torch.full((len(keep),), -1 if label is None else label, dtype=torch.long))
    centers, order = torch.cat(centers).sort()
    # Each point's weight goes to its centre, so the coarse measure is the data's, moved by at
    # most the distance to the nearest centre (and each class keeps its mass).
    slot = torch.searchsorted(centers, nearest)
    weights = torch.zeros(len(centers), dtype=torch.float64).index_add_(0, slot, sampler.weights)
    labels = None
    if sampler.conditional:  # the weights sum to 1 per class: to 1 over all, for the constructor
        labels, weights = torch.cat(center_labels)[order], weights / len(sampler.groups)
    coarse = type(sampler)(  # a SemidiscreteSampler, whose module imports this one
        flat[centers.to(flat.device)], sampler.eps, sampler.cost,
        weights=weights.to(flat.device), labels=labels, relative_eps=sampler.relative_eps,
        source=sampler.source, quasi_random=sampler.quasi_random, device=sampler.device,
        chunk_size=sampler.chunk_size, stream_data=sampler.stream_data, seed=distributed.derived_seed(sampler.seed, len(centers)),
        process_group=sampler.group, precision=sampler.precision)
    coarse._set_frame(sampler._frame)  # its potential, in this frame, extends to these points
    steps = min(num_steps, max(_MIN_COARSE_STEPS, num_steps // _COARSENING))
    coarse.fit(steps, batch_size, progress=progress, **settings)
    barycenters, _ = frame_cell_means(coarse, min(1_000_000, max(65_536, 16 * coarse.total)))
    g = semidiscrete.extend_potential(sampler._search, coarse._search, coarse._current(), barycenters,
                                      slot, FRAME_COST)
    sampler.g, sampler.warm_started = g.cpu(), True
