"""Class-conditional pairing: OTSampler.pair(..., classes=(c0, c1)) and OTPairDataset's labels."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ot_flow
from ot_flow.ops import seed_from
from ot_flow.samplers.ot_sampler import class_generator


def _labelled(n_per_class=(12, 7, 20), d=3, seed=0):
    """Shuffled x0, x1 with labels; class k's targets sit near 5 k so that classes would mix
    across if the pairing ignored them."""
    g = torch.Generator().manual_seed(seed)
    c = torch.cat([torch.full((k,), label, dtype=torch.long) for label, k in zip((3, -1, 10), n_per_class)])
    c0, c1 = c[torch.randperm(len(c), generator=g)], c[torch.randperm(len(c), generator=g)]
    x0 = torch.randn(len(c), d, generator=g)
    x1 = torch.randn(len(c), d, generator=g) + 5.0 * c1[:, None].float()
    return x0, x1, c0, c1


def test_no_pair_crosses_classes_and_x0_keeps_its_order():
    x0, x1, c0, c1 = _labelled()
    sampler = ot_flow.OTSampler(eps=0.05)
    ids = torch.arange(len(c1)).double() + 1000
    out0, out1, labels, out_ids = sampler.pair(x0, x1, c1, ids, classes=(c0, c1),
                                               generator=torch.Generator().manual_seed(0))
    assert torch.equal(out0, x0)
    assert torch.equal(labels, c0)  # every partner has x0[i]'s class
    assert torch.equal(out1, x1[(out_ids - 1000).long()])
    assert set(sampler.last_plan) == {-1, 3, 10}
    # without classes the same problem does cross them (so the test above can fail)
    _, _, crossed, _ = sampler.pair(x0, x1, c1, ids, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(crossed, c0)


def test_each_class_equals_that_class_solved_alone():
    x0, x1, c0, c1 = _labelled()
    sampler = ot_flow.OTSampler(eps=0.1)
    gen = torch.Generator().manual_seed(123)
    seed = seed_from(torch.Generator().manual_seed(123))  # the call's one draw from its generator
    _, paired = sampler.pair(x0, x1, classes=(c0, c1), generator=gen)
    for label in (3, -1, 10):
        m0, m1 = c0 == label, c1 == label
        _, alone = ot_flow.OTSampler(eps=0.1).pair(x0[m0], x1[m1], generator=class_generator(seed, label))
        assert torch.equal(paired[m0], alone), label
    # a different call seed gives a different draw
    _, other = sampler.pair(x0, x1, classes=(c0, c1), generator=torch.Generator().manual_seed(124))
    assert not torch.equal(other, paired)


def test_class_pairing_does_not_depend_on_the_other_classes():
    x0, x1, c0, c1 = _labelled()
    keep0, keep1 = c0 != 10, c1 != 10
    sampler = ot_flow.OTSampler(eps=0.1)
    _, full = sampler.pair(x0, x1, classes=(c0, c1), generator=torch.Generator().manual_seed(5))
    _, part = sampler.pair(x0[keep0], x1[keep1], classes=(c0[keep0], c1[keep1]),
                           generator=torch.Generator().manual_seed(5))
    assert torch.equal(full[keep0], part)


def test_unequal_counts_name_the_class():
    x0, x1, c0, c1 = _labelled()
    c1 = c1.clone()
    c1[(c1 == -1).nonzero()[0, 0]] = 3
    with pytest.raises(ValueError, match=r"class -1 has 7 points in x0 but 6 in x1"):
        ot_flow.OTSampler().pair(x0, x1, classes=(c0, c1))
    with pytest.raises(ValueError, match="classes\\[0\\].*integer"):
        ot_flow.OTSampler().pair(x0, x1, classes=(c0.float(), c1))
    with pytest.raises(ValueError, match="classes\\[1\\]"):
        ot_flow.OTSampler().pair(x0, x1, classes=(c0, c1[:-1]))


def test_dataset_passes_labels_through():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    target = torch.randn(60, 2, generator=g) + 4.0 * labels[:, None].float()
    sampler = ot_flow.OTSampler(eps=0.05)
    ds = ot_flow.data.OTPairDataset(None, target, sampler, coupling_size=30, batch_size=10, rounds=2,
                                    target_labels=labels)
    batches = list(DataLoader(ds, batch_size=None))
    assert len(batches) == 6
    for x0, x1, c in batches:
        rows = torch.cdist(x1, target).argmin(1)
        assert torch.equal(labels[rows], c)
    # labels as a field of the items, source labels given as a tensor
    source = torch.randn(60, 2, generator=g)
    ds = ot_flow.data.OTPairDataset(source, TensorDataset(target, labels), sampler, coupling_size=60,
                                    batch_size=20, rounds=1, target_labels=0, source_labels=labels)
    for x0, x1, c in DataLoader(ds, batch_size=None):
        assert torch.equal(labels[torch.cdist(x0, source).argmin(1)], c)
        assert torch.equal(labels[torch.cdist(x1, target).argmin(1)], c)
    with pytest.raises(ValueError, match="source_labels"):
        ot_flow.data.OTPairDataset(None, target, sampler, 30, 10, target_labels=labels, source_labels=labels)
