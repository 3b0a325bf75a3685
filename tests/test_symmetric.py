"""OT_eps(a, a) by the averaged symmetric iteration, against dense float64 Sinkhorn."""

import pytest
import torch

import ot_flow
from ot_flow.solvers.costs import cost_matrix
from ot_flow.solvers.symmetric import symmetric_potential
from problems import random_problem


@pytest.mark.parametrize("n, d", [(1, 3), (7, 1), (131, 5), (300, 16)])
@pytest.mark.parametrize("cost", ["sqeuclidean", "dot"])
@pytest.mark.parametrize("eps", [0.05, 1.0])
def test_symmetric_potential_is_the_fixed_point(n, d, cost, eps):
    x, _, _ = random_problem(n, 1, d, torch.float64)
    a = torch.rand(n, dtype=torch.float64) + 0.1
    a /= a.sum()
    c = cost_matrix(x, x, cost)
    eps_abs = eps * float(c.std()) if n > 1 else eps
    res = symmetric_potential(x, a, eps=eps_abs, cost=cost, tol=1e-11)
    # A symmetric potential whose plan has marginal a is unique: the dense plan checks it exactly.
    plan = a[:, None] * a[None, :] * torch.exp((res.p[:, None] + res.p[None, :] - c) / eps_abs)
    assert torch.allclose(plan.sum(1), a, rtol=0, atol=1e-10)
    assert res.value == pytest.approx(float(2 * a @ res.p))
    expected_map = (plan @ x) / plan.sum(1, keepdim=True)
    assert torch.allclose(res.barycentric_map(), expected_map, atol=1e-8)


def test_symmetric_potential_agrees_with_the_general_solver():
    x, _, _ = random_problem(200, 1, 4, torch.float64)
    res = symmetric_potential(x, eps=0.5, tol=1e-10)
    general = ot_flow.sinkhorn(x, x, eps=0.5, relative_eps=False, tol=1e-10)
    assert torch.allclose(res.p, 0.5 * (general.f + general.g).double(), atol=1e-7)


def test_symmetric_potential_converges_in_few_iterations_at_small_eps():
    x, _, _ = random_problem(512, 1, 8, torch.float32)
    c = cost_matrix(x.double(), x.double(), "sqeuclidean")
    res = symmetric_potential(x, eps=0.01 * float(c.std()), tol=1e-4)
    assert res.n_iter <= 30 and res.error < 1e-4


def test_symmetric_potential_rejects_bad_input():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="'eps'"):
        symmetric_potential(x, eps=0.0)
    with pytest.raises(ValueError, match="'x'"):
        symmetric_potential(torch.full((3, 2), float("nan")), eps=1.0)
    with pytest.raises(ValueError, match="'a'"):
        symmetric_potential(x, torch.ones(4, dtype=torch.float64) / 4, eps=1.0)
    with pytest.raises(RuntimeError, match="did not reach"):
        symmetric_potential(torch.randn(200, 2), eps=1e-3, tol=1e-14, max_iter=2)
