"""Unbalanced and semi-unbalanced Sinkhorn (tau_a, tau_b < 1) against a dense float64 solver
written here, on every path, and the unbalanced Sinkhorn divergence (Sejourne et al. 2019)."""

import math

import pytest
import torch

import ot_flow
from ot_flow.solvers.costs import cost_matrix
from ot_flow.solvers.symmetric import symmetric_potential
from reference import dense_plan

TAUS = [(0.5, 0.7), (1.0, 0.3), (0.8, 1.0), (0.2, 0.2)]


def rho(eps, tau):
    return math.inf if tau == 1.0 else eps * tau / (1 - tau)


def dense_unbalanced(c, a, b, eps, tau_a, tau_b, iters=200_000, tol=1e-14):
    """Log-domain unbalanced Sinkhorn on a dense float64 cost: (f, g, P), P = a b exp((f + g - C) / eps)."""
    c, a, b = c.double(), a.double(), b.double()
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    for _ in range(iters):
        f_old, g_old = f, g
        f = -tau_a * eps * torch.logsumexp((g[None, :] - c) / eps + b.log()[None, :], dim=1)
        g = -tau_b * eps * torch.logsumexp((f[:, None] - c) / eps + a.log()[:, None], dim=0)
        if max((f - f_old).abs().max(), (g - g_old).abs().max()) < tol:
            break
    return f, g, a[:, None] * b[None, :] * torch.exp((f[:, None] + g[None, :] - c) / eps)


def problem(n=40, m=30, d=3, seed=0, shift=0.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) + shift
    y = torch.randn(m, d, generator=gen, dtype=torch.float64) + 0.5 + shift
    a = torch.rand(n, generator=gen, dtype=torch.float64) + 0.2
    b = torch.rand(m, generator=gen, dtype=torch.float64) + 0.2
    return x.to(dtype), y.to(dtype), a / a.sum(), b / b.sum()


def solve(x, y, a, b, **kw):
    kw.setdefault("progress", False)
    return ot_flow.sinkhorn(x, y, a, b, **kw)


def check_against_dense(res, tol):
    x, y = res.x.double(), res.y.double()
    c = cost_matrix(x, y, res.cost)
    f, g, plan = dense_unbalanced(c, res.a, res.b, res.eps, res.tau_a, res.tau_b)
    scale = float(c.abs().max())
    torch.testing.assert_close(res.f.double(), f, rtol=0, atol=tol * scale)
    torch.testing.assert_close(res.g.double(), g, rtol=0, atol=tol * scale)
    torch.testing.assert_close(dense_plan(res), plan, rtol=tol * 10, atol=tol * float(plan.max()))
    assert res.mass() == pytest.approx(float(plan.sum()), rel=10 * tol)
    assert res.transport_cost() == pytest.approx(float((plan * c).sum()), rel=10 * tol, abs=10 * tol * scale)
    return f, g, plan


