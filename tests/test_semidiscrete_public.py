"""SemidiscreteSampler's public surface: states saved by earlier code, ``noise``, and the pair
dataset and stream, which use nothing else."""

import os

import pytest
import torch
from torch.utils.data import DataLoader

import ot_flow
from ot_flow.data import SemidiscretePairDataset
from ot_flow.flow.pair_streams import SemidiscretePairs

# Saved by the sampler of commit b33f719 (before fit, frame, noise and state had files of their
# own): for each case, SemidiscreteSampler(data, seed=2, **kwargs).fit(20, batch_size=64,
# optimizer=...) gave "state" (its state_dict()), "potential" and "assign" (of the queries below);
# fit(30, ...) after it gave "continued".
STATES = os.path.join(os.path.dirname(__file__), "data", "semidiscrete_states_b33f719.pt")


def saved_problem():
    gen = torch.Generator().manual_seed(31)
    data = torch.randn(300, 2, generator=gen) * 3 + 2
    return data, torch.arange(300) % 2, torch.randn(400, 2, generator=gen)


@pytest.mark.parametrize("case,optimizer", [("plain", "auto"), ("conditional", "adam")])
def test_states_saved_by_earlier_code_load_and_continue(case, optimizer):
    data, labels, x0 = saved_problem()
    saved = torch.load(STATES, weights_only=False)[case]
    kwargs = {"labels": labels} if case == "conditional" else {}
    query_labels = torch.arange(400) % 2 if case == "conditional" else None
    sampler = ot_flow.SemidiscreteSampler(data, seed=2, **kwargs)
    sampler.load_state_dict(saved["state"])
    assert sampler.fitted and sampler.step == 20 and sampler.warm_started
    torch.testing.assert_close(sampler.potential, saved["potential"], atol=1e-9, rtol=0)
    assert (sampler.assign(x0, query_labels) == saved["assign"]).double().mean() > 0.99
    # The format is kept: the state saved again has the same keys and the same values.
    again = sampler.state_dict()
    assert again.keys() == saved["state"].keys() and again["version"] == saved["state"]["version"] == 2
    for key in ("g", "g_ema"):
        assert torch.equal(again[key], saved["state"][key])
    assert torch.equal(again["noise"][0], saved["state"]["noise"][0]) and again["noise"][1] == saved["state"]["noise"][1]
    assert again["history"] == saved["state"]["history"]
    # The fit continues from it (bit for bit on the machine that saved it; rounding elsewhere).
    sampler.fit(30, batch_size=64, optimizer=optimizer, progress=False)
    torch.testing.assert_close(sampler.potential, saved["continued"], atol=1e-4, rtol=0)


def test_noise_draws_the_source_in_the_data_shape():
    data = torch.randn(50, 1, 2, 2, dtype=torch.float64)
    sampler = ot_flow.SemidiscreteSampler(data)
    x0 = sampler.noise(7, torch.Generator().manual_seed(3))
    assert x0.shape == (7, 1, 2, 2) and x0.dtype == sampler.dtype == torch.float64 and x0.device == sampler.device
    assert torch.equal(x0, torch.randn(7, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
                       .reshape(7, 1, 2, 2))
    # A flat custom source comes back shaped like the data.
    flat = ot_flow.SemidiscreteSampler(data, source=lambda n, g: torch.rand(n, 4, generator=g, dtype=torch.float64))
    assert flat.noise(5, torch.Generator()).shape == (5, 1, 2, 2)
    # Half data: the noise is in the dtype the search runs in.
    assert ot_flow.SemidiscreteSampler(data.half()).noise(3).dtype == torch.float32


def test_noise_leaves_the_fit_alone():
    """Pairing noise is independent of the fit's (quasi-random) stream: drawing it between two
    fits changes neither the state nor the fit that follows."""
    data = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    sampler = ot_flow.SemidiscreteSampler(data, seed=3).fit(10, batch_size=64, progress=False)
    before = sampler.state_dict()["noise"]
    sampler.noise(100)
    sampler.noise(100, torch.Generator().manual_seed(0))
    after = sampler.state_dict()["noise"]
    assert torch.equal(before[0], after[0]) and before[1] == after[1]
    sampler.fit(20, batch_size=64, progress=False)
    undisturbed = ot_flow.SemidiscreteSampler(data, seed=3).fit(10, batch_size=64, progress=False)
    undisturbed.fit(20, batch_size=64, progress=False)
    assert torch.equal(sampler.potential, undisturbed.potential)


def fitted_sampler(**kwargs):
    data = torch.randn(100, 3, generator=torch.Generator().manual_seed(5))
    return ot_flow.SemidiscreteSampler(data, seed=0, **kwargs).fit(50, batch_size=256, progress=False)


def test_pair_dataset_batches_are_a_function_of_their_index():
    sampler = fitted_sampler()
    dataset = SemidiscretePairDataset(sampler, 16, num_batches=4, seed=2)
    serial = list(DataLoader(dataset, batch_size=None))
    assert all(torch.equal(a, b) for k, batch in enumerate(serial) for a, b in zip(batch, dataset.batch(k)))
    # Two workers take the even and the odd batches, which the loader interleaves back in order.
    parallel = list(DataLoader(dataset, batch_size=None, num_workers=2))
    assert all(torch.equal(a, b) for u, v in zip(serial, parallel) for a, b in zip(u, v))
    dataset.set_epoch(1)
    assert not torch.equal(dataset.batch(0)[0], serial[0][0])
    other_rank = SemidiscretePairDataset(sampler, 16, seed=2, rank=1, world_size=2)
    assert not torch.equal(other_rank.batch(0)[0], serial[0][0])


def test_pair_dataset_of_a_conditional_sampler_yields_labels():
    labels = torch.arange(100) % 3
    sampler = fitted_sampler(labels=labels)
    x0, x1, batch_labels = SemidiscretePairDataset(sampler, 32, seed=1).batch(0)
    assert torch.equal(x1, sampler.data[sampler.assign(x0, batch_labels)])
    assert torch.equal(labels[sampler.assign(x0, batch_labels)], batch_labels)


def test_semidiscrete_pairs_are_the_dataset_batches():
    sampler = fitted_sampler()

    def source(n, generator):
        return torch.randn(n, 3, generator=generator)

    stream = SemidiscretePairs(source, sampler, 16, seed=4)
    dataset = SemidiscretePairDataset(sampler, 16, seed=4, source=source)
    for step, (x0, x1) in zip(range(3, 6), stream.batches(3)):
        expected = dataset.batch(step)
        assert torch.equal(x0, expected[0]) and torch.equal(x1, expected[1])
    # The source above draws as the sampler's own standard normal noise does.
    assert torch.equal(SemidiscretePairDataset(sampler, 16, seed=4).batch(3)[0], dataset.batch(3)[0])
    assert stream.pairs == 3 * 16 and stream.pairing_seconds > 0
    with pytest.raises(ValueError, match="class labels"):
        SemidiscretePairs(source, fitted_sampler(labels=torch.arange(100) % 2), 16)
