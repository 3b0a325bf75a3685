"""The coupling as a component of flow-matching training: endless streams of (x0, x1) minibatches
that are a pure function of (seed, step), so that a resumed training run sees exactly the
batches an uninterrupted one would have seen.

* ``IndependentPairs``: x0 from the source, x1 drawn from the data independently (I-FM).
* ``OTPairs``: one Sinkhorn coupling of ``coupling_size`` points per side per round, served as
  many minibatches (OT-FM, seed paper 002) through :class:`ot_flow.data.OTPairDataset`.
* ``SemidiscretePairs``: fresh noise paired with the data set by a fitted
  :class:`ot_flow.SemidiscreteSampler` (SD-FM, seeds 001/003) through
  :class:`ot_flow.data.SemidiscretePairDataset`.

Each stream counts the seconds it spends pairing, so that runs can report the coupling's cost
per pair beside the quality it buys.
"""

import time

import torch

from ot_flow.data.ot_pair_dataset import OTPairDataset
from ot_flow.data.semidiscrete_pair_dataset import SemidiscretePairDataset
from ot_flow.distributed import derived_seed
from ot_flow.flow.checks import check_data, check_int, check_source
from ot_flow.samplers.ot_sampler import OTSampler
from ot_flow.samplers.semidiscrete_sampler import SemidiscreteSampler

__all__ = ["PairStream", "IndependentPairs", "OTPairs", "SemidiscretePairs"]


class PairStream:
    """Base of the streams: ``batches(start_step)`` yields (x0, x1) from that step on.

    Attributes:
        pairing_seconds: time spent choosing partners (solves, draws, searches), not data loading.
        setup_seconds: one-off cost before the first batch (fitting a semidiscrete potential).
        pairs: pairs produced so far.
    """

    def __init__(self, batch_size, seed):
        check_int("batch_size", batch_size, 1)
        self.batch_size, self.seed = batch_size, int(seed)
        self.pairing_seconds, self.setup_seconds, self.pairs = 0.0, 0.0, 0

    def batches(self, start_step=0):
        raise NotImplementedError

    @property
    def seconds_per_pair(self):
        return self.pairing_seconds / self.pairs if self.pairs else 0.0

    def describe(self):
        """A short dict of what this coupling is, for tables and logs."""
        return {"coupling": type(self).__name__}


class IndependentPairs(PairStream):
    """I-FM: x0 = source(B), x1 = B points of ``data`` drawn uniformly with replacement."""

    def __init__(self, source, data, batch_size, seed=0):
        super().__init__(batch_size, seed)
        check_source(source)
        check_data(data)
        self.source, self.data = source, data

    def batches(self, start_step=0):
        step = start_step
        while True:
            gen = torch.Generator().manual_seed(derived_seed(self.seed, step))
            x1 = self.data[torch.randint(self.data.shape[0], (self.batch_size,), generator=gen)]
            x0 = self.source(self.batch_size, gen).to(x1.device, x1.dtype)
            self.pairs += self.batch_size
            yield x0, x1
            step += 1

    def describe(self):
        return {"coupling": "independent"}


class OTPairs(PairStream):
    """OT-FM: each round solves one coupling between ``coupling_size`` source and data points
    and yields its pairs, shuffled, as minibatches.

    Args:
        source: ``source(n, generator) -> Tensor``.
        data: (N, ...) data set; a round draws ``coupling_size`` of its points.
        sampler: the :class:`ot_flow.OTSampler` (eps or target entropy).
        coupling_size: n, points per side of one coupling.
        batch_size, seed: minibatch size; base of every round's seed.
    """

    def __init__(self, source, data, sampler, coupling_size, batch_size, seed=0):
        super().__init__(batch_size, seed)
        check_source(source)
        check_data(data)
        if not isinstance(sampler, OTSampler):
            raise ValueError(f"argument 'sampler' must be an ot_flow.OTSampler, got {type(sampler).__name__}")
        self.sampler = sampler
        self.dataset = OTPairDataset(lambda n, gen: source(n, gen).to(data.dtype), data, sampler, coupling_size,
                                     batch_size, seed=seed)
        self.entropies = []  # renormalized entropy of each round's coupling

    def batches(self, start_step=0):
        per_round = self.dataset.batches_per_round()
        round_index, skip = divmod(start_step, per_round)
        while True:
            start = time.perf_counter()
            batches = list(self.dataset.round_batches(round_index))
            self.pairing_seconds += time.perf_counter() - start
            self.entropies.append(self.sampler.last_plan.renormalized_entropy())
            for x0, x1 in batches[skip:]:
                self.pairs += x0.shape[0]
                yield x0, x1
            round_index, skip = round_index + 1, 0

    @property
    def seconds_per_pair(self):
        # Every pair of a round costs its share of the solve, including those not yet consumed.
        rounds = len(self.entropies)
        return self.pairing_seconds / (rounds * self.dataset.coupling_size) if rounds else 0.0

    def describe(self):
        s = self.sampler
        return {"coupling": "ot", "coupling_size": self.dataset.coupling_size,
                "eps": s.eps if s.target_entropy is None else None, "target_entropy": s.target_entropy,
                "entropy": sum(self.entropies) / len(self.entropies) if self.entropies else None}


class SemidiscretePairs(PairStream):
    """SD-FM: each minibatch of fresh noise from ``source`` is paired with the data set by a
    fitted ``sampler`` (one MIPS, or a Gumbel draw when its eps > 0), through
    :class:`ot_flow.data.SemidiscretePairDataset`: step k is the dataset's batch k.
    ``setup_seconds`` is where the caller records the fit."""

    def __init__(self, source, sampler, batch_size, seed=0, setup_seconds=0.0):
        super().__init__(batch_size, seed)
        check_source(source)
        if not isinstance(sampler, SemidiscreteSampler):
            raise ValueError(f"argument 'sampler' must be an ot_flow.SemidiscreteSampler, got {type(sampler).__name__}")
        if sampler.conditional:
            raise ValueError("argument 'sampler' has class labels: its pairs need the noise's labels, which this "
                             "stream of (x0, x1) does not draw; use SemidiscretePairDataset")
        self.sampler, self.setup_seconds = sampler, float(setup_seconds)
        self.dataset = SemidiscretePairDataset(sampler, batch_size, seed=seed, source=source)

    def batches(self, start_step=0):
        step = start_step
        while True:
            start = time.perf_counter()
            x0, x1 = self.dataset.batch(step)
            self.pairing_seconds += time.perf_counter() - start
            self.pairs += self.batch_size
            yield x0, x1
            step += 1

    def describe(self):
        history = self.sampler.history
        return {"coupling": "semidiscrete", "data_size": self.sampler.data.shape[0], "eps": self.sampler.eps,
                "fit_steps": self.sampler.step, "chi2": history[-1]["chi2"] if history else None}
