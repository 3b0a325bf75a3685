import numpy as np
import pytest
import torch
from scipy import stats
from scipy.optimize import linear_sum_assignment
from torch.utils.data import DataLoader, TensorDataset

import ot_flow
from ot_flow.data import OTPairDataset
from reference import dense_plan


def clouds(n, m, d, seed, dtype=torch.float64, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(m, d, generator=g, dtype=dtype) + shift


def draw_counts(res, draws, seed):
    """(n, m) table of how often res.sample() paired row i with column j over `draws` calls."""
    gen = torch.Generator().manual_seed(seed)
    n, m = res.f.shape[0], res.g.shape[0]
    counts = torch.zeros(n * m, dtype=torch.long)
    rows = torch.arange(n)
    for _ in range(draws):
        counts += torch.bincount(rows * m + res.sample(gen), minlength=n * m)
    return counts.view(n, m).numpy()


def test_sampled_pairs_follow_the_plan():
    x, y = clouds(6, 5, 2, seed=1)
    res = ot_flow.sinkhorn(x, y, eps=0.3, tol=1e-9)
    plan = dense_plan(res).numpy()
    counts = draw_counts(res, 4000, seed=2)
    conditional = plan / plan.sum(1, keepdims=True)
    for i in range(6):  # P(. | i), row by row
        assert stats.chisquare(counts[i], conditional[i] * counts[i].sum()).pvalue > 1e-3
    joint = counts.ravel()
    assert stats.chisquare(joint, plan.ravel() / plan.sum() * joint.sum()).pvalue > 1e-3
    # The same counts reject the independent coupling: the test can fail.
    independent = np.full(joint.shape, joint.sum() / joint.size)
    assert stats.chisquare(joint, independent).pvalue < 1e-6


def test_tiny_eps_pairs_are_the_exact_assignment():
    x, y = clouds(300, 300, 2, seed=3)
    # eps = 1e-5 std(C): rows whose two best partners are closer than that are split by P.
    res = ot_flow.sinkhorn(x, y, eps=1e-5, tol=1e-4, max_iter=50_000)
    assert res.converged and res.renormalized_entropy() < 0.01
    j = res.sample(torch.Generator().manual_seed(0))
    cost = torch.cdist(x, y) ** 2
    _, assignment = linear_sum_assignment(cost.numpy())
    assert (j.numpy() == assignment).mean() >= 0.99


def test_huge_eps_pairs_are_independent():
    x, y = clouds(6000, 12, 3, seed=4)
    res = ot_flow.sinkhorn(x, y, eps=1e4)
    j = res.sample(torch.Generator().manual_seed(1)).numpy()
    counts = np.bincount(j, minlength=12)
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform over columns
    # and independent of the row: no association between where x_i lies and its partner
    side = (x[:, 0] > 0).numpy().astype(int)
    table = np.stack([np.bincount(j[side == s], minlength=12) for s in (0, 1)])
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_sample_is_reproducible_and_uses_the_global_generator_by_default():
    x, y = clouds(400, 350, 5, seed=5, dtype=torch.float32)
    res = ot_flow.sinkhorn(x, y, eps=0.1)
    a = res.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, res.sample(torch.Generator().manual_seed(3)))
    torch.manual_seed(7)
    b = res.sample()
    torch.manual_seed(7)
    assert torch.equal(b, res.sample()) and not torch.equal(b, res.sample())


def test_dot_and_sqeuclidean_samples_agree():
    x, y = clouds(500, 400, 3, seed=6)
    sq = ot_flow.sinkhorn(x, y, eps=0.1, relative_eps=False, cost="sqeuclidean", tol=1e-8)
    dot = ot_flow.sinkhorn(x, y, eps=0.1, relative_eps=False, cost="dot", tol=1e-8)
    same = (sq.sample(torch.Generator().manual_seed(1)) == dot.sample(torch.Generator().manual_seed(1))).float().mean()
    assert same > 0.99  # equal plans, equal noise: only rounding of near-ties can differ


def test_ot_sampler_pairs_images_and_keeps_dtype():
    gen = torch.Generator().manual_seed(8)
    x0 = torch.randn(128, 3, 4, 4, generator=gen)
    x1 = torch.randn(128, 3, 4, 4, generator=gen) + 2
    labels = torch.arange(128)
    sampler = ot_flow.OTSampler(eps=0.01)
    a0, a1, a_labels = sampler.pair(x0, x1, labels, generator=torch.Generator().manual_seed(1))
    assert a0 is x0 and a1.shape == x1.shape and torch.equal(a1, x1[a_labels])
    assert sampler.last_plan.converged and sampler.last_plan.x.shape == (128, 48)
    # OT pairs are much closer than the independent pairs they replace.
    assert ((a1 - x0) ** 2).sum((1, 2, 3)).mean() < 0.9 * ((x1 - x0) ** 2).sum((1, 2, 3)).mean()
    j = sampler.sample_indices(x0, x1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(j, a_labels)
    b0, b1 = sampler.pair(x0.bfloat16(), x1.bfloat16())
    assert b0.dtype == b1.dtype == torch.bfloat16


def test_ot_sampler_target_entropy():
    x0, x1 = clouds(300, 300, 4, seed=9, dtype=torch.float32)
    sampler = ot_flow.OTSampler(target_entropy=0.2)
    sampler.pair(x0, x1)
    assert sampler.last_plan.renormalized_entropy() == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize("kwargs,message", [
    (dict(eps=-0.5), "argument 'eps'"),
    (dict(cost="l1"), "argument 'cost'"),
    (dict(target_entropy=1.5), "argument 'target_entropy'"),
    (dict(max_iter=0), "argument 'max_iter'"),
])
def test_ot_sampler_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ot_flow.OTSampler(**kwargs)


def test_ot_sampler_bad_input():
    sampler = ot_flow.OTSampler()
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="argument 'x0' must be a torch.Tensor"):
        sampler.pair(x.numpy(), x)
    with pytest.raises(ValueError, match="same number of features"):
        sampler.pair(x, torch.randn(10, 4))
    with pytest.raises(ValueError, match="argument 'x1' contains NaN"):
        sampler.pair(x, x.index_fill(0, torch.tensor([1]), float("nan")))
    with pytest.raises(ValueError, match="argument 'aligned\\[0\\]'"):
        sampler.pair(x, x, torch.arange(9))
    with pytest.raises(ValueError, match="argument 'x0' must hold at least one point"):
        sampler.pair(x[:0], x)


