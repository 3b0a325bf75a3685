"""The Sinkhorn solver wherever the points lie: translation and scale invariance (the working
frame), degenerate clouds, warm starts, float32 entropies, autocast, and its messages."""

import math
import warnings
from unittest import mock

import pytest
import torch

import ot_flow
from ot_flow.solvers.costs import cost_matrix, cost_std


def clouds(n=300, m=250, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64) + 0.5


def direction(d, seed=1):
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return v / v.norm()


def agreement(i, j):
    return float((i == j).double().mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shift", [1e2, 1e4, 1e6])
def test_translating_both_clouds_changes_nothing(shift, dtype):
    """Moved by up to 1e6 x their spread, float32 clouds give the coupling, cost, entropy, map and
    samples of the same (rounded) points solved where they are centred, in float64."""
    x, y = clouds()
    t = shift * direction(3)
    xs, ys = (x + t).to(dtype), (y + t).to(dtype)  # what the user holds, rounded at the offset
    xc, yc = xs.double() - t, ys.double() - t  # exactly those points, back at the origin
    ref = ot_flow.sinkhorn(xc, yc, eps=0.05, tol=1e-6)
    res = ot_flow.sinkhorn(xs, ys, eps=0.05, tol=1e-6)
    assert res.converged and res.error < 1e-6
    assert res.eps == pytest.approx(ref.eps, rel=1e-6)
    assert res.transport_cost() == pytest.approx(ref.transport_cost(), rel=1e-4)
    assert res.renormalized_entropy() == pytest.approx(ref.renormalized_entropy(), abs=1e-4)
    torch.testing.assert_close(res.barycentric_map().double() - t, ref.barycentric_map(), atol=2e-4 + 1e-7 * shift, rtol=0)
    # sqeuclidean potentials are translation invariant up to the constant f and g may trade
    df = res.f.double() - ref.f
    torch.testing.assert_close(df - df.mean(), torch.zeros_like(df), atol=2e-4, rtol=0)
    samples = res.sample(torch.Generator().manual_seed(3)), ref.sample(torch.Generator().manual_seed(3))
    assert agreement(*samples) > 0.97


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1e3, 1e6])
def test_scaling_both_clouds_changes_only_the_unit_of_the_cost(scale):
    x, y = clouds(seed=4)
    ref = ot_flow.sinkhorn(x, y, eps=0.05, tol=1e-6)
    res = ot_flow.sinkhorn((x * scale).float(), (y * scale).float(), eps=0.05, tol=1e-6)
    assert res.converged
    assert res.eps == pytest.approx(ref.eps * scale ** 2, rel=1e-5)
    assert res.transport_cost() == pytest.approx(ref.transport_cost() * scale ** 2, rel=1e-4)
    assert res.renormalized_entropy() == pytest.approx(ref.renormalized_entropy(), abs=1e-4)
    torch.testing.assert_close(res.barycentric_map().double() / scale, ref.barycentric_map(), atol=2e-5, rtol=0)
    assert agreement(res.sample(torch.Generator().manual_seed(5)), ref.sample(torch.Generator().manual_seed(5))) > 0.97


def test_dot_cost_coupling_is_unchanged_by_a_translation_and_its_cost_moves_by_the_known_amount():
    x, y = clouds(120, 90, 2, seed=6)
    t = 300.0 * direction(2)
    ref = ot_flow.sinkhorn(x, y, eps=0.2, relative_eps=False, cost="dot", tol=1e-8)
    res = ot_flow.sinkhorn(x + t, y + t, eps=0.2, relative_eps=False, cost="dot", tol=1e-8)
    assert res.converged
    assert res.renormalized_entropy() == pytest.approx(ref.renormalized_entropy(), abs=1e-7)
    torch.testing.assert_close(res.barycentric_map() - t, ref.barycentric_map(), atol=1e-8, rtol=0)
    # -<x + t, y + t> = -<x, y> - <x, t> - <t, y> - |t|^2, summed against a coupling with marginals a, b
    moved = ref.transport_cost() - float(x.mean(0) @ t) - float(y.mean(0) @ t) - float(t @ t)
    assert res.transport_cost() == pytest.approx(moved, rel=1e-10)
    # the potentials keep their contract against the user's cost
    c = cost_matrix(x + t, y + t, "dot")
    plan = res.a[:, None] * res.b[None, :] * torch.exp((res.f[:, None] + res.g[None, :] - c) / res.eps)
    assert float((plan.sum(0) - res.b).abs().sum()) < 1e-6


