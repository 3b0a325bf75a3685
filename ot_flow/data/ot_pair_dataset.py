"""OTPairDataset: one large coupling per round, consumed as many minibatches (seed paper 002).

Each round draws ``coupling_size`` source and target points, solves one Sinkhorn coupling
between them with an :class:`ot_flow.OTSampler`, draws a partner for every source point and
yields the pairs, shuffled, in minibatches. The randomness of a round (which points, the
pairing noise, the shuffle) comes from a generator seeded by (seed, epoch, round) alone, so:

* with ``num_workers > 0`` worker w takes the rounds r = w (mod workers) and the set of
  batches is the same as with ``num_workers=0``;
* under DDP every rank yields a disjoint share of the pairs of one coupling (rows rank,
  rank + world_size, ... of the round's shuffle); give the sampler the process group
  (``OTSampler(process_group=...)``, with ``num_workers=0``) and the ranks solve it together,
  each a block of rows and columns, instead of each solving all of it.
"""

import torch
from torch.utils.data import Dataset, IterableDataset, default_collate, get_worker_info

from ot_flow.distributed import derived_seed, rank_and_world
from ot_flow.samplers.ot_sampler import OTSampler
from ot_flow.solvers import validation

__all__ = ["OTPairDataset"]


class OTPairDataset(IterableDataset):
    """Minibatches of OT-coupled pairs for a ``DataLoader(dataset, batch_size=None)``.

    Args:
        source: where x0 comes from: None (standard normal noise shaped like the target
            points), a callable ``source(n, generator) -> Tensor``, a tensor of points, or a
            map-style ``Dataset``.
        target: the data x1: a tensor (N, ...) or a map-style ``Dataset`` whose items are
            tensors or tuples ``(points, label, ...)``; the extra fields travel with x1.
        sampler: the :class:`ot_flow.OTSampler` that solves each round's coupling.
        coupling_size: n, the points per side of one coupling (seed paper 002: 2^11 to 2^21).
            Drawn without replacement when the data set has at least n points.
        batch_size: pairs per yielded minibatch.
        rounds: couplings per epoch; None means an endless stream.
        seed: the base of every round's seed; ``set_epoch`` moves to fresh rounds.
        drop_last: drop the last short minibatch of a round's share.
        rank, world_size: this process's share; default from ``torch.distributed`` when it
            is initialised, else (0, 1).
        device: where the coupling is solved and the pairs are yielded (default: the
            target's device; "cuda" in the main process with ``num_workers=0``).
        target_labels: class-conditional pairing (``OTSampler.pair(..., classes=(c0, c1))``,
            pairs only within a class): a 1-D integer tensor of the target's labels, indexed
            like ``target``, or an int k: the labels are field k of the target's extras (0 for
            the label of ``(points, label)`` items).
        source_labels: the source points' labels: a 1-D integer tensor indexed like a tensor
            or Dataset ``source``, or "target" (the default with ``target_labels``): the
            round's x0 take the labels of the round's x1 draw, so every class has equal counts
            on both sides (the right thing for a noise source).

    Yields:
        ``(x0, x1)`` or ``(x0, x1, *extras)`` minibatches; with a tensor ``target_labels`` the
        pairs' labels come last, ``(x0, x1, *extras, labels)`` (with an int they are already
        among the extras).
    """

    def __init__(self, source, target, sampler, coupling_size, batch_size, *, rounds=None, seed=0,
                 drop_last=True, rank=None, world_size=None, device=None, target_labels=None, source_labels=None):
        super().__init__()
        if not isinstance(sampler, OTSampler):
            raise ValueError(f"argument 'sampler' must be an ot_flow.OTSampler, got {type(sampler).__name__}")
        if not isinstance(target, (torch.Tensor, Dataset)):
            raise ValueError(f"argument 'target' must be a tensor or a map-style Dataset, got {type(target).__name__}")
        if not (source is None or callable(source) or isinstance(source, (torch.Tensor, Dataset))):
            raise ValueError("argument 'source' must be None, a callable (n, generator) -> Tensor, "
                             f"a tensor or a map-style Dataset, got {type(source).__name__}")
        validation.integer("coupling_size", coupling_size, 1)
        validation.integer("batch_size", batch_size, 1)
        validation.integer("rounds", rounds, 1, optional=True)
        if len(target) == 0:
            raise ValueError("argument 'target' is empty")
        self.rank, self.world_size = rank_and_world(rank, world_size)
        if coupling_size < self.world_size * batch_size and drop_last:
            raise ValueError(f"argument 'coupling_size' ({coupling_size}) gives each of the {self.world_size} "
                             f"ranks fewer pairs than one batch of {batch_size}")
        self.source, self.target, self.sampler = source, target, sampler
        self.coupling_size, self.batch_size = coupling_size, batch_size
        self.rounds, self.seed, self.drop_last = rounds, int(seed), drop_last
        self.device = torch.device(device) if device is not None else None
        self.target_labels, self.source_labels = _check_labels(target_labels, source_labels, source, target)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Moves to the rounds of another epoch (call it each epoch, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def batches_per_round(self):
        share = len(range(self.rank, self.coupling_size, self.world_size))
        return share // self.batch_size if self.drop_last else -(-share // self.batch_size)

    def __len__(self):
        if self.rounds is None:
            raise TypeError("OTPairDataset with rounds=None is an endless stream and has no length")
        return self.rounds * self.batches_per_round()

    def __iter__(self):
        worker = get_worker_info()
        first, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        round_index = first
        while self.rounds is None or round_index < self.rounds:
            yield from self.round_batches(round_index)
            round_index += step

    def round_batches(self, round_index):
        """This rank's minibatches of round ``round_index`` of the current epoch: a pure function
        of (seed, epoch, round), so a consumer can restart at any round."""
        gen = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch, round_index))
        target_index, (x1, *extras) = _draw(self.target, self.coupling_size, gen)
        source_index = None
        if self.source is None:
            x0 = torch.randn(x1.shape, generator=gen, dtype=x1.dtype if x1.is_floating_point() else None)
        elif callable(self.source) and not isinstance(self.source, (torch.Tensor, Dataset)):
            x0 = self.source(self.coupling_size, gen)
            if not isinstance(x0, torch.Tensor) or x0.shape[0] != self.coupling_size:
                raise ValueError(f"argument 'source': source(n, generator) must return a tensor with "
                                 f"n = {self.coupling_size} rows")
        else:
            source_index, (x0, *_) = _draw(self.source, self.coupling_size, gen)
        device = self.device if self.device is not None else x1.device
        x0, x1 = x0.to(device), x1.to(device)
        extras = [e.to(device) for e in extras]
        if self.target_labels is None:
            pairs = self.sampler.pair(x0, x1, *extras, generator=gen)
        else:
            if isinstance(self.target_labels, int):
                if self.target_labels >= len(extras):
                    raise ValueError(f"argument 'target_labels'={self.target_labels}: the target's items have only "
                                     f"{len(extras)} extra field(s) after the points")
                c1 = extras[self.target_labels]
            else:
                c1 = self.target_labels[target_index.to(self.target_labels.device)]
            if isinstance(self.source_labels, str):
                c0 = c1
            else:
                c0 = self.source_labels[source_index.to(self.source_labels.device)]
            pairs = self.sampler.pair(x0, x1, *extras, classes=(c0, c1), generator=gen)
            if isinstance(self.target_labels, torch.Tensor):
                pairs = (*pairs, c0.to(device))  # x1[j_i] has x0[i]'s class
        order = torch.randperm(self.coupling_size, generator=gen)[self.rank::self.world_size].to(device)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for begin in range(0, stop, self.batch_size):
            rows = order[begin:begin + self.batch_size]
            yield tuple(t[rows] for t in pairs)