def pairs_as_rows(batches):
    """Every yielded pair as one float tuple, sorted: the multiset of pairs a loader produced."""
    rows = torch.cat([torch.cat([b[0], b[1]], dim=1) for b in batches])
    return sorted(map(tuple, rows.tolist()))


def make_dataset(**kwargs):
    target = torch.randn(700, 2, generator=torch.Generator().manual_seed(0)) + 3
    args = dict(source=None, target=target, sampler=ot_flow.OTSampler(eps=0.05), coupling_size=256,
                batch_size=32, rounds=3, seed=11)
    args.update(kwargs)
    return OTPairDataset(**args)


def test_pair_dataset_yields_coupled_minibatches():
    dataset = make_dataset()
    batches = list(DataLoader(dataset, batch_size=None))
    assert len(batches) == len(dataset) == 3 * 8
    assert all(b[0].shape == b[1].shape == (32, 2) for b in batches)
    again = list(DataLoader(make_dataset(), batch_size=None))
    assert all(torch.equal(u[1], v[1]) for u, v in zip(batches, again))  # reproducible from the seed
    dataset.set_epoch(1)
    assert not torch.equal(next(iter(dataset))[1], batches[0][1])


def test_pair_dataset_workers_give_the_same_pairs():
    # DataLoader workers run torch with one thread; the serial loader does too, so that both solve
    # each round on the same code path (reductions split by thread count differ in their last
    # bits, and a near-tie in a draw could then go either way). The contract here is which rounds
    # and seeds the workers take, bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = pairs_as_rows(DataLoader(make_dataset(), batch_size=None, num_workers=0))
    finally:
        torch.set_num_threads(threads)
    parallel = pairs_as_rows(DataLoader(make_dataset(), batch_size=None, num_workers=2))
    assert serial == parallel


def test_pair_dataset_ranks_share_one_coupling_disjointly():
    whole = pairs_as_rows(make_dataset(rank=0, world_size=1, batch_size=16))
    shares = [pairs_as_rows(make_dataset(rank=r, world_size=3, batch_size=16)) for r in range(3)]
    union = sorted(sum(shares, []))
    assert all(not set(shares[r]) & set(shares[s]) for r in range(3) for s in range(r + 1, 3))
    assert set(union) <= set(whole) and len(union) >= len(whole) - 3 * 3 * 16  # up to a short batch each


def test_pair_dataset_with_a_dataset_target_and_a_callable_source():
    points = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    labels = (points[:, 0] > 0).long()
    dataset = make_dataset(target=TensorDataset(points, labels), source=lambda n, g: torch.randn(n, 2, generator=g) - 3)
    for x0, x1, label in DataLoader(dataset, batch_size=None):
        assert torch.equal(label, (x1[:, 0] > 0).long())  # labels travel with their points
        assert (x0.mean(0) < -1).all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(sampler="ot"), "argument 'sampler'"),
    (dict(target=[1, 2, 3]), "argument 'target'"),
    (dict(source=3), "argument 'source'"),
    (dict(coupling_size=0), "argument 'coupling_size'"),
    (dict(batch_size=1.5), "argument 'batch_size'"),
    (dict(rounds=0), "argument 'rounds'"),
    (dict(rank=2, world_size=2), "0 <= rank < world_size"),
    (dict(rank=0), "go together"),
    (dict(coupling_size=40, batch_size=32, rank=0, world_size=2), "fewer pairs than one batch"),
])
def test_pair_dataset_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_dataset(**kwargs)


def test_pair_dataset_bad_source_output():
    dataset = make_dataset(source=lambda n, g: torch.randn(n + 1, 2))
    with pytest.raises(ValueError, match="must return a tensor with n = 256 rows"):
        next(iter(dataset))


@pytest.mark.cuda
def test_cuda_samples_equal_cpu_samples():
    x, y = clouds(3000, 2000, 16, seed=10)
    cpu = ot_flow.sinkhorn(x, y, eps=0.05, tol=1e-6)
    gpu = ot_flow.sinkhorn(x.cuda(), y.cuda(), eps=0.05, tol=1e-6)
    j_cpu = cpu.sample(torch.Generator().manual_seed(4))
    j_gpu = gpu.sample(torch.Generator().manual_seed(4))
    assert j_gpu.device.type == "cuda"
    assert (j_gpu.cpu() == j_cpu).float().mean() > 0.999  # potentials agree to rounding only
    sampler = ot_flow.OTSampler(eps=0.05)
    x0, x1 = sampler.pair(x.cuda().bfloat16(), y.cuda().bfloat16())
    assert x1.device.type == "cuda" and x1.dtype == torch.bfloat16
