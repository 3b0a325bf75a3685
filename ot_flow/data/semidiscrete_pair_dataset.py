"""SemidiscretePairDataset: an endless stream of noise minibatches paired with data points by a
fitted SemidiscreteSampler: no coupling to solve per batch, one MIPS per batch (SD-FM).

Every minibatch is a pure function of (seed, epoch, rank, batch index): its noise, its labels and
its soft-assignment draws come from a generator seeded by them alone, so

* with ``num_workers > 0`` worker w takes the batches w, w + workers, ..., and the set of
  batches is the one ``num_workers=0`` yields;
* ranks draw different, reproducible batches;
* a consumer can start at any batch (``batch(index)``), as a resumed training run does.
"""

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ot_flow.distributed import derived_seed, rank_and_world
from ot_flow.samplers.semidiscrete_sampler import SemidiscreteSampler
from ot_flow.solvers import validation

__all__ = ["SemidiscretePairDataset"]


class SemidiscretePairDataset(IterableDataset):
    """Minibatches ``(x0, x1)`` (or ``(x0, x1, labels)`` for a conditional sampler) for a
    ``DataLoader(dataset, batch_size=None)``.

    Args:
        sampler: a fitted :class:`ot_flow.SemidiscreteSampler`.
        batch_size: pairs per minibatch.
        num_batches: minibatches per epoch (per rank, shared among workers); None is endless.
        seed: base of the noise seeds; ``set_epoch`` moves to fresh noise.
        rank, world_size: this process's share (default from torch.distributed, else 0, 1).
        source: where x0 comes from: None (default) is ``sampler.noise``, the noise the
            potential was fitted for; a callable ``source(n, generator) -> Tensor`` draws from
            it instead (it must follow the same distribution for the pairs to carry the data's
            weights).

    A conditional sampler's labels are drawn with the classes' share of the data.
    """

    def __init__(self, sampler, batch_size, *, num_batches=None, seed=0, rank=None, world_size=None, source=None):
        super().__init__()
        if not isinstance(sampler, SemidiscreteSampler):
            raise ValueError(f"argument 'sampler' must be an ot_flow.SemidiscreteSampler, got {type(sampler).__name__}")
        sampler.require_fitted("argument 'sampler'")  # here, not in a DataLoader worker later
        validation.integer("batch_size", batch_size, 1)
        validation.integer("num_batches", num_batches, 1, optional=True)
        if source is not None and not callable(source):
            raise ValueError(f"argument 'source' must be None or a callable (n, generator) -> Tensor, "
                             f"got {type(source).__name__}")
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.sampler, self.batch_size, self.num_batches, self.seed = sampler, batch_size, num_batches, int(seed)
        self.source = source
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        if self.num_batches is None:
            raise TypeError("SemidiscretePairDataset with num_batches=None is endless and has no length")
        return self.num_batches

    def __iter__(self):
        worker = get_worker_info()
        index, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        while self.num_batches is None or index < self.num_batches:
            yield self.batch(index)
            index += step

    def batch(self, index):
        """Minibatch ``index`` of the current epoch on this rank."""
        gen = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch, self.rank, index))
        sampler = self.sampler
        labels = None
        if sampler.conditional:
            sizes = torch.tensor([len(members) for _, members in sampler.groups], dtype=torch.float64)
            pick = torch.multinomial(sizes, self.batch_size, replacement=True, generator=gen)
            labels = torch.tensor([label for label, _ in sampler.groups])[pick]
        if self.source is None:
            x0 = sampler.noise(self.batch_size, gen)
        else:
            x0 = self.source(self.batch_size, gen).to(sampler.device, sampler.dtype)
        x0, x1 = sampler.pair(x0, labels, generator=gen)
        return (x0, x1) if labels is None else (x0, x1, labels.to(x0.device))