@pytest.mark.parametrize("cost", ["sqeuclidean", "dot"])
@pytest.mark.parametrize("tau_a, tau_b", TAUS)
@pytest.mark.parametrize("cache", [True, False])
def test_matches_dense_unbalanced_sinkhorn(cost, tau_a, tau_b, cache):
    x, y, a, b = problem(seed=1)
    res = solve(x, y, a, b, eps=0.1, cost=cost, tau_a=tau_a, tau_b=tau_b, tol=1e-11, cost_cache=cache)
    assert res.converged and res.path == ("cached" if cache else "streamed")
    _, _, plan = check_against_dense(res, 1e-8)
    # The KL optimality conditions: P 1 = a exp(-f / rho_a), P^T 1 = b exp(-g / rho_b).
    ra, rb = rho(res.eps, tau_a), rho(res.eps, tau_b)
    torch.testing.assert_close(plan.sum(1), a * torch.exp(-res.f.double() / ra), rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(plan.sum(0), b * torch.exp(-res.g.double() / rb), rtol=1e-7, atol=1e-12)
    # The result's error is the relaxed row-marginal error |P 1 - a exp(-f / rho_a)|_1.
    assert res.error < 1e-11


@pytest.mark.parametrize("cost", ["sqeuclidean", "dot"])
def test_float32_matches_dense(cost):
    x, y, a, b = problem(60, 50, 4, seed=2, dtype=torch.float32)
    res = solve(x, y, a, b, eps=0.1, cost=cost, tau_a=0.6, tau_b=0.8, tol=1e-5)
    check_against_dense(res, 1e-4)


def test_tau_one_is_the_balanced_solver_bitwise_and_tau_near_one_approaches_it():
    x, y, a, b = problem(seed=3)
    plain = solve(x, y, a, b, eps=0.1, tol=1e-10)
    same = solve(x, y, a, b, eps=0.1, tol=1e-10, tau_a=1.0, tau_b=1.0)
    assert torch.equal(plain.f, same.f) and torch.equal(plain.g, same.g) and plain.errors == same.errors
    near = solve(x, y, a, b, eps=0.1, tol=1e-10, tau_a=1 - 1e-7, tau_b=1 - 1e-7)
    expected = dense_plan(plain)
    torch.testing.assert_close(dense_plan(near), expected, rtol=1e-4, atol=1e-6 * float(expected.max()))
    assert near.mass() == pytest.approx(1.0, abs=1e-5)
    far = solve(x, y, a, b, eps=0.1, tol=1e-10, tau_a=0.5, tau_b=0.5)
    assert abs(far.mass() - 1.0) > 1e-2


@pytest.mark.parametrize("cost", ["sqeuclidean", "dot"])
def test_semi_unbalanced_keeps_the_balanced_side_exact(cost):
    x, y, a, b = problem(seed=4)
    rows = solve(x, y, a, b, eps=0.05, cost=cost, tau_a=1.0, tau_b=0.3, tol=1e-10)
    plan = dense_plan(rows)
    torch.testing.assert_close(plan.sum(1), a, rtol=1e-8, atol=1e-12)
    assert float((plan.sum(0) - b).abs().sum()) > 1e-2  # the relaxed side moved
    assert rows.mass() == pytest.approx(1.0, abs=1e-9)
    cols = solve(x, y, a, b, eps=0.05, cost=cost, tau_a=0.3, tau_b=1.0, tol=1e-10)
    plan = dense_plan(cols)
    torch.testing.assert_close(plan.sum(0), b, rtol=1e-8, atol=1e-12)  # exact after the closing g-update
    assert float((plan.sum(1) - a).abs().sum()) > 1e-2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sqeuclidean_is_translation_and_scale_invariant(dtype):
    x, y, a, b = problem(50, 40, 3, seed=5)
    kw = dict(eps=0.05, tau_a=0.7, tau_b=0.4, tol=1e-9 if dtype == torch.float64 else 1e-5)
    base = solve(x.to(dtype), y.to(dtype), a, b, **kw)
    shift = torch.tensor([1e3, -2e3, 5e2], dtype=torch.float64)
    moved = solve((x + shift).to(dtype), (y + shift).to(dtype), a, b, **kw)
    scaled = solve((3.7 * x).to(dtype), (3.7 * y).to(dtype), a, b, **kw)
    tol = 1e-7 if dtype == torch.float64 else 2e-3
    for other, unit in ((moved, 1.0), (scaled, 3.7**2)):
        expected = dense_plan(base)
        torch.testing.assert_close(dense_plan(other), expected, rtol=tol, atol=tol * float(expected.max()))
        assert other.mass() == pytest.approx(base.mass(), rel=tol)
        assert other.transport_cost() == pytest.approx(unit * base.transport_cost(), rel=tol)
        assert other.renormalized_entropy() == pytest.approx(base.renormalized_entropy(), abs=tol)
        torch.testing.assert_close(other.f.double(), unit * base.f.double(), rtol=tol, atol=tol * unit)


@pytest.mark.parametrize("shift", [1.5, -4.0])
def test_dot_cost_with_a_translation_is_the_translated_problem(shift):
    # The frame's constant k = -|c|^2 changes the mass of an unbalanced plan: it must be in the
    # working cost, not added to f and g afterwards.
    x, y, a, b = problem(seed=6, shift=shift)
    res = solve(x, y, a, b, eps=0.5, relative_eps=False, cost="dot", tau_a=0.8, tau_b=0.9, tol=1e-11)
    assert bool((res.working.frame.center != 0).any())
    check_against_dense(res, 1e-8)
    # and the coupling moved with the translation, unlike the balanced one
    base = solve(x - shift, y - shift, a, b, eps=0.5, relative_eps=False, cost="dot", tau_a=0.8, tau_b=0.9, tol=1e-11)
    assert abs(res.mass() - base.mass()) > 1e-3


def test_entropy_map_and_sample_of_an_unbalanced_plan():
    x, y, a, b = problem(seed=7)
    res = solve(x, y, a, b, eps=0.2, tau_a=0.5, tau_b=0.6, tol=1e-11)
    plan = dense_plan(res)
    mass = float(plan.sum())
    assert res.mass() == pytest.approx(mass, rel=1e-9) and abs(mass - 1) > 1e-2
    p = plan / mass
    h = float(-(p * p.log()).sum())
    h_ab = float(-(a * a.log()).sum() - (b * b.log()).sum())
    assert res.renormalized_entropy() == pytest.approx(2 * h / h_ab - 1, abs=1e-9)
    torch.testing.assert_close(res.barycentric_map(), plan @ y / plan.sum(1, keepdim=True), rtol=1e-9, atol=1e-9)
    # sample(): rows of P(. | i), drawn by Gumbel-max; frequencies over many draws
    counts = torch.zeros_like(plan)
    draws = 3000
    gen = torch.Generator().manual_seed(0)
    for _ in range(draws // 100):
        for _ in range(100):
            counts[torch.arange(plan.shape[0]), res.sample(gen)] += 1
    conditional = plan / plan.sum(1, keepdim=True)
    assert float((counts / draws - conditional).abs().max()) < 0.05


def test_momentum_annealing_and_warm_start_reach_the_same_plan():
    x, y, a, b = problem(200, 150, 2, seed=8)
    kw = dict(eps=0.01, tau_a=0.99, tau_b=0.995, tol=1e-8)
    plain = solve(x, y, a, b, momentum=False, anneal=False, **kw)
    fast = solve(x, y, a, b, momentum=True, anneal=False, **kw)
    annealed = solve(x, y, a, b, **kw)
    assert plain.converged and fast.converged and annealed.converged
    assert fast.n_iter < 0.7 * plain.n_iter  # over-relaxation still pays off
    for other in (fast, annealed):
        torch.testing.assert_close(other.f, plain.f, rtol=0, atol=1e-6)
        torch.testing.assert_close(other.g, plain.g, rtol=0, atol=1e-6)
    warm = solve(x, y, a, b, init=(plain.f, plain.g), **kw)
    assert warm.n_iter <= 2
    shifted = solve(x, y, a, b, init=(plain.f + 0.3, plain.g - 0.3), **kw)  # a different start, same answer
    torch.testing.assert_close(shifted.f, plain.f, rtol=0, atol=1e-6)


def test_target_entropy_with_unbalanced_marginals():
    x, y, a, b = problem(100, 80, 3, seed=9)
    res = solve(x, y, a, b, target_entropy=0.3, entropy_tol=0.005, tau_a=0.8, tau_b=0.9)
    assert res.renormalized_entropy() == pytest.approx(0.3, abs=0.005)
    assert res.tau_a == 0.8 and res.tau_b == 0.9


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, True, "0.5", float("nan")])
def test_tau_out_of_range_names_the_argument(bad):
    x, y, _, _ = problem()
    for name in ("tau_a", "tau_b"):
        with pytest.raises(ValueError, match=name):
            ot_flow.sinkhorn(x, y, **{name: bad})
        with pytest.raises(ValueError, match=name):
            ot_flow.sinkhorn_divergence(x, y, **{name: bad})
        with pytest.raises(ValueError, match=name):
            ot_flow.OTSampler(**{name: bad})


