"""NSGF's training set: trajectories of the Sinkhorn gradient flow from source particles toward
the data, kept as (x_k, t_k, v_k) triples for velocity matching (seed 004).

A trajectory starts from ``particles`` source points and a draw of as many data points, and takes
``num_steps`` explicit steps x <- x + eta * u(x) with u the Sinkhorn-flow velocity
(solvers/flow_velocity.py). Time is rescaled to [0, 1]: t_k = k / T and v_k = T * eta * u_k, so
that T Euler steps of a network fitted to the triples retrace the particles, and any ODE solver
over [0, 1] can sample from it.
"""

import time

import torch
from tqdm.auto import tqdm

from ot_flow.distributed import derived_seed
from ot_flow.flow.checks import check_data, check_int, check_source
from ot_flow.flow.pair_streams import PairStream
from ot_flow.solvers.flow_velocity import sinkhorn_flow_velocity

__all__ = ["SinkhornFlowPool"]


class SinkhornFlowPool(PairStream):
    """Minibatches (x, t, v) drawn from a pool of simulated Sinkhorn-flow steps.

    Args:
        source: ``source(n, generator) -> Tensor`` of starting particles.
        data: (N, ...) target points; each trajectory draws ``particles`` of them.
        num_steps: T, flow steps per trajectory (NSGF++: at most 5).
        step_size: eta of x <- x + eta * u(x).
        particles: particles per trajectory (the empirical measures of the velocity).
        trajectories: independent trajectories in the pool (pool size = T * trajectories * particles).
        eps: entropic regularisation of the velocity, relative to std(C).
        batch_size, seed: minibatches for the regression; the base of every draw.
        device: where the flow is simulated (default: the data's).
        progress: tqdm over the trajectories.
    """

    def __init__(self, source, data, *, num_steps, step_size, particles=1024, trajectories=16, eps=0.1,
                 batch_size=256, seed=0, device=None, progress=False):
        super().__init__(batch_size, seed)
        check_source(source)
        check_data(data)
        for name, value in (("num_steps", num_steps), ("particles", particles), ("trajectories", trajectories)):
            check_int(name, value, 1)
        if not isinstance(step_size, (int, float)) or not step_size > 0:
            raise ValueError(f"argument 'step_size' must be > 0, got {step_size!r}")
        self.num_steps, self.step_size, self.eps = num_steps, float(step_size), float(eps)
        device = torch.device(device) if device is not None else data.device
        start = time.perf_counter()
        xs, ts, vs, ends = [], [], [], []
        for r in tqdm(range(trajectories), disable=not progress, desc="Sinkhorn flow", leave=False):
            gen = torch.Generator().manual_seed(derived_seed(self.seed, r, 11))
            y = data[torch.randint(data.shape[0], (particles,), generator=gen).to(data.device)].to(device)
            x = source(particles, gen).to(device, data.dtype)
            for k in range(num_steps):
                u = sinkhorn_flow_velocity(x.flatten(1), y.flatten(1), eps=eps).reshape(x.shape)
                xs.append(x)
                ts.append(torch.full((particles,), k / num_steps, dtype=x.dtype, device=device))
                vs.append(num_steps * self.step_size * u)
                x = x + self.step_size * u
            ends.append(x)
        self.x, self.t, self.v = torch.cat(xs), torch.cat(ts), torch.cat(vs)
        self.endpoints = torch.cat(ends)  # where the simulated particles stop, for inspection
        # The simulation is a one-off cost; drawing from the pool afterwards costs nothing.
        self.setup_seconds = time.perf_counter() - start

    def batches(self, start_step=0):
        step = start_step
        while True:
            gen = torch.Generator().manual_seed(derived_seed(self.seed, step))
            rows = torch.randint(self.x.shape[0], (self.batch_size,), generator=gen).to(self.x.device)
            self.pairs += self.batch_size
            yield self.x[rows], self.t[rows], self.v[rows]
            step += 1

    def describe(self):
        return {"coupling": "sinkhorn_flow", "flow_steps": self.num_steps, "step_size": self.step_size,
                "eps": self.eps, "pool_size": self.x.shape[0]}
