"""Flow matching around the couplings: velocity networks, ODE solvers, the papers' metrics,
tasks with known OT maps, training with the coupling as a component, and the I-FM / OT-FM /
SD-FM comparison behind ``python -m ot_flow compare``."""

from ot_flow.flow.networks import VelocityMLP, VelocityUNet, make_velocity_model
from ot_flow.flow.ode import ODESolution, odeint
from ot_flow.flow.pair_streams import IndependentPairs, OTPairs, PairStream, SemidiscretePairs
from ot_flow.flow.tasks import make_task
from ot_flow.flow.trainer import CheckpointError, FlowMatchingTrainer
from ot_flow.flow import metrics

__all__ = ["VelocityMLP", "VelocityUNet", "make_velocity_model", "odeint", "ODESolution", "PairStream",
           "IndependentPairs", "OTPairs", "SemidiscretePairs", "make_task", "FlowMatchingTrainer", "CheckpointError",
           "metrics"]
