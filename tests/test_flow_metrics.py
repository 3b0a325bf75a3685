import math

import pytest
import torch

import ot_flow
from ot_flow.flow.metrics import (bits_per_dim, curvature, divergence, energy_distance, flow_map, log_likelihood,
                                  reconstruction_error, sinkhorn_distance, standard_normal_log_prob)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def spd(dim, seed, low=0.5, high=2.0):
    """A symmetric matrix with eigenvalues in [low, high] and its orthonormal eigenbasis."""
    g = gen(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    eig = low + (high - low) * torch.rand(dim, generator=g, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T, q, eig


def straight_field(q, eig):
    """The field of the straight paths x_t = ((1 - t) I + t M) x0 of x0 -> M x0, M = Q diag(eig) Q^T:
    v(x, t) = (M - I) ((1 - t) I + t M)^-1 x, diagonal in the eigenbasis."""

    def velocity(x, t):
        rate = (eig - 1) / (1 + t[:, None] * (eig - 1))
        return ((x @ q) * rate) @ q.T

    return velocity


def gaussian_log_prob(x, m):
    """log N(x; 0, M M^T), M symmetric."""
    z = torch.linalg.solve(m, x.T).T
    return -0.5 * z.pow(2).sum(1) - torch.linalg.slogdet(m)[1] - 0.5 * x.shape[1] * math.log(2 * math.pi)


def test_straight_flows_have_zero_curvature():
    g = gen(0)
    x0 = torch.randn(16, 3, generator=g, dtype=torch.float64)
    c = torch.randn(3, generator=g, dtype=torch.float64)
    assert abs(curvature(lambda x, t: c.expand_as(x), x0, steps=7)) < 1e-12
    assert abs(curvature(lambda x, t: x / (1 + t[:, None]), x0)) < 1e-12  # x0 -> 2 x0 along straight lines
    _, q, eig = spd(3, seed=1)
    assert abs(curvature(straight_field(q, eig), x0)) < 1e-12


def test_rotation_curvature_matches_closed_form():
    x0 = torch.randn(64, 2, generator=gen(2), dtype=torch.float64)
    omega = math.pi / 2
    rotation = lambda x, t: omega * torch.stack([-x[:, 1], x[:, 0]], dim=1)  # noqa: E731
    # x_t = R(omega t) x0: |v|^2 = omega^2 r^2, |x1 - x0|^2 = 2 r^2 (1 - cos omega), and the time
    # integral of v is x1 - x0, so kappa = E r^2 (omega^2 - 2 (1 - cos omega)).
    exact = x0.pow(2).sum(1).mean().item() * (omega ** 2 - 2 * (1 - math.cos(omega)))
    errors = [curvature(rotation, x0, steps=n) - exact for n in (100, 200)]
    assert 0 < errors[1] < 0.01 * exact
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.05)  # Euler: first order
    kappa, endpoint = curvature(rotation, x0, steps=100, return_endpoint=True)
    assert kappa == curvature(rotation, x0, steps=100)
    assert torch.equal(endpoint, flow_map(rotation, x0, steps=100))


def test_reconstruction_error_of_straight_fields():
    x0 = torch.randn(32, 4, generator=gen(3), dtype=torch.float64)
    m, q, eig = spd(4, seed=4)
    velocity = straight_field(q, eig)
    assert reconstruction_error(velocity, x0, lambda x: x @ m.T) < 1e-24
    assert reconstruction_error(lambda x, t: x / (1 + t[:, None]), x0, lambda x: 2 * x, steps=3) < 1e-24
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    assert reconstruction_error(velocity, x0, lambda x: x @ m.T + shift) == pytest.approx(5.25, rel=1e-12)
    # dopri5 ignores the fixed-step grid and reaches the map within its tolerances
    assert torch.allclose(flow_map(velocity, x0, method="dopri5", rtol=1e-9, atol=1e-9), x0 @ m.T, atol=1e-7)
    with pytest.raises(ValueError, match="'true_map'"):
        reconstruction_error(velocity, x0, lambda x: x[:, :2])


def test_exact_divergence_of_linear_and_nonlinear_fields():
    g = gen(5)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    div = divergence(lambda x, t: x @ a.T, x, 0.3)
    assert div.shape == (4,) and not div.requires_grad
    assert torch.allclose(div, torch.trace(a).expand(4), rtol=0, atol=1e-12)

    w = torch.randn(5, 5, generator=g, dtype=torch.float64)
    t = torch.rand(4, generator=g, dtype=torch.float64)
    field = lambda x, t: torch.tanh(x @ w.T + t[:, None])  # noqa: E731
    expected = torch.stack([torch.trace(torch.autograd.functional.jacobian(lambda xi: field(xi[None], t[i:i + 1])[0], x[i]))
                            for i in range(4)])
    assert torch.allclose(divergence(field, x, t), expected, rtol=0, atol=1e-12)


def test_divergence_with_event_shapes_and_constant_fields():
    x = torch.randn(3, 1, 4, 4, generator=gen(6), dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    for estimator in ("exact", "hutchinson"):
        div = divergence(lambda x, t: t.view(-1, 1, 1, 1) * x, x, t, estimator=estimator, generator=gen(7))
        assert torch.allclose(div, 16 * t, rtol=0, atol=1e-12)
        assert torch.equal(divergence(lambda x, t: torch.ones_like(x), x, 1.0, estimator=estimator), torch.zeros(3, dtype=torch.float64))


def test_hutchinson_is_exact_for_diagonal_and_unbiased_in_general():
    g = gen(8)
    diagonal = torch.diag(torch.randn(6, generator=g, dtype=torch.float64))
    x = torch.randn(2000, 6, generator=g, dtype=torch.float64)
    div = divergence(lambda x, t: x @ diagonal.T, x[:5], 0.0, estimator="hutchinson", generator=g)
    assert torch.allclose(div, torch.trace(diagonal).expand(5), rtol=0, atol=1e-12)

    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    probes = 4
    estimates = divergence(lambda x, t: x @ a.T, x, 0.0, estimator="hutchinson", probes=probes, generator=g)
    # Rademacher: Var(eps^T A eps) = 2 (|S|_F^2 - sum_i S_ii^2), S the symmetric part of A
    s = 0.5 * (a + a.T)
    std = math.sqrt(2 * (s.pow(2).sum() - s.diagonal().pow(2).sum()).item() / probes)
    assert abs(estimates.mean().item() - torch.trace(a).item()) < 4 * std / math.sqrt(len(x))
    assert estimates.std().item() == pytest.approx(std, rel=0.1)


def test_divergence_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="'estimator'"):
        divergence(lambda x, t: x, x, 0.0, estimator="skilling")
    with pytest.raises(ValueError, match="'probes'"):
        divergence(lambda x, t: x, x, 0.0, estimator="hutchinson", probes=0)
    with pytest.raises(ValueError, match="'t'"):
        divergence(lambda x, t: x, x, torch.zeros(3))
    with pytest.raises(ValueError, match="'velocity'"):
        divergence(lambda x, t: x.sum(1), x, 0.0)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_log_likelihood_of_a_scaled_gaussian(method):
    s, dim = 2.5, 3
    x1 = s * torch.randn(50, dim, generator=gen(9), dtype=torch.float64)
    # x_t = (1 + (s - 1) t) x0 pushes N(0, I) to N(0, s^2 I)
    velocity = lambda x, t: ((s - 1) / (1 + (s - 1) * t))[:, None] * x  # noqa: E731
    expected = standard_normal_log_prob(x1 / s) - dim * math.log(s)
    options = dict(method=method, rtol=1e-10, atol=1e-10)
    ll = log_likelihood(velocity, x1, standard_normal_log_prob, **options)
    assert ll.shape == (50,) and not ll.requires_grad
    assert torch.allclose(ll, expected, rtol=0, atol=1e-6)
    # Rademacher probes see a diagonal Jacobian exactly
    hutchinson = log_likelihood(velocity, x1, standard_normal_log_prob, estimator="hutchinson", generator=gen(10), **options)
    assert torch.allclose(hutchinson, ll, rtol=0, atol=1e-9)
    assert bits_per_dim(ll, dim) == pytest.approx(-expected.mean().item() / (dim * math.log(2)), rel=1e-8)


def test_log_likelihood_of_a_correlated_gaussian_with_hutchinson():
    dim = 3
    m, q, eig = spd(dim, seed=11)
    x1 = torch.randn(400, dim, generator=gen(12), dtype=torch.float64) @ m.T
    velocity = straight_field(q, eig)
    exact = log_likelihood(velocity, x1, standard_normal_log_prob, method="rk4", steps=10)
    assert torch.allclose(exact, gaussian_log_prob(x1, m), rtol=0, atol=1e-6)

    probes = 2
    estimate = log_likelihood(velocity, x1, standard_normal_log_prob, method="rk4", steps=10, estimator="hutchinson",
                              probes=probes, generator=gen(13))
    # Fixed probes over the trajectory: the estimated integral of div v is eps^T log(M) eps.
    log_m = q @ torch.diag(eig.log()) @ q.T
    std = math.sqrt(2 * (log_m.pow(2).sum() - log_m.diagonal().pow(2).sum()).item() / probes)
    errors = estimate - exact
    assert abs(errors.mean().item()) < 4 * std / math.sqrt(len(x1))
    assert errors.std().item() == pytest.approx(std, rel=0.15)


def test_log_likelihood_keeps_event_shapes_and_no_graph():
    x1 = torch.randn(4, 1, 2, 2, generator=gen(14), dtype=torch.float64)
    weight = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    shapes = []

    def source(x0):
        shapes.append(x0.shape)
        return standard_normal_log_prob(x0)

    ll = log_likelihood(lambda x, t: weight * x, x1, source, method="euler", steps=4)
    assert shapes == [x1.shape] and not ll.requires_grad
    # Euler backwards on v = x / 2 with steps of 1/4: x0 = (1 - 1/8)^4 x1, l(0) = -4 * (1/4) * 4 * (1/2)
    expected = standard_normal_log_prob((1 - 1 / 8) ** 4 * x1) - 2.0
    assert torch.allclose(ll, expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="'source_log_prob'"):
        log_likelihood(lambda x, t: x, x1, lambda x0: x0.sum(), steps=2)


def test_bits_per_dim_with_rescaled_data():
    u = torch.randn(100, 8, generator=gen(15), dtype=torch.float64)
    s = 1 / 256
    # the model sees x = s u with density N(0, s^2 I); reported in u's units, that is N(0, I)
    log_p_x = standard_normal_log_prob(u) - 8 * math.log(s)
    reported = bits_per_dim(log_p_x, 8, log_scale=-8 * math.log(s))
    assert reported == pytest.approx(bits_per_dim(standard_normal_log_prob(u), 8), rel=1e-12)
    assert bits_per_dim(log_p_x, 8) == pytest.approx(reported - 8, rel=1e-12)  # 8 bits per dimension
    with pytest.raises(ValueError, match="'dim'"):
        bits_per_dim(log_p_x, 0)


def test_standard_normal_log_prob():
    x = torch.randn(5, 2, 3, generator=gen(16), dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(dim=(1, 2))
    assert torch.allclose(standard_normal_log_prob(x), expected, rtol=0, atol=1e-12)


def naive_energy_distance(x, y):
    dist = lambda p, q: (p[:, None] - q[None]).norm(dim=-1)  # noqa: E731
    n, m = len(x), len(y)
    return (2 * dist(x, y).mean() - dist(x, x).sum() / (n * (n - 1)) - dist(y, y).sum() / (m * (m - 1))).item()


def test_energy_distance_matches_dense_computation_in_any_blocks():
    g = gen(17)
    x = torch.randn(53, 1, 2, 2, generator=g, dtype=torch.float64)
    y = torch.randn(31, 1, 2, 2, generator=g, dtype=torch.float64) + 0.3
    expected = naive_energy_distance(x.flatten(1), y.flatten(1))
    for block in (7, 31, 4096):
        assert energy_distance(x, y, block=block) == pytest.approx(expected, rel=1e-10)


def test_energy_distance_is_unbiased_and_detects_shifts():
    g = gen(18)
    repeats = [energy_distance(torch.randn(6, 2, generator=g, dtype=torch.float64),
                               torch.randn(6, 2, generator=g, dtype=torch.float64)) for _ in range(300)]
    values = torch.tensor(repeats)
    # the V-statistic would be biased upwards by (E|X-X'| + E|Y-Y'|) / 6, about 0.6 here
    assert abs(values.mean().item()) < 4 * values.std().item() / math.sqrt(len(values))
    x = torch.randn(400, 2, generator=g, dtype=torch.float64)
    y = torch.randn(400, 2, generator=g, dtype=torch.float64)
    assert abs(energy_distance(x, y)) < 0.05
    assert energy_distance(x, y + 1.0) > 0.5


def test_energy_distance_arguments():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="'y'"):
        energy_distance(x, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="'y'"):
        energy_distance(x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="'block'"):
        energy_distance(x, x, block=0)
    with pytest.raises(ValueError, match="'x'"):
        energy_distance(torch.zeros(4), x)


def test_sinkhorn_distance_flattens_events():
    g = gen(19)
    x = torch.randn(40, 1, 2, 2, generator=g, dtype=torch.float64)
    y = torch.randn(30, 1, 2, 2, generator=g, dtype=torch.float64) + 1.0
    value = sinkhorn_distance(x, y, eps=0.5)
    assert isinstance(value, float) and value > 0.5
    assert value == pytest.approx(ot_flow.sinkhorn_divergence(x.flatten(1), y.flatten(1), eps=0.5).item(), rel=1e-12)
