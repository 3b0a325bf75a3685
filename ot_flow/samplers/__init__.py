"""Samplers: couplings turned into training pairs (they join the ops and solvers to training)."""

from ot_flow.samplers.ot_sampler import OTSampler
from ot_flow.samplers.plan_sampler import OTPlanSampler
from ot_flow.samplers.semidiscrete_sampler import SemidiscreteSampler

__all__ = ["OTSampler", "OTPlanSampler", "SemidiscreteSampler"]
