"""The problem as the kernels see it: the clouds in their working frame (frame.py), with the
cost offsets and eps in the frame's unit, and the conversions of potentials in and out of it
(warm starts, column biases, row barycentres of any column potential)."""

import math
from dataclasses import dataclass

import torch

from ot_flow import distributed
from ot_flow.ops import barycentric
from ot_flow.solvers.frame import Frame

__all__ = ["WorkingProblem", "check_range", "row_barycentres", "warm_start"]


@dataclass
class WorkingProblem:
    """The problem as the kernels see it: points x', y' of the frame, their offsets alpha',
    beta' (float64), eps' = eps / s^2 and the dot-cost potentials f', g' (points' dtype)."""

    frame: Frame
    x: torch.Tensor
    y: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    eps: float = None
    f: torch.Tensor = None
    g: torch.Tensor = None

    @staticmethod
    def of(x, y, a, b, cost, reduce=None):
        frame = Frame.of([(x, a), (y, b)], cost, reduce)
        xw, yw = frame.points(x), frame.points(y)
        return WorkingProblem(frame, xw, yw, frame.offsets(xw), frame.offsets(yw))

    def relaxed_offsets(self, offsets):
        """alpha'' = alpha' + k / (2 s^2) (float64): the offsets of the working cost C'' = C / s^2
        that the unbalanced update needs, the frame's constant k folded in (see the module notes)."""
        return offsets + 0.5 * self.frame.constant / self.frame.unit

    def column_bias(self, b, dtype):
        """h_j = g'_j / eps' + log b_j: the softmax over j of <x'_i, y'_j> / eps' + h_j is P(j | i)."""
        return self.g.to(dtype) / self.eps + b.log().to(dtype)

    def potentials_out(self, dtype):
        """(f, g) of the user's cost, in ``dtype``."""
        frame = self.frame
        return frame.potential_out(self.f, self.alpha).to(dtype), frame.potential_out(self.g, self.beta).to(dtype)


def row_barycentres(x, y, g, b, eps, cost, precision="highest"):
    """T_i = sum_j P_ij y_j / sum_j P_ij for any coupling whose column potential is g (the row
    potential only scales rows), computed in the frame of x and y (no cancellation far from the
    origin), with dot products of ``precision`` (ot_flow.ops.precision)."""
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64, device=x.device)
    w = WorkingProblem.of(x, y, a, b.double(), cost)
    w.eps = eps / w.frame.unit
    w.g = w.frame.potential_in(g, w.beta)
    mean, _ = barycentric(w.x, w.y, w.column_bias(b, w.x.dtype), 1.0 / w.eps, precision=precision)
    return w.frame.point_out(mean)


def warm_start(init, work, process_group, balanced=True):
    """The working dot-cost potentials of a warm start (f, g) of the user's cost. f and g may
    trade a constant without changing the coupling: it is chosen so that max f' = 0, which a
    start such as (f + 1e300, g - 1e300) needs so as not to drown in rounding (subtracting the
    largest entry is exact for the entries near it, as a mean would not be). Unbalanced, the
    constant is no longer free (it moves mass between the KL terms, and an unbalanced solve
    undoes it only at the slow rate tau_a tau_b per iteration): the start is taken as given."""
    if not (isinstance(init, (tuple, list)) and len(init) == 2):
        raise ValueError("argument 'init' must be a pair (f, g) of potentials")
    f, g = init
    for name, p, off in (("init[0] (f)", f, work.alpha), ("init[1] (g)", g, work.beta)):
        if not isinstance(p, torch.Tensor) or p.shape != off.shape:
            raise ValueError(f"argument '{name}' must be a tensor of shape {tuple(off.shape)}")
        if not torch.isfinite(p).all():
            raise ValueError(f"argument '{name}' contains NaN or Inf")
    fw = work.frame.potential_in(f.to(work.alpha.device), work.alpha)
    gw = work.frame.potential_in(g.to(work.beta.device), work.beta)
    if not balanced:
        if not (torch.isfinite(fw).all() and torch.isfinite(gw).all()):
            raise ValueError("argument 'init': the potentials are out of float64's range in this problem's unit")
        return fw.to(work.x.dtype), gw.to(work.x.dtype)
    level = fw.max().reshape(1)
    if process_group is not None:  # the largest entry over every rank's shard
        world = distributed.group_info(process_group)[1]
        level = distributed.all_gather_uneven(level, [1] * world, process_group).max().reshape(1)
    fw, gw = fw - level, gw + level
    if not (torch.isfinite(fw).all() and torch.isfinite(gw).all()):
        raise ValueError("argument 'init': the potentials are out of float64's range in this problem's unit; "
                         "pass the potentials of an earlier solve")
    dtype = work.x.dtype
    return fw.to(dtype), gw.to(dtype)


def check_range(work, eps, process_group=None):
    """Refuses problems whose costs or potentials the points' dtype cannot hold, on every rank."""
    dtype = work.x.dtype
    top = torch.finfo(dtype).max / 8  # room for the potentials' log-sum-exp terms

    def check():
        frame = work.frame
        reach = (float(work.alpha.abs().max()) + float(work.beta.abs().max())
                 + float(work.x.double().norm(dim=1).max() * work.y.double().norm(dim=1).max()))
        cost_reach = frame.unit * reach + abs(frame.constant)
        if not cost_reach < top:
            raise ValueError(f"arguments 'x' and 'y': their costs reach {cost_reach:.3g}, beyond what {dtype} "
                             "potentials can hold; pass float64 points or rescale them")
        logs = math.log(work.x.shape[0]) + math.log(work.y.shape[0]) + 1.0
        working_eps = eps / frame.unit
        reach_w = reach + 1.0  # the working logits are <x', y'> / eps', with |x'|, |y'| about 1
        if not (eps * logs < top and 0 < working_eps and reach_w / working_eps < top):
            raise ValueError(f"argument 'eps': the absolute eps {eps:.3g} is out of {dtype}'s range for these "
                             f"points (their costs reach {cost_reach:.3g}); eps above about 1e6 x std(C) already "
                             "gives the independent coupling, and eps below about 1e-30 x std(C) exceeds what "
                             "float32 resolves: pass an eps in between, or float64 points")

    distributed.checked_on_ranks(check, process_group)
