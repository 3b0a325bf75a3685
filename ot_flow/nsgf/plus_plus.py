"""NSGF++ (seed 004): a few Sinkhorn-flow steps bring noise close to the data quickly, then a
straight flow finishes the way.

Three networks: the NSGF velocity of a short Sinkhorn flow (at most 5 steps, learned by velocity
matching), a straight flow v_s(x, t) from noise to data (flow matching), and a phase-transition
time predictor t(x) trained to tell where a point x_t = (1 - t) x0 + t x1 sits on the straight
paths. Sampling takes the NSGF steps, asks the predictor at which time of the straight flow the
particles have arrived, and integrates the straight flow from there to t = 1.
"""

import math

import torch
from torch import nn

from ot_flow.flow.checks import check_int
from ot_flow.flow.ode import odeint

__all__ = ["TimePredictor", "NSGFPlusPlus"]


class TimePredictor(nn.Module):
    """t(x) in (0, 1): an MLP on the flattened point with a sigmoid output."""

    def __init__(self, shape, width=256, depth=3):
        super().__init__()
        dim = math.prod(shape)
        layers, features = [], dim
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.SiLU()]
            features = width
        layers.append(nn.Linear(features, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return torch.sigmoid(self.net(x.reshape(x.shape[0], -1)))[:, 0]


class NSGFPlusPlus(nn.Module):
    """The NSGF++ sampler.

    Args:
        nsgf: velocity of the Sinkhorn-flow phase on [0, 1] (trained on a pool of ``nsgf_steps`` steps).
        straight: velocity of the straight flow from noise (t = 0) to data (t = 1).
        predictor: :class:`TimePredictor`.
        nsgf_steps: Euler steps of the first phase (its training grid, at most 5 in the paper).
    """

    def __init__(self, nsgf, straight, predictor, nsgf_steps):
        super().__init__()
        check_int("nsgf_steps", nsgf_steps, 1)
        self.nsgf, self.straight, self.predictor, self.nsgf_steps = nsgf, straight, predictor, nsgf_steps

    @torch.no_grad()
    def sample(self, x0, straight_steps, *, return_time=False):
        """(x, nfe): samples from noise x0 with ``straight_steps`` Euler steps of the straight flow
        after the NSGF phase; nfe counts the velocity evaluations of both phases (the predictor's
        single call is counted as one)."""
        check_int("straight_steps", straight_steps, 1)
        x = odeint(self.nsgf, x0, method="euler", steps=self.nsgf_steps).x
        t0 = self.predictor(x).clamp(0.0, 1.0)
        # Each particle continues from its own predicted time: Euler on the straight flow with
        # per-sample steps (1 - t0) / K.
        t = t0.to(x.dtype)
        h = ((1 - t) / straight_steps).reshape(-1, *([1] * (x.dim() - 1)))
        for _ in range(straight_steps):
            x = x + h * self.straight(x, t)
            t = t + h.reshape(-1)
        nfe = self.nsgf_steps + straight_steps + 1
        return (x, nfe, t0) if return_time else (x, nfe)