def test_cost_spread_survives_a_large_offset():
    x, y = clouds(200, 200, 2, seed=7)
    w = torch.full((200,), 1 / 200, dtype=torch.float64)
    expected = float(cost_matrix(x, y, "sqeuclidean").std(unbiased=False))
    for shift in (1e4, 1e5, 1e7):
        t = shift * direction(2)
        assert cost_std(x + t, y + t, w, w, "sqeuclidean") == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("cost", ["sqeuclidean", "dot"])
def test_cost_spread_in_the_solves_frame_is_the_same(cost):
    # sinkhorn() passes its working frame to cost_std instead of computing the same frame twice
    from ot_flow.solvers.working_problem import WorkingProblem

    x, y = clouds(300, 200, 3, seed=8)
    x, y = x.float() + 40, y.float() + 41
    a = torch.full((300,), 1 / 300, dtype=torch.float64)
    b = torch.softmax(torch.randn(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 0)
    frame = WorkingProblem.of(x, y, a, b, cost).frame
    expected = cost_std(x, y, a, b, cost)
    with mock.patch("ot_flow.solvers.costs.Frame.of", side_effect=AssertionError("the frame was computed again")):
        assert cost_std(x, y, a, b, cost, frame=frame) == expected  # the same frame, so the same code path


def test_far_from_origin_float32_example_of_the_issue():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 2, generator=g) + 1000, torch.randn(400, 2, generator=g) + 1000.5
    res = ot_flow.sinkhorn(x, y)
    ref = ot_flow.sinkhorn(x.double() - 1000, y.double() - 1000)
    assert res.converged
    assert res.transport_cost() == pytest.approx(ref.transport_cost(), rel=1e-3)
    assert res.renormalized_entropy() == pytest.approx(ref.renormalized_entropy(), abs=1e-3)
    assert 0.2 < res.renormalized_entropy() < 0.9


def test_identical_points_give_the_independent_coupling_in_float32():
    res = ot_flow.sinkhorn(torch.ones(100, 3), torch.ones(80, 3))
    assert res.converged
    assert res.transport_cost() == pytest.approx(0.0, abs=1e-12)
    assert res.renormalized_entropy() == pytest.approx(1.0, abs=1e-9)
    value = ot_flow.sinkhorn_divergence(torch.ones(100, 3), torch.ones(80, 3))
    assert float(value) == pytest.approx(0.0, abs=1e-6)  # float32 potentials of size eps


def test_target_entropy_that_cannot_move_warns_at_once():
    with pytest.warns(RuntimeWarning, match="cannot be reached"):
        res = ot_flow.sinkhorn(torch.ones(100, 3), torch.ones(80, 3), target_entropy=0.2)
    assert math.isfinite(res.transport_cost()) and abs(res.transport_cost()) < 1e-9
    sampler = ot_flow.OTSampler(target_entropy=0.2)
    x0 = torch.randn(256, 3, generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match="cannot be reached"):
        sampler.pair(x0, torch.ones(256, 3))
    assert sampler.last_plan.n_iter < 50  # a solve or two, not 12 solves of 10,000 iterations


def dense_entropy(res):
    """The renormalized entropy of a result's coupling, from its potentials, in float64."""
    c = cost_matrix(res.x.double(), res.y.double(), res.cost)
    log_p = res.a.log()[:, None] + res.b.log()[None, :] + (res.f.double()[:, None] + res.g.double()[None, :] - c) / res.eps
    h = -(log_p.exp() * log_p).sum()
    h_ab = -(res.a * res.a.log()).sum() - (res.b * res.b.log()).sum()
    return float(2 * h / h_ab - 1)


