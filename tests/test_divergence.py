import pytest
import torch

import ot_flow
from ot_flow.solvers.costs import cost_matrix
from reference import dense_sinkhorn


def clouds(n, m, d, seed, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64) + shift


def dense_divergence(x, y, eps, cost):
    def ot(p, q):
        a = torch.full((p.shape[0],), 1.0 / p.shape[0], dtype=torch.float64)
        b = torch.full((q.shape[0],), 1.0 / q.shape[0], dtype=torch.float64)
        f, g, _ = dense_sinkhorn(cost_matrix(p, q, cost), a, b, eps)
        return a @ f + b @ g

    return ot(x, y) - 0.5 * ot(x, x) - 0.5 * ot(y, y)


@pytest.mark.parametrize("cost", ["sqeuclidean", "dot"])
def test_matches_dense_reference_and_is_non_negative(cost):
    x, y = clouds(40, 30, 3, seed=1)
    value = ot_flow.sinkhorn_divergence(x, y, eps=0.7, relative_eps=False, cost=cost, tol=1e-12)
    assert value.item() == pytest.approx(dense_divergence(x, y, 0.7, cost).item(), rel=1e-8)
    for seed in range(5):
        x, y = clouds(50, 60, 4, seed=seed + 10, shift=0.1 * seed)
        assert ot_flow.sinkhorn_divergence(x, y, eps=0.1, cost=cost).item() > 0
    assert ot_flow.sinkhorn_divergence(x, x, eps=0.1, cost=cost, tol=1e-10).abs().item() < 1e-8


@pytest.mark.parametrize("cost", ["sqeuclidean", "dot"])
def test_gradcheck_in_x_and_y(cost):
    x, y = clouds(11, 9, 2, seed=2)
    x.requires_grad_()
    y.requires_grad_()
    fn = lambda x, y: ot_flow.sinkhorn_divergence(x, y, eps=0.5, relative_eps=False, cost=cost, tol=1e-13)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, y))


def test_weight_gradient_along_the_simplex():
    x, y = clouds(12, 10, 2, seed=3)
    g = torch.Generator().manual_seed(4)
    a = torch.rand(12, generator=g, dtype=torch.float64) + 0.5
    a = (a / a.sum()).requires_grad_()
    fn = lambda a: ot_flow.sinkhorn_divergence(x, y, a, eps=0.5, relative_eps=False, tol=1e-13)  # noqa: E731
    (grad_a,) = torch.autograd.grad(fn(a), a)
    direction = torch.randn(12, generator=g, dtype=torch.float64)
    direction -= direction.mean()  # stay on the simplex
    step = 1e-6
    numeric = (fn(a.detach() + step * direction) - fn(a.detach() - step * direction)) / (2 * step)
    assert (grad_a @ direction).item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-9)


def test_gradient_step_decreases_the_divergence():
    x, y = clouds(200, 200, 2, seed=5, shift=2.0)
    x.requires_grad_()
    value = ot_flow.sinkhorn_divergence(x, y, eps=0.05)
    (grad,) = torch.autograd.grad(value, x)
    moved = (x - 0.5 * x.shape[0] * grad).detach()
    assert ot_flow.sinkhorn_divergence(moved, y, eps=0.05) < 0.5 * value.detach()


def test_opcheck_of_the_custom_op():
    x, y = clouds(8, 6, 2, seed=6)
    a = torch.full((8,), 1 / 8, dtype=torch.float64)
    b = torch.full((6,), 1 / 6, dtype=torch.float64)
    torch.library.opcheck(torch.ops.ot_flow.sinkhorn_divergence.default,
                          (x.requires_grad_(), y, a, b, 0.5, "sqeuclidean", 1e-10, 1000))


def test_bad_input():
    x, y = clouds(5, 6, 2, seed=7)
    with pytest.raises(ValueError, match="argument 'eps'"):
        ot_flow.sinkhorn_divergence(x, y, eps=0)
    with pytest.raises(ValueError, match="same dimension"):
        ot_flow.sinkhorn_divergence(x, y[:, :1])
    with pytest.raises(ValueError, match="argument 'b' must sum to 1"):
        ot_flow.sinkhorn_divergence(x, y, b=torch.ones(6, dtype=torch.float64))
