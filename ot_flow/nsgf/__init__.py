"""Neural Sinkhorn gradient flows (seed paper 004): the pool of (x, t, u) triples that particles
leave as they follow the Sinkhorn-divergence gradient flow toward the data (``pool``), on which a
velocity network is regressed, and NSGF++'s phase-transition time predictor and two-phase sampler
(``plus_plus``).

A library: it may import ``ot_flow.flow`` (pair streams, ODE solvers), ``ot_flow.solvers`` and
``ot_flow.distributed``, never ``ot_flow.experiments`` or ``ot_flow.cli`` (training NSGF from a
config lives in ``ot_flow.experiments.nsgf_training``).
"""

from ot_flow.nsgf.plus_plus import NSGFPlusPlus, TimePredictor
from ot_flow.nsgf.pool import SinkhornFlowPool

__all__ = ["SinkhornFlowPool", "NSGFPlusPlus", "TimePredictor"]
