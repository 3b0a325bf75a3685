"""Samplers: couplings turned into training pairs (third floor: may import ``ot_flow.solvers``,
``ot_flow.ops`` and ``ot_flow.distributed``; the data loaders and flow matching build on them).

``OTSampler`` pairs by a batch coupling (Sinkhorn, or the exact assignment), ``OTPlanSampler`` is
torchcfm's API on the same solvers, ``SemidiscreteSampler`` pairs noise with data by a fitted
semidiscrete potential (its fit in a room of its own), ``QuasiNormal`` the Sobol noise of that fit.
"""

from ot_flow.samplers.ot_sampler import OTSampler
from ot_flow.samplers.plan_sampler import OTPlanSampler
from ot_flow.samplers.semidiscrete_sampler import SemidiscreteSampler

__all__ = ["OTSampler", "OTPlanSampler", "SemidiscreteSampler"]
