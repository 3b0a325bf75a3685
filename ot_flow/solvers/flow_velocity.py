"""The velocity of the Sinkhorn-divergence gradient flow at particles x (NSGF, seed 004).

For mu the empirical measure of the particles x and nu that of the targets y,

    u(x_i) = -(grad f_{mu,nu}(x_i) - grad f_{mu,mu}(x_i)) = T_{mu->nu}(x_i) - T_{mu->mu}(x_i),

since grad_x of a Sinkhorn potential is sum_j P(j | x) grad_x C(x, y_j), which is x - T(x) for the
squared Euclidean cost and -T(x) for the dot cost: the difference of the two barycentric maps
either way. The measures are held fixed (the potentials are solved, not differentiated through),
so this costs one Sinkhorn solve, one symmetric solve and two streaming barycentric passes.
"""

import torch

from ot_flow.solvers import costs, validation
from ot_flow.solvers.full_precision import autocast_off
from ot_flow.solvers.sinkhorn import sinkhorn
from ot_flow.solvers.symmetric import symmetric_potential

__all__ = ["sinkhorn_flow_velocity"]


@torch.no_grad()
@autocast_off
def sinkhorn_flow_velocity(x, y, a=None, b=None, *, eps=0.05, relative_eps=True, cost="sqeuclidean", tol=1e-3,
                           max_iter=10_000):
    """(n, d) velocity u(x_i) of the Sinkhorn gradient flow of the particles x toward the targets y.

    ``eps`` is relative to std(C(x, y)) when ``relative_eps``; both potentials use the same
    absolute eps. A particle step x + eta * u decreases the Sinkhorn divergence S(x, y) for a
    small enough eta.
    """
    validation.check_pair(x, y)
    costs.check_cost(cost)
    eps = validation.positive("eps", eps)
    wa = validation.weights("a", a, x.shape[0], x)
    wb = validation.weights("b", b, y.shape[0], y)
    if relative_eps:
        eps = eps * (costs.cost_std(x, y, wa, wb, cost) or 1.0)
    cross = sinkhorn(x, y, wa, wb, eps=eps, relative_eps=False, cost=cost, tol=tol, max_iter=max_iter)
    own = symmetric_potential(x, wa, eps=eps, cost=cost, tol=tol, max_iter=max_iter)
    return cross.barycentric_map() - own.barycentric_map()
