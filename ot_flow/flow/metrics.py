"""The papers' metrics of a learned flow (seed paper 002, section 4.1); lower is better for all.

Curvature and reconstruction error say how straight the flow is and how close its map comes to a
known OT map; log-likelihood / bits per dimension integrate the change of variables backwards;
energy distance and Sinkhorn divergence compare generated with held-out samples without a
pretrained network. Velocity fields are called as ``velocity(x, t)`` with t of shape (B,), as in
`ot_flow.flow.ode.odeint`, and must treat the samples of a batch independently (per-sample
divergences are read off batched vector-Jacobian products).
"""

import math

import torch

from ot_flow.flow.checks import (check_batch, check_callable, check_choice, check_int, check_number, check_output,
                                 check_points)
from ot_flow.flow.ode import odeint
from ot_flow.solvers import validation
from ot_flow.solvers.divergence import sinkhorn_divergence

__all__ = ["ESTIMATORS", "curvature", "flow_map", "map_error", "reconstruction_error", "divergence", "log_likelihood",
           "bits_per_dim", "standard_normal_log_prob", "energy_distance", "sinkhorn_distance"]

ESTIMATORS = ("exact", "hutchinson")


def _flat(x):
    return x.reshape(x.shape[0], -1)


def _solve(velocity, x, method, steps, **options):
    """odeint where ``steps`` sets the fixed-step methods' grid and adaptive dopri5 ignores it."""
    return odeint(velocity, x, method=method, steps=None if method == "dopri5" else steps, **options)


def curvature(velocity, x0, *, steps=50, return_endpoint=False):
    """kappa = mean_i integral_0^1 |v(x_t, t) - (x_1 - x_0)|^2 dt along Euler paths of ``steps`` steps.

    Zero exactly when every path is a straight line travelled at constant speed. One pass with O(B d)
    memory: the square is expanded into running float64 sums of v and |v|^2, so x_1 need not be known
    while the path is integrated. ``return_endpoint``: (kappa, x_1), x_1 being the Euler flow map
    that a reconstruction error on the same points would integrate again.
    """
    sum_v = sum_v2 = 0.0

    def recorded(x, t):
        nonlocal sum_v, sum_v2
        v = velocity(x, t)
        flat = _flat(v).double()
        sum_v = sum_v + flat
        sum_v2 = sum_v2 + flat.pow(2).sum(dim=1)
        return v

    with torch.no_grad():
        x1 = odeint(recorded, x0, method="euler", steps=steps).x
        delta = _flat(x1).double() - _flat(x0).double()
        # Uniform grid: the dt-weighted time integral is the mean over the `steps` evaluations.
        kappa = (sum_v2 - 2 * (delta * sum_v).sum(dim=1)) / steps + delta.pow(2).sum(dim=1)
    return (kappa.mean().item(), x1) if return_endpoint else kappa.mean().item()


def flow_map(velocity, x0, *, steps=50, method="euler", rtol=1e-5, atol=1e-5):
    """T_theta(x0): the flow's state at t = 1 from x0 at t = 0, without a graph.

    ``steps`` is the grid of the fixed-step methods; dopri5 ignores it and uses ``rtol``, ``atol``.
    """
    with torch.no_grad():
        return _solve(velocity, x0, method, steps, rtol=rtol, atol=atol).x


def map_error(mapped, x0, true_map):
    """mean_i |mapped_i - true_map(x0_i)|^2, squared norm summed over all event coordinates."""
    check_callable("true_map", true_map)
    with torch.no_grad():
        target = true_map(x0)
    check_output("true_map", target, x0.shape)
    return _flat(mapped - target).pow(2).sum(dim=1).mean().item()


def reconstruction_error(velocity, x0, true_map, *, steps=50, method="euler", rtol=1e-5, atol=1e-5):
    """mean_i |T_theta(x0_i) - true_map(x0_i)|^2 with T_theta the flow map (see map_error)."""
    return map_error(flow_map(velocity, x0, steps=steps, method=method, rtol=rtol, atol=atol), x0, true_map)


def _probes(estimator, probes, x, generator):
    """None for the exact trace; else Rademacher probes (probes, B, d), drawn once so that a
    likelihood integrates one smooth ODE instead of fresh noise at every stage."""
    check_choice("estimator", estimator, ESTIMATORS)
    check_int("probes", probes, 1)
    if estimator == "exact":
        return None
    signs = torch.randint(0, 2, (probes, *_flat(x).shape), generator=generator, device=x.device)
    return (2 * signs - 1).to(x.dtype)


def _vjp(out, x, cotangent):
    """cotangent^T d out / d x per sample, flattened; zero where out does not depend on x."""
    grad = None
    if out.requires_grad:
        (grad,) = torch.autograd.grad(out, x, cotangent, retain_graph=True, allow_unused=True)
    return torch.zeros_like(_flat(x)) if grad is None else _flat(grad)