def test_sampler_passes_the_relaxation_on():
    x, y, _, _ = problem(seed=10, dtype=torch.float32)
    sampler = ot_flow.OTSampler(eps=0.1, tau_a=0.9, tau_b=0.7)
    x0, x1 = sampler.pair(x, y, generator=torch.Generator().manual_seed(0))
    assert x1.shape == x0.shape
    assert sampler.last_plan.tau_a == 0.9 and sampler.last_plan.tau_b == 0.7
    assert abs(sampler.last_plan.mass() - 1.0) > 1e-3


# --- the unbalanced Sinkhorn divergence ---

def dense_ot(x, y, a, b, eps, tau, cost):
    """Sejourne et al.'s dual value at the dense optimum."""
    c = cost_matrix(x, y, cost)
    f, g, plan = dense_unbalanced(c, a, b, eps, tau, tau)
    r = rho(eps, tau)
    return a @ (-r * torch.expm1(-f / r)) + b @ (-r * torch.expm1(-g / r)) - eps * (plan.sum() - a.sum() * b.sum())


def dense_divergence(x, y, a, b, eps, tau, cost):
    return (dense_ot(x, y, a, b, eps, tau, cost) - 0.5 * dense_ot(x, x, a, a, eps, tau, cost)
            - 0.5 * dense_ot(y, y, b, b, eps, tau, cost) + 0.5 * eps * (a.sum() - b.sum()) ** 2)


