"""SemidiscretePairDataset: an endless stream of noise minibatches paired with data points by a
fitted SemidiscreteSampler: no coupling to solve per batch, one MIPS per batch (SD-FM).

The noise of a batch comes from a generator seeded by (seed, epoch, rank, worker), so workers
and ranks draw different, reproducible batches.
"""

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ot_flow.distributed import derived_seed, rank_and_world
from ot_flow.samplers.semidiscrete_sampler import SemidiscreteSampler

__all__ = ["SemidiscretePairDataset"]


class SemidiscretePairDataset(IterableDataset):
    """Minibatches ``(x0, x1)`` (or ``(x0, x1, labels)`` for a conditional sampler) for a
    ``DataLoader(dataset, batch_size=None)``.

    Args:
        sampler: a fitted :class:`ot_flow.SemidiscreteSampler`.
        batch_size: pairs per minibatch.
        num_batches: minibatches per epoch (per rank and worker share); None is endless.
        seed: base of the noise seeds; ``set_epoch`` moves to fresh noise.
        rank, world_size: this process's share (default from torch.distributed, else 0, 1).

    A conditional sampler's labels are drawn with the classes' share of the data.
    """

    def __init__(self, sampler, batch_size, *, num_batches=None, seed=0, rank=None, world_size=None):
        super().__init__()
        if not isinstance(sampler, SemidiscreteSampler):
            raise ValueError(f"argument 'sampler' must be an ot_flow.SemidiscreteSampler, got {type(sampler).__name__}")
        sampler._require_fitted("argument 'sampler'")  # here, not in a DataLoader worker later
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"argument 'batch_size' must be an int >= 1, got {batch_size!r}")
        if num_batches is not None and (not isinstance(num_batches, int) or num_batches < 1):
            raise ValueError(f"argument 'num_batches' must be None or an int >= 1, got {num_batches!r}")
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.sampler, self.batch_size, self.num_batches, self.seed = sampler, batch_size, num_batches, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        if self.num_batches is None:
            raise TypeError("SemidiscretePairDataset with num_batches=None is endless and has no length")
        return self.num_batches

    def __iter__(self):
        worker = get_worker_info()
        worker_id, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        gen = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch, self.rank, worker_id))
        sampler = self.sampler
        data = sampler.data
        count = 0
        total = None if self.num_batches is None else len(range(worker_id, self.num_batches, workers))
        while total is None or count < total:
            labels = None
            if sampler.conditional:
                sizes = torch.tensor([len(index) for _, index in sampler.groups], dtype=torch.float64)
                pick = torch.multinomial(sizes, self.batch_size, replacement=True, generator=gen)
                labels = torch.tensor([label for label, _ in sampler.groups])[pick]
            if sampler.source is None:
                x0 = torch.randn((self.batch_size, *data.shape[1:]), generator=gen, dtype=sampler._flat.dtype)
            else:
                x0 = sampler.source(self.batch_size, gen)
            x0 = x0.to(sampler.device)
            x0, x1 = sampler.pair(x0, labels, generator=gen)
            yield (x0, x1) if labels is None else (x0, x1, labels.to(x0.device))
            count += 1
