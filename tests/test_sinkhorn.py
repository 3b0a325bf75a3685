import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import ot_flow
from ot_flow.solvers import validation
from ot_flow.solvers.costs import cost_matrix, cost_std
from reference import dense_plan, dense_sinkhorn


def clouds(n, m, d, seed, dtype=torch.float64, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(m, d, generator=g, dtype=dtype) + shift


@pytest.mark.parametrize("cost", ["sqeuclidean", "dot"])
@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (37, 53, 3), (200, 131, 10)])
def test_matches_dense_reference(n, m, d, cost):
    x, y = clouds(n, m, d, seed=n + m)
    gen = torch.Generator().manual_seed(7)
    a = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(m, generator=gen, dtype=torch.float64) + 0.1
    a, b = a / a.sum(), b / b.sum()
    res = ot_flow.sinkhorn(x, y, a, b, eps=0.1, cost=cost, tol=1e-10)
    assert res.converged and res.error < 1e-10
    f_ref, g_ref, plan_ref = dense_sinkhorn(cost_matrix(x, y, cost), a, b, res.eps)
    shift = (res.f - f_ref).mean()
    torch.testing.assert_close(res.f - shift, f_ref, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(res.g + shift, g_ref, rtol=1e-7, atol=1e-7)
    plan = dense_plan(res)
    assert (plan.sum(1) - a).abs().sum() < 1e-9 and (plan.sum(0) - b).abs().sum() < 1e-9
    c = cost_matrix(x, y, cost)
    assert math.isclose(res.transport_cost(), float((plan_ref * c).sum()), rel_tol=1e-6, abs_tol=1e-12)
    h = -(plan_ref * plan_ref.log()).sum()
    h_ab = -(a * a.log()).sum() - (b * b.log()).sum()
    expected_e = 0.0 if h_ab == 0 else float(2 * h / h_ab - 1)
    assert res.renormalized_entropy() == pytest.approx(expected_e, abs=1e-7)
    torch.testing.assert_close(res.barycentric_map(), (plan_ref @ y) / plan_ref.sum(1, keepdim=True))


def test_marginal_error_is_the_reported_one():
    x, y = clouds(300, 300, 4, seed=1)
    res = ot_flow.sinkhorn(x, y, eps=0.02, tol=1e-3)
    plan = dense_plan(res)
    assert res.converged and res.error < 1e-3
    assert (plan.sum(0) - res.b).abs().sum() < 1e-12  # columns exact after the last g-update
    assert (plan.sum(1) - res.a).abs().sum().item() == pytest.approx(res.error, rel=1e-6)
    assert res.errors[-1] == res.error and len(res.errors) <= res.n_iter


def test_relative_eps_is_std_of_the_cost():
    x, y = clouds(150, 170, 5, seed=2)
    for cost in ("sqeuclidean", "dot"):
        c = cost_matrix(x, y, cost)
        assert cost_std(x, y, torch.full((150,), 1 / 150, dtype=torch.float64),
                        torch.full((170,), 1 / 170, dtype=torch.float64), cost) == pytest.approx(c.std(unbiased=False).item(), rel=1e-10)
        res = ot_flow.sinkhorn(x, y, eps=0.1, cost=cost)
        assert res.eps == pytest.approx(0.1 * c.std(unbiased=False).item(), rel=1e-10)


def test_tiny_eps_gives_the_exact_assignment():
    n = 200
    x, y = clouds(n, n, 2, seed=3, shift=0.0)
    c = cost_matrix(x, y, "sqeuclidean")
    rows, cols = linear_sum_assignment(c.numpy())
    res = ot_flow.sinkhorn(x, y, eps=1e-4, tol=1e-4, max_iter=50_000)
    assert res.converged
    # The barycentric map lands on the assigned point: nearest target to T(x_i) is sigma(i).
    nearest = torch.cdist(res.barycentric_map(), y).argmin(dim=1).numpy()
    assert np.mean(nearest[rows] == cols) >= 0.99
    assert res.renormalized_entropy() < 0.05


def test_huge_eps_gives_the_independent_coupling():
    x, y = clouds(300, 200, 3, seed=4)
    res = ot_flow.sinkhorn(x, y, eps=1e4)
    assert res.renormalized_entropy() > 0.999
    torch.testing.assert_close(res.barycentric_map(), y.mean(0).expand(300, 3), rtol=1e-3, atol=1e-3)


def test_one_dimensional_coupling_follows_sorted_order():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(400, 1, generator=g, dtype=torch.float64)
    y = torch.randn(400, 1, generator=g, dtype=torch.float64) * 2 + 3
    res = ot_flow.sinkhorn(x, y, eps=1e-4, tol=1e-4, max_iter=50_000)
    assert res.converged
    t = res.barycentric_map()[:, 0]
    order = torch.argsort(x[:, 0])
    # Monotone map, and T(x_(k)) close to y_(k).
    assert (torch.diff(t[order]) >= -1e-6).all()
    assert (t[order] - torch.sort(y[:, 0]).values).abs().median() < 0.02


def test_gaussian_transport_cost_matches_closed_form():
    # Source N(0, I_2), target N(mu, diag(s^2)): W2^2 / 2 = (|mu|^2 + sum (1 - s)^2) / 2.
    n = 3000
    g = torch.Generator().manual_seed(6)
    mu, s = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.5, 1.5], dtype=torch.float64)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = mu + s * torch.randn(n, 2, generator=g, dtype=torch.float64)
    exact = 0.5 * float(mu.square().sum() + (1 - s).square().sum())
    res = ot_flow.sinkhorn(x, y, eps=1e-3, tol=1e-3)
    # Sampling error of 3000 points in 2-D plus the entropic blur: a few percent.
    assert res.transport_cost() == pytest.approx(exact, rel=0.05)


