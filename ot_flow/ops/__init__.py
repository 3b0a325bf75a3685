"""The torch ops in namespace ``ot_flow`` (``torch.ops.ot_flow.*``), the ground floor: their
Python entry points, fake kernels and autograd, one file per op; the wrappers' argument checks
in ``_args``, the modes of their ``precision`` argument in ``precision``. The kernels are C++ / CUDA (csrc/); nothing here imports the floors above."""

from ot_flow.ops.assignment_dense import assignment_dense
from ot_flow.ops.barycentric import barycentric
from ot_flow.ops.gumbel_argmax import gumbel_argmax, seed_from
from ot_flow.ops.lse import lse
from ot_flow.ops.lse_dense import lse_dense
from ot_flow.ops.marginal_error import marginal_error
from ot_flow.ops.mips import mips
from ot_flow.ops.softmin import softmin
from ot_flow.ops.softmin_dense import softmin_dense

__all__ = ["assignment_dense", "barycentric", "gumbel_argmax", "lse", "lse_dense", "marginal_error", "mips",
           "seed_from", "softmin", "softmin_dense"]
