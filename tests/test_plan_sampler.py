"""OTPlanSampler (torchcfm's API) and SinkhornResult.plan()."""

import importlib.util
import inspect
import math

import numpy as np
import pytest
import torch

import ot_flow
from ot_flow.samplers.plan_sampler import max_squared_distance
from reference import dense_plan, dense_sinkhorn


def _clouds(n=20, m=24, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = 0.5 * torch.randn(m, d, generator=g, dtype=torch.float64) + 1.0
    return x, y


def _has_assignment():
    return importlib.util.find_spec("ot_flow.solvers.assignment") is not None


def _has_unbalanced():
    return "tau_a" in inspect.signature(ot_flow.sinkhorn).parameters


def _torchcfm():
    pytest.importorskip("ot", reason="POT (torchcfm's solver) is not installed")
    return pytest.importorskip("torchcfm.optimal_transport", reason="torchcfm is not installed")


# -- SinkhornResult.plan() -----------------------------------------------------------------


def test_plan_equals_dense_reference_and_marginals():
    x, y = _clouds(30, 40, 3)
    res = ot_flow.sinkhorn(x + 1e3, y + 1e3, eps=0.1, tol=1e-9, progress=False)  # far from the origin
    p = res.plan()
    assert p.dtype == torch.float64 and p.shape == (30, 40)
    torch.testing.assert_close(p, dense_plan(res), rtol=1e-6, atol=1e-12)
    _, _, ref = dense_sinkhorn(torch.cdist(x, y) ** 2 / 2, res.a, res.b, res.eps)
    torch.testing.assert_close(p, ref, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(p.sum(0), res.b.double(), rtol=0, atol=1e-12)
    assert res.plan(torch.float32).dtype == torch.float32
    torch.testing.assert_close(res.row_marginal(), p.sum(1), rtol=1e-9, atol=1e-12)


def test_plan_size_guard_names_the_memory():
    x, y = _clouds(30, 40)
    res = ot_flow.sinkhorn(x, y, eps=0.1, progress=False)
    with pytest.raises(ValueError, match=r"30 x 40 coupling would take 9\.38 KiB.*max_bytes"):
        res.plan(max_bytes=1000)
    assert res.plan(max_bytes=None).shape == (30, 40)


# -- OTPlanSampler on its own -----------------------------------------------------------------


def test_bad_methods_and_arguments_raise_clearly():
    with pytest.raises(ValueError, match="unknown method 'emd'"):
        ot_flow.OTPlanSampler("emd")
    with pytest.raises(ValueError, match="reg"):
        ot_flow.OTPlanSampler("sinkhorn", reg=0.0)


def test_reg_maps_to_half_eps_and_normalize_cost():
    x, y = _clouds()
    assert ot_flow.OTPlanSampler("sinkhorn", reg=0.3).eps(x, y) == pytest.approx(0.15)
    big = float((torch.cdist(x, y) ** 2).max())
    assert max_squared_distance(x + 1e4, y + 1e4) == pytest.approx(big, rel=1e-9)
    assert ot_flow.OTPlanSampler("sinkhorn", reg=0.3, normalize_cost=True).eps(x, y) == pytest.approx(0.15 * big)
    # the plan is POT's: Sinkhorn on M = |x - y|^2 with reg, dense
    sampler = ot_flow.OTPlanSampler("sinkhorn", reg=0.3, tol=1e-10)
    _, _, ref = dense_sinkhorn(torch.cdist(x, y) ** 2, torch.full((20,), 1 / 20, dtype=torch.float64),
                            torch.full((24,), 1 / 24, dtype=torch.float64), 0.3)
    np.testing.assert_allclose(sampler.get_map(x, y), ref.numpy(), rtol=1e-6, atol=1e-12)


def test_joint_draws_follow_the_plan():
    """The streamed draws (with replacement) and the dense ones (without) both have the plan's law."""
    x, y = _clouds(6, 5)
    sampler = ot_flow.OTPlanSampler("sinkhorn", reg=1.0, tol=1e-10)
    p = sampler.get_map(x, y)
    g = torch.Generator().manual_seed(1)
    counts = np.zeros_like(p)
    i, j = sampler.sample_indices(x, y, batch_size=40_000, generator=g)
    np.add.at(counts, (i.numpy(), j.numpy()), 1)
    freq = counts / counts.sum()
    assert np.abs(freq - p).max() < 0.01  # 40,000 draws: about 4 standard errors
    # without replacement: distinct cells, every draw a cell of the plan
    i, j = sampler.sample_indices(x, y, batch_size=30, replace=False, generator=g)
    assert len(set(zip(i.tolist(), j.tolist()))) == 30
    with pytest.raises(ValueError, match="only 30 non-zero entries"):
        sampler.sample_map(p, 31, replace=False)
    # sample_map on a given plan: the flattened cells' law
    i, j = sampler.sample_map(p, 40_000, generator=g)
    counts = np.zeros_like(p)
    np.add.at(counts, (i, j), 1)
    assert np.abs(counts / 40_000 - p).max() < 0.01


def test_replace_false_guard_and_drop_in_shapes():
    x, y = _clouds(8, 8, 3)
    sampler = ot_flow.OTPlanSampler("sinkhorn", reg=0.5, max_dense_bytes=100)
    with pytest.raises(ValueError, match="would take"):
        sampler.sample_plan(x, y, replace=False)
    x0, x1 = sampler.sample_plan(x, y)  # with replacement: no matrix, no guard
    assert x0.shape == x1.shape == (8, 3)
    y0, y1 = torch.arange(8), torch.arange(8) + 100
    g = torch.Generator().manual_seed(0)
    a, b, la, lb = sampler.sample_plan_with_labels(x, y, y0, y1, generator=g)
    assert torch.equal(a, x[la]) and torch.equal(b, y[lb - 100])
    assert sampler.sample_plan_with_labels(x, y, None, y1)[2] is None
    traj = sampler.sample_trajectory(torch.stack([x, y, x + 1], dim=1))
    assert isinstance(traj, np.ndarray) and traj.shape == (8, 3, 3)


# -- side by side with torchcfm --------------------------------------------------------------


def _side_by_side(method, atol=1e-9, **kwargs):
    cfm = _torchcfm()
    x, y = _clouds(16, 16, 2)
    theirs, ours = cfm.OTPlanSampler(method, **kwargs), ot_flow.OTPlanSampler(method, tol=1e-10, **kwargs)
    p, q = ours.get_map(x, y), theirs.get_map(x, y)
    assert isinstance(p, np.ndarray) and p.shape == q.shape
    np.testing.assert_allclose(p, q, rtol=1e-5, atol=atol)
    # pair statistics of 4,000 draws each: mean squared distance of the pairs, and marginal counts
    np.random.seed(0)
    draws = 4000
    i, j = ours.sample_indices(x, y, batch_size=draws, generator=torch.Generator().manual_seed(0))
    ti, tj = theirs.sample_map(q, draws)
    cost = (torch.cdist(x, y) ** 2).numpy()
    expected = float((p * cost).sum() / p.sum())
    ours_cost, theirs_cost = cost[i.numpy(), j.numpy()], cost[ti, tj]
    spread = theirs_cost.std() / math.sqrt(draws)
    assert abs(ours_cost.mean() - expected) < 5 * spread
    assert abs(theirs_cost.mean() - expected) < 5 * spread
    for rows, cols in ((i.numpy(), j.numpy()), (ti, tj)):
        for ids, mass in ((rows, p.sum(1)), (cols, p.sum(0))):
            count, want = np.bincount(ids, minlength=len(mass)), mass / p.sum() * draws
            assert np.abs(count - want).max() < 5 * np.sqrt(want.max())
    # and the drop-in call itself
    a0, a1 = ours.sample_plan(x, y)
    b0, b1 = theirs.sample_plan(x, y)
    assert a0.shape == b0.shape and a1.shape == b1.shape and a0.dtype == b0.dtype


def test_sinkhorn_matches_torchcfm():
    _side_by_side("sinkhorn", reg=0.5)


def test_sinkhorn_normalized_cost_matches_torchcfm():
    _side_by_side("sinkhorn", reg=0.05, normalize_cost=True)


def test_exact_matches_torchcfm():
    if not _has_assignment():
        pytest.skip("ot_flow.solvers.assignment has not landed yet")
    _side_by_side("exact")


def test_unbalanced_matches_torchcfm():
    if not _has_unbalanced():
        pytest.skip("ot_flow.sinkhorn has no tau_a / tau_b yet")
    _side_by_side("unbalanced", reg=0.5, reg_m=1.0)


def test_partial_matches_torchcfm_and_is_the_balanced_plan():
    # POT stops its Bregman projections at 1,000, a few 1e-7 short of the plan (entries ~ 0.05)
    _side_by_side("partial", atol=1e-6, reg=0.5)
    _side_by_side("partial", reg=0.05, normalize_cost=True)
    x, y = _clouds(30, 24, 3)
    partial, balanced = ot_flow.OTPlanSampler("partial", reg=0.3), ot_flow.OTPlanSampler("sinkhorn", reg=0.3)
    np.testing.assert_array_equal(partial.get_map(x, y), balanced.get_map(x, y))
    assert repr(partial) == "OTPlanSampler(method='partial', reg=0.3, normalize_cost=False)"


def test_exact_draws_are_the_permutation():
    if not _has_assignment():
        pytest.skip("ot_flow.solvers.assignment has not landed yet")
    x, y = _clouds(12, 12, 2)
    sampler = ot_flow.OTPlanSampler("exact")
    perm = sampler.solve(x, y)
    i, j = sampler.sample_indices(x, y, replace=False, generator=torch.Generator().manual_seed(0))
    assert sorted(i.tolist()) == list(range(12)) and torch.equal(j, perm[i])
    p = sampler.get_map(x, y)
    assert np.count_nonzero(p) == 12 and p.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="as many points"):
        sampler.solve(x, y[:5])
