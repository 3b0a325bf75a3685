"""The Sinkhorn-flow velocity u = T_{mu->nu} - T_{mu->mu} (NSGF): against dense float64
Sinkhorn, the entropic Gaussian closed form, descent of the divergence, and independence of
threads and devices."""

import math

import pytest
import torch

import ot_flow
from ot_flow.solvers.costs import cost_matrix
from ot_flow.solvers.flow_velocity import sinkhorn_flow_velocity
from reference import dense_sinkhorn


def dense_velocity(x, y, eps):
    """u from dense float64 plans: the cross plan by plain Sinkhorn, the self plan likewise."""
    n, m = x.shape[0], y.shape[0]
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    b = torch.full((m,), 1.0 / m, dtype=torch.float64)
    _, _, cross = dense_sinkhorn(cost_matrix(x, y, "sqeuclidean"), a, b, eps, tol=1e-12)
    _, _, own = dense_sinkhorn(cost_matrix(x, x, "sqeuclidean"), a, a, eps, tol=1e-12)
    return cross @ y / cross.sum(1, keepdim=True) - own @ x / own.sum(1, keepdim=True)


@pytest.mark.parametrize("n, m, d", [(1, 5, 2), (23, 17, 3), (64, 97, 8)])
def test_velocity_matches_dense_reference(n, m, d):
    g = torch.Generator().manual_seed(n * 1000 + m)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) * 0.7 + 1.5
    eps = 2.0
    u = sinkhorn_flow_velocity(x, y, eps=eps, relative_eps=False, tol=1e-11)
    assert torch.allclose(u, dense_velocity(x, y, eps), atol=1e-7)


def gaussian_velocity(x, m1, s1, m2, s2, eps):
    """Entropic OT between N(m1, s1^2 I) and N(m2, s2^2 I), cost |x - y|^2 / 2: the plan is Gaussian
    with cross-covariance c = 2 s^2 t^2 / (eps + sqrt(eps^2 + 4 s^2 t^2)) per coordinate, so
    T(x) = m_y + c / s1^2 (x - m1), and u = T_{mu,nu} - T_{mu,mu}."""
    def cross(s, t):
        return 2 * s * s * t * t / (eps + math.sqrt(eps * eps + 4 * s * s * t * t))

    return (m2 - m1) + (cross(s1, s2) - cross(s1, s1)) / s1 ** 2 * (x - m1)


def test_velocity_matches_the_entropic_gaussian_closed_form():
    g = torch.Generator().manual_seed(3)
    d, n, eps = 2, 6000, 1.0
    m1, s1 = torch.tensor([0.5, -0.5], dtype=torch.float64), 1.0
    m2, s2 = torch.tensor([2.0, 1.0], dtype=torch.float64), 1.6
    x = m1 + s1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = m2 + s2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    u = sinkhorn_flow_velocity(x, y, eps=eps, relative_eps=False, tol=1e-8)
    expected = gaussian_velocity(x, m1, s1, m2, s2, eps)
    # Sampling error of both empirical measures: a few percent of the velocity's size at n = 6000.
    relative = (u - expected).norm() / expected.norm()
    assert relative < 0.05, relative
    # The slope of u along x (the part the closed form pins down beyond the mean shift).
    slope = ((u - u.mean(0)) * (x - x.mean(0))).sum() / (x - x.mean(0)).square().sum()
    c12 = 2 * s1 ** 2 * s2 ** 2 / (eps + math.sqrt(eps ** 2 + 4 * s1 ** 2 * s2 ** 2))
    c11 = 2 * s1 ** 4 / (eps + math.sqrt(eps ** 2 + 4 * s1 ** 4))
    assert float(slope) == pytest.approx((c12 - c11) / s1 ** 2, abs=0.03)


@pytest.mark.parametrize("seed", range(3))
def test_a_small_particle_step_decreases_the_sinkhorn_divergence(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(400, 2, generator=g, dtype=torch.float64)
    y = 0.5 * torch.randn(300, 2, generator=g, dtype=torch.float64) + torch.tensor([3.0, -1.0], dtype=torch.float64)
    eps = 0.5
    before = ot_flow.sinkhorn_divergence(x, y, eps=eps, relative_eps=False, tol=1e-9).item()
    u = sinkhorn_flow_velocity(x, y, eps=eps, relative_eps=False, tol=1e-9)
    for eta in (0.5, 0.1, 0.02):
        after = ot_flow.sinkhorn_divergence(x + eta * u, y, eps=eps, relative_eps=False, tol=1e-9).item()
        assert after < before
    # First order: the decrease is eta * <grad S, u> = eta * |u|^2 / n (u is minus the gradient per unit mass).
    eta = 1e-3
    after = ot_flow.sinkhorn_divergence(x + eta * u, y, eps=eps, relative_eps=False, tol=1e-11).item()
    assert (before - after) / eta == pytest.approx(float(u.square().sum(1).mean()), rel=0.02)


def test_velocity_does_not_depend_on_threads_or_float_path():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(700, 5, generator=g, dtype=torch.float64)
    y = torch.randn(900, 5, generator=g, dtype=torch.float64) + 1
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sinkhorn_flow_velocity(x, y, eps=0.1, tol=1e-10)
        torch.set_num_threads(max(2, threads))
        many = sinkhorn_flow_velocity(x, y, eps=0.1, tol=1e-10)
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(one, many, atol=1e-9)
    single = sinkhorn_flow_velocity(x.float(), y.float(), eps=0.1, tol=1e-5)
    assert single.dtype == torch.float32
    assert torch.allclose(single.double(), one, atol=2e-3)


@pytest.mark.cuda
def test_velocity_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1000, 16, generator=g, dtype=torch.float64)
    y = torch.randn(1200, 16, generator=g, dtype=torch.float64) + 0.5
    cpu = sinkhorn_flow_velocity(x, y, eps=0.1, tol=1e-10)
    gpu = sinkhorn_flow_velocity(x.cuda(), y.cuda(), eps=0.1, tol=1e-10)
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-8)


def test_velocity_rejects_bad_input():
    with pytest.raises(ValueError, match="'eps'"):
        sinkhorn_flow_velocity(torch.randn(4, 2), torch.randn(5, 2), eps=-1.0)
    with pytest.raises(ValueError, match="same dimension"):
        sinkhorn_flow_velocity(torch.randn(4, 2), torch.randn(5, 3))