def _velocity_and_divergence(velocity, x, t, probes):
    """v(x, t) and its per-sample divergence (B,), both detached; probes as from `_probes`."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(x, t)
        check_output("velocity", v, x.shape)
        flat = _flat(v)
        if probes is None:
            ones = torch.ones(flat.shape[0], dtype=flat.dtype, device=flat.device)
            div = sum(_vjp(flat[:, i], x, ones)[:, i] for i in range(flat.shape[1]))
        else:
            div = sum((_vjp(flat, x, eps) * eps).sum(dim=1) for eps in probes) / len(probes)
    return v.detach(), div.detach()


def _batch_time(t, x):
    if isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] == x.shape[0]:
        return t.to(dtype=x.dtype, device=x.device)
    if isinstance(t, torch.Tensor) and t.dim() == 0:
        t = t.item()
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
    raise ValueError(f"argument 't' must be a number or a tensor of shape ({x.shape[0]},), got {shape}")


def divergence(velocity, x, t, *, estimator="exact", probes=1, generator=None):
    """Per-sample divergence (B,) of v(., t) at x (event dimensions flattened), detached.

    "exact" sums the Jacobian's diagonal with one vector-Jacobian product per coordinate (fine for
    d up to a few hundred); "hutchinson" averages eps^T J eps over ``probes`` Rademacher probes drawn
    with ``generator`` (unbiased; exact when J is diagonal). ``t``: a number or a (B,) tensor.
    """
    check_callable("velocity", velocity)
    check_batch("x", x)
    noise = _probes(estimator, probes, x, generator)
    return _velocity_and_divergence(velocity, x, _batch_time(t, x), noise)[1]


def log_likelihood(velocity, x1, source_log_prob, *, steps=50, method="euler", estimator="exact", probes=1,
                   generator=None, rtol=1e-5, atol=1e-5):
    """log p_1(x1) per sample (B,) for the flow pushing the source density p_0 along v, detached.

    Integrates the augmented state (x, l) backwards from t = 1 to 0 with dx/dt = v and
    dl/dt = div v, l(1) = 0, so that log p_1(x1) = log p_0(x0) - integral_0^1 div v dt
    = source_log_prob(x0) + l(0). ``estimator``/``probes``/``generator`` as in `divergence`; the
    probes are drawn once per call. ``steps``, ``method``, ``rtol``, ``atol`` as in `flow_map`
    (dopri5 controls the error of x and l together).
    """
    check_callable("velocity", velocity)
    check_callable("source_log_prob", source_log_prob)
    check_batch("x1", x1)
    noise = _probes(estimator, probes, x1, generator)
    shape, batch = x1.shape, x1.shape[0]

    def augmented(z, t):
        v, div = _velocity_and_divergence(velocity, z[:, :-1].reshape(shape), t, noise)
        return torch.cat([_flat(v), div[:, None]], dim=1)

    with torch.no_grad():
        z1 = torch.cat([_flat(x1), x1.new_zeros(batch, 1)], dim=1)
        z0 = _solve(augmented, z1, method, steps, t0=1.0, t1=0.0, rtol=rtol, atol=atol).x
        log_p0 = source_log_prob(z0[:, :-1].reshape(shape))
    check_output("source_log_prob", log_p0, (batch,))
    return (log_p0 + z0[:, -1]).detach()


def bits_per_dim(log_prob, dim, *, log_scale=0.0):
    """Mean negative log-likelihood in bits per dimension: (-mean(log_prob) + log_scale) / (dim log 2).

    ``log_prob``: per-sample log densities (nats) of the data as the model sees it. When the model
    sees x = s * u (+ shift) of the data u one reports on, p_u(u) = p_x(x) * s^dim, so
    -log p_u = -log p_x - dim * log(s): pass ``log_scale = -dim * log(s)`` (nats, summed over the
    dimensions). Example: pixels u in [0, 256) fed as x = u / 256 give log_scale = dim * log(256),
    i.e. + 8 bits per dimension.
    """
    check_int("dim", dim, 1)
    log_scale = check_number("log_scale", log_scale)
    mean = torch.as_tensor(log_prob, dtype=torch.float64).mean().item()
    return (-mean + log_scale) / (dim * math.log(2))


def standard_normal_log_prob(x):
    """Per-sample log density (B,) of N(0, I) over all event coordinates of x (B, *event_shape)."""
    check_batch("x", x)
    flat = _flat(x)
    return -0.5 * flat.pow(2).sum(dim=1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


def _points(name, x):
    check_points(name, x)
    return _flat(x)


def _mean_distance(x, y, block, within):
    """Mean |x_i - y_j| over all pairs, or over pairs i != j when ``within`` (y is x)."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], block):
        for j in range(i if within else 0, y.shape[0], block):
            dist = torch.cdist(x[i:i + block], y[j:j + block])
            if within and i == j:
                # cdist's matrix-product form leaves rounding noise, not zeros, on the diagonal
                total = total + dist.sum(dtype=torch.float64) - dist.diagonal().sum(dtype=torch.float64)
            else:
                total = total + (2 if within else 1) * dist.sum(dtype=torch.float64)  # within: (i, j) and (j, i)
    pairs = x.shape[0] * (x.shape[0] - 1) if within else x.shape[0] * y.shape[0]
    return total.item() / pairs


def energy_distance(x, y, *, block=4096):
    """Squared energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between samples x (n, ...) and
    y (m, ...), event dimensions flattened.

    Unbiased: the within-sample terms are U-statistics (pairs i != j) and the cross term averages
    all n m pairs, so the estimate is zero in expectation when both samples come from one
    distribution (it can then be slightly negative). Blocks of ``block`` rows keep memory at
    O(block^2); distances are taken in the inputs' dtype and summed in float64.
    """
    x, y = _points("x", x), _points("y", y)
    validation.check_pair(x, y)
    check_int("block", block, 1)
    for name, points in (("x", x), ("y", y)):
        if points.shape[0] < 2:
            raise ValueError(f"argument '{name}' needs at least 2 points for its within-sample term, got {points.shape[0]}")
    with torch.no_grad():
        return (2 * _mean_distance(x, y, block, within=False) - _mean_distance(x, x, block, within=True)
                - _mean_distance(y, y, block, within=True))


def sinkhorn_distance(x, y, *, eps=0.05):
    """Debiased Sinkhorn divergence between samples x and y (event dimensions flattened), a float;
    ``eps`` relative to the cost's standard deviation, as in `ot_flow.sinkhorn_divergence`."""
    x, y = _points("x", x), _points("y", y)
    with torch.no_grad():
        return sinkhorn_divergence(x, y, eps=eps).item()