def test_float32_entropy_at_small_eps_is_that_of_its_potentials():
    """At eps = 1e-4 the entropy is a sum of terms of size 1 / eps that cancel to O(1): float32
    barycentres gave 0.156 (cached) and 0.054 (streamed) where the potentials' coupling has 0.0505."""
    x, y = clouds(300, 300, 2, seed=8)
    entropies = []
    for cache in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # float32 may not reach tol at this eps
            res = ot_flow.sinkhorn(x.float(), y.float(), eps=1e-4, tol=1e-2, max_iter=3000, cost_cache=cache)
        assert res.path == ("cached" if cache else "streamed")
        assert res.renormalized_entropy() == pytest.approx(dense_entropy(res), abs=2e-3)
        entropies.append(res.renormalized_entropy())
    assert entropies[0] == pytest.approx(entropies[1], abs=0.01)


def test_float32_target_entropy_picks_the_eps_of_float64():
    x, y = clouds(300, 300, 2, seed=8)
    picked32 = ot_flow.sinkhorn(x.float(), y.float(), target_entropy=0.1, entropy_tol=0.005)
    picked64 = ot_flow.sinkhorn(x, y, target_entropy=0.1, entropy_tol=0.005)
    assert picked32.eps == pytest.approx(picked64.eps, rel=0.2)


def test_a_warm_start_far_off_is_the_same_coupling():
    x, y = clouds(150, 150, 2, seed=9)
    cold = ot_flow.sinkhorn(x, y, tol=1e-6)
    warm = ot_flow.sinkhorn(x, y, tol=1e-6, init=(cold.f + 1e300, cold.g - 1e300))
    assert warm.converged
    assert warm.transport_cost() == pytest.approx(cold.transport_cost(), rel=1e-5)
    near = ot_flow.sinkhorn(x, y, tol=1e-6, init=(cold.f + 1e6, cold.g - 1e6))
    assert near.n_iter <= 2 and near.transport_cost() == pytest.approx(cold.transport_cost(), rel=1e-6)


def test_solvers_are_autocast_safe():
    x, y = clouds(200, 180, 4, seed=10)
    x, y = x.float(), y.float()
    plain = ot_flow.sinkhorn(x, y)
    sampler = ot_flow.OTSampler()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ot_flow.sinkhorn(x, y)
        pairs = sampler.pair(x, y, generator=torch.Generator().manual_seed(0))
        value = ot_flow.sinkhorn_divergence(x, y)
    assert inside.f.dtype == torch.float32
    torch.testing.assert_close(inside.f, plain.f)
    assert pairs[1].dtype == torch.float32
    assert float(value) == pytest.approx(float(ot_flow.sinkhorn_divergence(x, y)), rel=1e-5)


def test_half_points_in_the_divergence():
    x, y = clouds(80, 70, 3, seed=11)
    xh = x.half().requires_grad_()
    value = ot_flow.sinkhorn_divergence(xh, y.half())
    assert value.dtype == torch.float16
    assert float(value) == pytest.approx(float(ot_flow.sinkhorn_divergence(x.half().float(), y.half().float())), rel=2e-3)
    value.backward()
    assert xh.grad.dtype == torch.float16 and torch.isfinite(xh.grad).all()


