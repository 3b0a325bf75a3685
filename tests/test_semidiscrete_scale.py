"""SemidiscreteSampler at scale: a fit step reads nothing back to the host, data held in 16 bits,
and data streamed from where they are held in chunks."""

import collections
import os
import sys

import pytest
import torch

import ot_flow

_PACKAGE = os.path.dirname(ot_flow.__file__) + os.sep
_TORCH = os.path.dirname(torch.__file__) + os.sep
_HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "__format__")


def count_host_reads(monkeypatch):
    """Counts the host reads of a tensor's value made by ot_flow's code: a Python number, a bool
    or a list from a tensor waits, on a GPU, for every kernel queued before it. A read made
    inside torch is charged to the nearest caller outside it (an f-string's ``__format__`` reads
    through ``item``), once."""
    counts = collections.Counter()
    inside = {"depth": 0}

    def counting(name, original):
        def read(self, *args, **kwargs):
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(_TORCH):
                frame = frame.f_back
            outermost = inside["depth"] == 0
            if outermost and frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
                counts[f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {name}"] += 1
            inside["depth"] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                inside["depth"] -= 1
        return read

    for name in _HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    return counts


@pytest.mark.parametrize("sampler_args,fit_args", [
    (dict(), dict()),  # diagonal Newton, hard
    (dict(eps=0.05), dict()),  # soft (lse passes)
    (dict(), dict(optimizer="sgd")),
    (dict(labels=torch.arange(600) % 3), dict()),  # one potential per class
    (dict(chunk_size=128, stream_data=True), dict()),  # streamed chunks
], ids=["newton", "soft", "sgd", "conditional", "streamed"])
def test_fit_steps_read_nothing_back(monkeypatch, sampler_args, fit_args):
    # torch.optim.Adam reads its step counter, a host tensor even for a GPU fit: not tested here.
    data = torch.randn(600, 3, generator=torch.Generator().manual_seed(0))

    def reads(num_steps):
        sampler = ot_flow.SemidiscreteSampler(data, seed=1, **sampler_args)
        counts = count_host_reads(monkeypatch)
        sampler.fit(num_steps, batch_size=128, warm_start=None, progress=False, log_every=1000, **fit_args)
        monkeypatch.undo()
        return counts

    few, many = reads(5), reads(45)
    per_step = {where: (many[where] - few[where]) / 40 for where in many if many[where] != few[where]}
    assert not per_step, f"host reads per fit step: {per_step}"
    assert sum(few.values()) > 0  # the counter sees the reads of the start and the final log


def test_reads_come_every_log_every_steps(monkeypatch):
    data = torch.randn(600, 3, generator=torch.Generator().manual_seed(0))

    def reads(log_every):
        sampler = ot_flow.SemidiscreteSampler(data, seed=1)
        counts = count_host_reads(monkeypatch)
        sampler.fit(40, batch_size=128, warm_start=None, progress=False, log_every=log_every)
        monkeypatch.undo()
        return sum(counts.values()), len(sampler.history)

    (r40, logs40), (r20, logs20), (r10, logs10) = reads(40), reads(20), reads(10)
    assert (logs40, logs20, logs10) == (1, 2, 4)
    assert r20 > r40 and r10 - r20 == 2 * (r20 - r40)  # the same reads at each log, none between


@pytest.mark.parametrize("sampler_args", [dict(), dict(eps=0.05), dict(labels=torch.arange(600) % 3),
                                          dict(chunk_size=128, stream_data=True)],
                         ids=["hard", "soft", "conditional", "streamed"])
def test_fit_steps_and_checks_never_recompute_the_datas_cost_offsets(monkeypatch, sampler_args):
    # |z_j|^2 / 2 of the data is computed once, beside the stored points: a fit step or a chi2
    # check that formed it again would copy every point to float64 each time (at N = 10^6,
    # d = 64: 512 MB a step). Every call of cost_offsets on more rows than a noise batch is one.
    data = torch.randn(600, 3, generator=torch.Generator().manual_seed(0))
    sampler = ot_flow.SemidiscreteSampler(data, seed=1, **sampler_args)
    rows = []
    original = ot_flow.solvers.costs.cost_offsets

    def recording(x, cost):
        rows.append(x.shape[0])
        return original(x, cost)

    monkeypatch.setattr(ot_flow.solvers.costs, "cost_offsets", recording)
    sampler.fit(20, batch_size=100, warm_start=None, progress=False, log_every=10, eval_samples=300)
    assert rows and max(rows) <= 100, f"cost offsets of {max(rows)} rows during the fit"


def fitted(data, fit_args=None, **sampler_args):
    sampler = ot_flow.SemidiscreteSampler(data, seed=4, **sampler_args)
    return sampler.fit(**{"num_steps": 60, "batch_size": 128, "progress": False, "log_every": 20, **(fit_args or {})})


def states_equal(a, b):
    noise = torch.randn(500, *a.data.shape[1:], generator=torch.Generator().manual_seed(5))
    labels = torch.arange(500) % 2 if a.conditional else None
    pairs = [s.assign(noise, labels, generator=torch.Generator().manual_seed(6)) for s in (a, b)]
    # repr: a soft fit logs chi2 as nan, unequal to itself
    return torch.equal(a.potential, b.potential) and repr(a.history) == repr(b.history) and torch.equal(*pairs)


@pytest.mark.parametrize("sampler_args", [dict(), dict(eps=0.05), dict(labels=torch.arange(700) % 2)],
                         ids=["hard", "soft", "conditional"])
def test_streamed_data_give_the_resident_fit_bit_for_bit(sampler_args):
    # On the CPU stream_data=True copies every chunk as a GPU fit of host data does: the numbers
    # must be those of the same chunks read in place.
    data = torch.randn(700, 3, generator=torch.Generator().manual_seed(1)) * 2 + 1
    streamed = fitted(data, chunk_size=96, stream_data=True, **sampler_args)
    resident = fitted(data, chunk_size=96, stream_data=False, **sampler_args)
    assert streamed.stream_data and not resident.stream_data
    assert streamed.step == 60 and states_equal(streamed, resident)


def test_stream_data_defaults_to_streaming_data_held_elsewhere():
    data = torch.randn(50, 2)
    assert not ot_flow.SemidiscreteSampler(data).stream_data
    assert not ot_flow.SemidiscreteSampler(data, chunk_size=8).stream_data  # held on the search's device
    assert ot_flow.SemidiscreteSampler(data, chunk_size=8, stream_data=True).stream_data


@pytest.mark.parametrize("kwargs,message", [
    (dict(stream_data=True), "argument 'stream_data'.*'chunk_size'"),
    (dict(stream_data="yes", chunk_size=8), "argument 'stream_data' must be True, False or None"),
])
def test_bad_stream_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ot_flow.SemidiscreteSampler(torch.randn(50, 2), **kwargs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_data_stay_16_bit_and_fit_like_their_float32_values(dtype):
    data = (torch.randn(700, 3, generator=torch.Generator().manual_seed(2)) * 2 + 1).to(dtype)
    fit_args = dict(num_steps=300)
    half = fitted(data, fit_args)
    full = fitted(data.float(), fit_args)  # the same (rounded) points, held in float32
    assert half._search.dtype == dtype and half._flat.dtype == dtype  # no float32 copy of the data
    assert half.dtype == torch.float32 and half.potential.dtype == torch.float64
    # The 16-bit standardised copy moves each point by ~1e-3 of the spread: its potential pairs
    # the float32 points as well as their own fit does (chi2 0.022 and 0.016 for bfloat16, 0.019
    # and 0.019 for float16), and most noise alike (94%; two float32 fits seeded apart: 85%).
    on_full = ot_flow.SemidiscreteSampler(data.float(), seed=4)
    on_full.potential, on_full.fitted = half.potential, True
    assert on_full.marginal_error(200_000) < 0.03 and full.marginal_error(200_000) < 0.03
    noise = torch.randn(4000, 3, generator=torch.Generator().manual_seed(3))
    assert (half.assign(noise) == full.assign(noise)).double().mean() > 0.9
    x0, x1 = half.pair(noise[:10])
    assert x1.dtype == dtype and x0.dtype == torch.float32


def test_16_bit_data_stream_like_resident_ones():
    data = torch.randn(700, 3, generator=torch.Generator().manual_seed(1)).bfloat16()
    streamed = fitted(data, chunk_size=96, stream_data=True)
    resident = fitted(data, chunk_size=96, stream_data=False)
    assert streamed._search.dtype == torch.bfloat16 and states_equal(streamed, resident)
