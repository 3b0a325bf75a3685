"""Python entry points of the torch ops in namespace ``ot_flow`` (``torch.ops.ot_flow.*``)."""

from ot_flow.ops.barycentric import barycentric
from ot_flow.ops.lse import lse

__all__ = ["barycentric", "lse"]
