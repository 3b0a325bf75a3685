"""ot_flow: streaming optimal-transport couplings as torch ops, for flow matching."""

from ot_flow._extension import cuda_built, load as _load

_load()

from ot_flow import ops  # noqa: E402  (the ops need _C loaded first)
from ot_flow.samplers import OTPlanSampler, OTSampler, SemidiscreteSampler  # noqa: E402
from ot_flow.solvers.assignment import assignment  # noqa: E402
from ot_flow.solvers.divergence import sinkhorn_divergence  # noqa: E402
from ot_flow.solvers.sinkhorn import SinkhornResult, sinkhorn  # noqa: E402
from ot_flow.solvers.sinkhorn_batched_result import BatchedSinkhornResult  # noqa: E402
from ot_flow import data  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "data", "assignment", "sinkhorn", "sinkhorn_divergence", "SinkhornResult", "BatchedSinkhornResult", "OTSampler",
           "OTPlanSampler", "SemidiscreteSampler",
           "cuda_built", "__version__"]