def test_divergence_gradient_holds_the_relative_eps_fixed():
    """The documented contract: with relative_eps the absolute eps is std(C) x eps of the current
    points, and the gradient is that of S at that absolute eps."""
    x, y = clouds(60, 50, 2, seed=12)
    x = x.requires_grad_()
    ot_flow.sinkhorn_divergence(x, y, eps=0.3, tol=1e-10).backward()
    w = torch.full((60,), 1 / 60, dtype=torch.float64)
    eps_abs = 0.3 * cost_std(x.detach(), y, w, torch.full((50,), 1 / 50, dtype=torch.float64), "sqeuclidean")
    direction_ = torch.randn(60, 2, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    h = 1e-5

    def at_fixed_eps(points):
        return float(ot_flow.sinkhorn_divergence(points, y, eps=eps_abs, relative_eps=False, tol=1e-12))

    fd = (at_fixed_eps(x.detach() + h * direction_) - at_fixed_eps(x.detach() - h * direction_)) / (2 * h)
    assert float((x.grad * direction_).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_transport_cost_of_points_that_require_grad_is_quiet():
    x, y = clouds(50, 40, 2, seed=14)
    res = ot_flow.sinkhorn(x.requires_grad_(), y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(res.transport_cost(), float) and isinstance(res.renormalized_entropy(), float)
    assert not res.x.requires_grad


def test_huge_coordinates_either_work_or_say_which_argument():
    x, y = clouds(50, 40, 2, seed=15)
    res = ot_flow.sinkhorn(x * 1e150, y * 1e150)
    ref = ot_flow.sinkhorn(x, y)
    assert res.renormalized_entropy() == pytest.approx(ref.renormalized_entropy(), abs=1e-5)
    with pytest.raises(ValueError, match="arguments 'x' and 'y'.*float32"):
        ot_flow.sinkhorn((x * 1e19).float(), (y * 1e19).float())
    with pytest.raises(ValueError, match="arguments 'x' and 'y'.*float64"):
        ot_flow.sinkhorn(x * 1e160, y * 1e160)


@pytest.mark.parametrize("kwargs, name", [
    (dict(target_entropy="0.2"), "target_entropy"),
    (dict(target_entropy=1.5), "target_entropy"),
    (dict(entropy_tol=-1), "entropy_tol"),
    (dict(eps=1e300), "eps"),
    (dict(progress="yes"), "progress"),
    (dict(max_iter=True), "max_iter"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    x, y = clouds(30, 20, 2, seed=16)
    with pytest.raises(ValueError, match=f"argument '{name}'"):
        ot_flow.sinkhorn(x.float(), y.float(), **kwargs)


def test_meta_points_are_refused_clearly():
    with pytest.raises(ValueError, match="argument 'x'.*meta"):
        ot_flow.sinkhorn(torch.empty(30, 3, device="meta"), torch.empty(20, 3, device="meta"))


def test_progress_bar_only_when_asked_or_long(capsys):
    x, y = clouds(100, 90, 2, seed=17)
    ot_flow.sinkhorn(x, y, progress=True)
    assert "sinkhorn" in capsys.readouterr().err
    ot_flow.sinkhorn(x, y)  # "auto": a short solve stays quiet
    ot_flow.sinkhorn(x, y, progress=False)
    assert capsys.readouterr().err == ""


def test_sampler_refuses_points_of_other_shapes_and_warns_on_torchcfm_order():
    sampler = ot_flow.OTSampler()
    with pytest.raises(ValueError, match="same shape per point"):
        sampler.pair(torch.randn(8, 3, 32, 32), torch.randn(8, 1, 64, 48))
    x0, x1 = torch.randn(16, 2), torch.randn(16, 2)
    y0, y1 = torch.arange(16), torch.arange(16)
    with pytest.warns(UserWarning, match="torchcfm"):
        sampler.pair(x0, x1, y0, y1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, x1p, y1p = sampler.pair(x0, x1, y1)
    assert torch.equal(x1p, x1[y1p])


@pytest.mark.cuda
@pytest.mark.parametrize("shift", [1e3, 1e6])
def test_translation_and_scale_on_cuda_match_the_cpu(shift):
    x, y = clouds(seed=18)
    t = shift * direction(3)
    for transform in (lambda p: p + t, lambda p: p * 1e-4):
        xs, ys = transform(x).float(), transform(y).float()
        cpu = ot_flow.sinkhorn(xs, ys, eps=0.05, tol=1e-6)
        gpu = ot_flow.sinkhorn(xs.cuda(), ys.cuda(), eps=0.05, tol=1e-6)
        assert gpu.converged
        assert gpu.transport_cost() == pytest.approx(cpu.transport_cost(), rel=1e-4)
        assert gpu.renormalized_entropy() == pytest.approx(cpu.renormalized_entropy(), abs=1e-4)
        torch.testing.assert_close(gpu.barycentric_map().cpu(), cpu.barycentric_map(), atol=1e-3, rtol=1e-4)
        assert agreement(gpu.sample(torch.Generator().manual_seed(1)).cpu(),
                         cpu.sample(torch.Generator().manual_seed(1))) > 0.97