def _draw(points, n, gen):
    """n items of a tensor or Dataset (without replacement when there are enough): (their
    indices, a list of tensors: the points, then any extra fields of the items)."""
    size = len(points)
    index = torch.randperm(size, generator=gen)[:n] if n <= size else torch.randint(size, (n,), generator=gen)
    if isinstance(points, torch.Tensor):
        return index, [points[index.to(points.device)]]
    batch = default_collate([points[int(k)] for k in index])
    if isinstance(batch, torch.Tensor):
        return index, [batch]
    if isinstance(batch, (list, tuple)) and batch and all(isinstance(t, torch.Tensor) for t in batch):
        return index, list(batch)
    raise ValueError("a Dataset's items must be tensors or tuples of tensors (points, label, ...)")


def _check_labels(target_labels, source_labels, source, target):
    """(target_labels, source_labels) checked: None, or a label tensor / field index and a label
    tensor / "target"."""
    if target_labels is None:
        if source_labels is not None:
            raise ValueError("argument 'source_labels' needs 'target_labels' (class-conditional pairing)")
        return None, None
    if isinstance(target_labels, bool) or not isinstance(target_labels, (int, torch.Tensor)):
        raise ValueError(f"argument 'target_labels' must be a label tensor or a field index, got {target_labels!r}")
    if isinstance(target_labels, int):
        if target_labels < 0 or isinstance(target, torch.Tensor):
            raise ValueError("argument 'target_labels' as an int is the index of a label field of a Dataset target's "
                             "items (>= 0); for a tensor target pass the labels as a tensor")
    else:
        _check_label_tensor("target_labels", target_labels, len(target))
    if source_labels is None:
        source_labels = "target"
    if isinstance(source_labels, str):
        if source_labels != "target":
            raise ValueError(f"argument 'source_labels' must be a label tensor or 'target', got {source_labels!r}")
    else:
        if not isinstance(source, (torch.Tensor, Dataset)):
            raise ValueError("argument 'source_labels' as a tensor needs a tensor or Dataset 'source' to index; "
                             "for a noise source use source_labels='target'")
        _check_label_tensor("source_labels", source_labels, len(source))
    return target_labels, source_labels


def _check_label_tensor(name, labels, size):
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != size:
        raise ValueError(f"argument '{name}' must be a 1-D tensor of {size} labels (one per item)")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"argument '{name}' must hold integer class labels, got {labels.dtype}")