@pytest.mark.parametrize("cost", ["sqeuclidean", "dot"])
def test_symmetric_potential_matches_dense(cost):
    x, _, a, _ = problem(30, 30, 2, seed=11, shift=2.0)
    res = symmetric_potential(x, a, eps=0.3, cost=cost, tau=0.6, tol=1e-12)
    f, g, plan = dense_unbalanced(cost_matrix(x, x, cost), a, a, 0.3, 0.6, 0.6)
    torch.testing.assert_close(res.p, f, rtol=0, atol=1e-9 * float(f.abs().max()))
    torch.testing.assert_close(res.row_mass(), plan.sum(1), rtol=1e-9, atol=1e-14)
    assert res.value == pytest.approx(float(dense_ot(x, x, a, a, 0.3, 0.6, cost)), rel=1e-9)


@pytest.mark.parametrize("cost", ["sqeuclidean", "dot"])
@pytest.mark.parametrize("tau", [0.3, 0.8])
def test_divergence_value_and_gradients_against_dense_finite_differences(cost, tau):
    x, y, a, b = problem(10, 8, 2, seed=12)
    eps = 0.4
    leaves = [t.clone().requires_grad_() for t in (x, y, a, b)]
    value = ot_flow.sinkhorn_divergence(*leaves, eps=eps, relative_eps=False, cost=cost, tol=1e-13, tau_a=tau,
                                        tau_b=tau)
    assert value.item() == pytest.approx(float(dense_divergence(x, y, a, b, eps, tau, cost)), rel=1e-9)
    value.backward()
    h = 1e-6
    args = [x, y, a, b]
    for k, leaf in enumerate(leaves):
        numeric = torch.zeros_like(args[k])
        for i in range(args[k].numel()):
            plus, minus = [t.clone() for t in args], [t.clone() for t in args]
            plus[k].view(-1)[i] += h
            minus[k].view(-1)[i] -= h
            diff = dense_divergence(*plus, eps, tau, cost) - dense_divergence(*minus, eps, tau, cost)
            numeric.view(-1)[i] = diff / (2 * h)
        torch.testing.assert_close(leaf.grad, numeric, rtol=1e-5, atol=1e-7)


def test_divergence_is_zero_on_equal_clouds_positive_otherwise_and_needs_one_tau():
    x, y, a, b = problem(40, 40, 3, seed=13)
    same = ot_flow.sinkhorn_divergence(x, x, a, a, eps=0.1, tau_a=0.7, tau_b=0.7, tol=1e-11)
    assert abs(same.item()) < 1e-9
    for seed in range(3):
        x, y, _, _ = problem(40, 30, 3, seed=20 + seed, shift=0.1 * seed)
        assert ot_flow.sinkhorn_divergence(x, y, eps=0.1, tau_a=0.5, tau_b=0.5).item() > 0
    balanced = ot_flow.sinkhorn_divergence(x, y, eps=0.1, tol=1e-10)
    near = ot_flow.sinkhorn_divergence(x, y, eps=0.1, tau_a=1 - 1e-8, tau_b=1 - 1e-8, tol=1e-10)
    assert near.item() == pytest.approx(balanced.item(), rel=1e-4)
    with pytest.raises(ValueError, match="tau_b"):
        ot_flow.sinkhorn_divergence(x, y, tau_a=0.5, tau_b=0.6)