def test_dot_and_sqeuclidean_give_the_same_coupling():
    x, y = clouds(120, 90, 4, seed=8)
    sq = ot_flow.sinkhorn(x, y, eps=0.3, relative_eps=False, cost="sqeuclidean", tol=1e-10)
    dot = ot_flow.sinkhorn(x, y, eps=0.3, relative_eps=False, cost="dot", tol=1e-10)
    torch.testing.assert_close(dense_plan(sq), dense_plan(dot), rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(sq.barycentric_map(), dot.barycentric_map())


def test_warm_start_and_momentum():
    x, y = clouds(500, 500, 2, seed=9)
    cold = ot_flow.sinkhorn(x, y, eps=0.001, momentum=False, anneal=False)
    fast = ot_flow.sinkhorn(x, y, eps=0.001, momentum=True, anneal=False)
    assert cold.converged and fast.converged
    assert fast.n_iter < 0.5 * cold.n_iter
    assert fast.transport_cost() == pytest.approx(cold.transport_cost(), rel=1e-3)
    warm = ot_flow.sinkhorn(x, y, eps=0.001, init=(fast.f, fast.g))
    assert warm.converged and warm.n_iter <= 2


def test_annealing_reaches_the_same_coupling_faster():
    x, y = clouds(500, 500, 2, seed=10)
    plain = ot_flow.sinkhorn(x, y, eps=0.001, momentum=False, anneal=False)
    annealed = ot_flow.sinkhorn(x, y, eps=0.001, momentum=False, anneal=True)
    assert annealed.converged and annealed.n_iter < 0.75 * plain.n_iter
    # Both stop at marginal error 1e-3, where couplings at eps = 0.001 differ by ~2e-3 in cost
    # (a solve to 1e-5 lies between them).
    assert annealed.transport_cost() == pytest.approx(plain.transport_cost(), rel=3e-3)


def test_target_entropy():
    x, y = clouds(500, 500, 8, seed=11)
    res = ot_flow.sinkhorn(x, y, eps=1.0, target_entropy=0.2, entropy_tol=0.01)
    assert res.renormalized_entropy() == pytest.approx(0.2, abs=0.01)


def test_float32_inputs_and_half_inputs():
    x, y = clouds(500, 400, 16, seed=12, dtype=torch.float32)
    res = ot_flow.sinkhorn(x, y, eps=0.05)
    assert res.converged and res.f.dtype == torch.float32
    ref = ot_flow.sinkhorn(x.double(), y.double(), eps=0.05)
    assert res.transport_cost() == pytest.approx(ref.transport_cost(), rel=1e-3)
    half = ot_flow.sinkhorn(x.bfloat16(), y.bfloat16(), eps=0.05)
    assert half.converged and half.f.dtype == torch.float32


def test_not_converged_warns():
    x, y = clouds(100, 100, 3, seed=13)
    with pytest.warns(RuntimeWarning, match="not converged after 3 iterations"):
        res = ot_flow.sinkhorn(x, y, eps=0.001, max_iter=3, anneal=False)
    assert not res.converged and res.n_iter == 3 and res.error > 1e-3


def test_out_of_range_problems_stop_with_an_error_naming_the_argument():
    x, y = clouds(50, 50, 2, seed=14, dtype=torch.float32)
    with pytest.raises(ValueError, match="argument 'eps'.*out of torch.float32's range"):
        ot_flow.sinkhorn(x * 1e18, y * 1e18, eps=1e-30, relative_eps=False, anneal=False, cost_cache=False)
    with pytest.raises(ValueError, match="arguments 'x' and 'y': their costs reach .* torch.float32"):
        ot_flow.sinkhorn(x * 1e20, y * 1e20, eps=1.0, cost_cache=True)


def test_called_from_a_compiled_function():
    x, y = clouds(64, 64, 3, seed=15, dtype=torch.float32)

    def loss(x, y):
        res = ot_flow.sinkhorn(x, y, eps=0.1)
        return (res.f.mean() + res.g.mean()) * 2

    torch.testing.assert_close(torch.compile(loss)(x, y), loss(x, y))


BAD = [
    (dict(x=torch.randn(5, 3), y=torch.randn(6, 2)), "same dimension"),
    (dict(x=torch.randn(5, 3).long(), y=torch.randn(6, 3)), "argument 'x' must be a floating-point"),
    (dict(x=torch.randn(0, 3), y=torch.randn(6, 3)), "argument 'x' is empty"),
    (dict(x=torch.full((5, 3), float("nan")), y=torch.randn(6, 3)), "argument 'x' contains NaN"),
    (dict(y=torch.randn(6, 3).index_fill(0, torch.tensor([4]), float("inf"))), "argument 'y' contains NaN or Inf"),
    (dict(x=torch.tensor([[float("inf")], [-float("inf")], [0.0], [1.0], [2.0]]), y=torch.randn(6, 1)),
     "argument 'x' contains NaN or Inf"),  # +inf and -inf: a sum of NaN
    (dict(eps=0.0), "argument 'eps' must be a finite number > 0"),
    (dict(eps=-1.0), "argument 'eps'"),
    (dict(tol=float("nan")), "argument 'tol'"),
    (dict(cost="l1"), "argument 'cost' must be one of"),
    (dict(a=torch.full((5,), 0.3)), "argument 'a' must sum to 1"),
    (dict(b=torch.tensor([0.5, 0.6, -0.1, 0.0, 0.0, 0.0])), "argument 'b' must be finite and non-negative"),
    (dict(a=torch.ones(4) / 4), "argument 'a' must be a 1-D tensor of length 5"),
    (dict(max_iter=0), "argument 'max_iter'"),
    (dict(init=(torch.zeros(4), torch.zeros(6))), r"argument 'init\[0\] \(f\)'"),
    (dict(target_entropy=1.5), "argument 'target_entropy'"),
]


def test_all_finite_is_decided_entry_by_entry_where_the_sum_overflows():
    big = torch.full((4, 2), 1e308, dtype=torch.float64)  # finite entries whose sum is inf
    assert validation.all_finite(big) and validation.all_finite(torch.randn(3, 5))
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not validation.all_finite(big.index_fill(0, torch.tensor([2]), bad))
        assert not validation.all_finite(torch.randn(3, 5).index_fill(1, torch.tensor([4]), bad))


@pytest.mark.parametrize("kwargs,message", BAD)
def test_bad_input(kwargs, message):
    args = dict(x=torch.randn(5, 3), y=torch.randn(6, 3))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ot_flow.sinkhorn(**args)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
@pytest.mark.parametrize("cache,limit_mib", [(False, 64), (True, 1024 + 64)])
def test_memory_stays_linear_unless_cached(cache, limit_mib):
    # 16384 x 16384: a dense float32 matrix alone is 1 GiB. Streamed, the solve must stay far
    # below it; cached, it holds exactly that one matrix of dot products.
    script = textwrap.dedent(f"""
        import warnings, torch, ot_flow

        def status(key):
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith(key))

        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        x = torch.randn(16384, 4); y = torch.randn(16384, 4)
        ot_flow.sinkhorn(x[:100], y[:100], eps=0.05, max_iter=2)  # thread pools, allocator
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current resident size
        base = status("VmRSS:")
        res = ot_flow.sinkhorn(x, y, eps=0.05, max_iter=3, cost_cache={cache})
        res.renormalized_entropy()
        print(res.path, (status("VmHWM:") - base) / 2**10)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    path, grown_mib = out.stdout.split()
    assert path == ("cached" if cache else "streamed")
    assert float(grown_mib) < limit_mib, f"peak RSS grew by {float(grown_mib):.0f} MiB"


@pytest.mark.cuda
def test_cuda_matches_cpu():
    x, y = clouds(3000, 2000, 16, seed=16, dtype=torch.float32)
    cpu = ot_flow.sinkhorn(x, y, eps=0.02)
    gpu = ot_flow.sinkhorn(x.cuda(), y.cuda(), eps=0.02)
    assert gpu.f.device.type == "cuda" and gpu.converged
    assert gpu.transport_cost() == pytest.approx(cpu.transport_cost(), rel=1e-4)
    assert gpu.renormalized_entropy() == pytest.approx(cpu.renormalized_entropy(), abs=1e-3)


def test_cached_and_streamed_paths_agree():
    x, y = clouds(700, 600, 32, seed=17, dtype=torch.float32)
    cached = ot_flow.sinkhorn(x, y, eps=0.02, cost_cache=True)
    streamed = ot_flow.sinkhorn(x, y, eps=0.02, cost_cache=False)
    assert (cached.path, streamed.path) == ("cached", "streamed")
    assert ot_flow.sinkhorn(x, y, eps=0.02).path == "cached"  # auto on the CPU: fits the budget
    assert cached.n_iter == streamed.n_iter
    torch.testing.assert_close(cached.f, streamed.f, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="argument 'cost_cache'"):
        ot_flow.sinkhorn(x, y, cost_cache="yes")
