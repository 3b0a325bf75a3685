"""Flow matching around the couplings, as a library: velocity networks (``networks``), ODE
solvers (``ode``), the papers' metrics (``metrics``), tasks (``tasks``: synthetic targets, with
the true OT map where one is known, and ``make_task``; ``datasets``: finite data sets, scikit-learn's
digits, user files and image folders), pair streams that put a coupling into training
(``pair_streams``) and the trainer (``trainer``).

It may import the floors below it (``ot_flow.samplers``, ``ot_flow.solvers``, ``ot_flow.data``,
``ot_flow.ops``, ``ot_flow.distributed``), never ``ot_flow.nsgf`` (which builds on it),
``ot_flow.experiments`` (the configs, run directories and comparisons behind
``python -m ot_flow compare``) or ``ot_flow.cli``."""

from ot_flow.flow.networks import VelocityMLP, VelocityUNet, make_velocity_model
from ot_flow.flow.ode import ODESolution, odeint
from ot_flow.flow.pair_streams import IndependentPairs, OTPairs, PairStream, SemidiscretePairs
from ot_flow.flow.tasks import make_task
from ot_flow.flow.trainer import CheckpointError, FlowMatchingTrainer
from ot_flow.flow import metrics

__all__ = ["VelocityMLP", "VelocityUNet", "make_velocity_model", "odeint", "ODESolution", "PairStream",
           "IndependentPairs", "OTPairs", "SemidiscretePairs", "make_task", "FlowMatchingTrainer", "CheckpointError",
           "metrics"]
