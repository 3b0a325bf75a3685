"""The cells of a semidiscrete sampler's potential, measured on fresh noise.

Point j's cell is the noise that the potential hands to j. How much noise each cell receives
against the point's weight is the fit's measure of progress (the chi-square marginal error, which
the fit's checks and ``target_chi2`` read); where it lies, the cell means, is the first-order
information the multiscale start extends a coarse potential with. Both assign fresh noise, never
the fit's own: the fit's batches are no measure, since the potential reacts to them as it goes.
"""

import torch

from ot_flow import distributed
from ot_flow.samplers.semidiscrete_frame import FRAME_COST
from ot_flow.solvers import host_transfer, semidiscrete

__all__ = ["marginal_error", "frame_cell_means"]


def marginal_error(sampler, num_samples, batch_size, seed):
    """Chi-square marginal error of an unconditional sampler's hard assignments of
    ``num_samples`` fresh noise points drawn with ``seed`` (the multinomial noise removed)."""
    if sampler.conditional:
        raise ValueError("marginal_error: a conditional sampler has one marginal per class")
    # Counted on the device, read once: the fit's checks run on a GPU without waiting per batch.
    counts = torch.zeros(sampler.weights.shape[0], dtype=torch.float64, device=sampler.device)
    for _, local, mine in _hard_assignments(sampler, num_samples, batch_size, seed):
        counts.index_add_(0, local, mine.to(counts.dtype))
    return semidiscrete.marginal_chi2(counts, sampler.weights, num_samples, sampler.group)


def frame_cell_means(sampler, num_samples, batch_size=8192, seed=1):
    """(means (N, D) float64 in the standardised frame, counts (N,)) of the noise the current
    potential assigns to each of this process's points, ``num_samples`` draws per class; a point
    that received none has mean 0."""
    counts = torch.zeros(sampler.weights.shape[0], dtype=torch.float64)
    sums = torch.zeros((counts.shape[0], sampler._search.shape[1]), dtype=torch.float64)
    for x, local, mine in _hard_assignments(sampler, num_samples, batch_size, seed):
        mine = mine.cpu()
        local = local.cpu()[mine]
        sums.index_add_(0, local, x.cpu().double()[mine])
        counts += torch.bincount(local, minlength=counts.shape[0]).double()
    return sums / counts.clamp_min(1)[:, None], counts


def _hard_assignments(sampler, num_samples, batch_size, seed):
    """Yields, on the sampler's device, (noise in the frame, this process's local index of each
    row's point, clamped to its range, mask of the rows that went to this process's points) for
    ``num_samples`` fresh noise points per class, drawn with ``seed`` and assigned with the
    current potential by hard assignment."""
    s = sampler
    gen = torch.Generator().manual_seed(distributed.derived_seed(s.seed, seed, 12345))
    # Where the search runs, once (host copies per batch would wait for the GPU).
    g, weights = host_transfer.to_device(s._current(), s.device), host_transfer.to_device(s.weights, s.device)
    n_local = s.weights.shape[0]
    for _, index in s.groups:
        index_d = None if index is None else index.to(s.device)
        points, offsets = s._points(index), s._offsets(index)  # a class's: gathered once, not per batch
        g_c, b_c = (g, weights) if index is None else (g[index_d], weights[index_d])
        done = 0
        while done < num_samples:
            n = min(batch_size, num_samples - done)
            x = s._frame_noise(n, gen)
            idx = semidiscrete.assign(x, points, g_c, b_c, 0.0, FRAME_COST, chunk_size=s.chunk_size,
                                      process_group=s.group, offset=s.offset, precision=s.precision,
                                      stream=s.stream_data, y_offsets=offsets)
            local = idx - s.offset if index is None else index_d[idx]
            mine = (local >= 0) & (local < n_local)
            yield x, local.clamp(0, n_local - 1), mine
            done += n
