"""The ``precision`` argument of the streaming ops and of everything built on them: how the dot
products ``<x_i, y_j>`` are formed.

- ``"highest"`` (default): float32-accurate dot products.
- ``"tf32"``: TF32 tensor-core products on CUDA, about 1e-3 relative error in the dot products.
- ``"bf16"``: bfloat16 tensor-core products on CUDA, about 1e-2 relative error.

The CPU computes every mode exactly (float32/float64 accumulation), and float64 inputs always
take the exact path, so a mode only trades accuracy for speed on CUDA with float16, bfloat16 or
float32 inputs. On the CUDA tensor-core engine (opt-in, ``OT_FLOW_CUDA_ENGINE=tensor_cores``)
``"highest"`` is split TF32 (three TF32 products), or, with ``OT_FLOW_ENGINE_HIGHEST=split_f16``,
split float16 (each problem scaled by a power of two, three float16 products at twice the rate;
same accuracy, plus an absolute error of about 2^-39 max|x| max|y| per term; ``mips`` stays in
split TF32). The C++ ops check the same list (csrc/ops/checks.cpp, parse_precision), for
callers of ``torch.ops.ot_flow.*``; this module is the check of the Python wrappers, solvers,
samplers and fake kernels."""

__all__ = ["DEFAULT", "MODES", "checked"]

MODES = ("highest", "tf32", "bf16")
DEFAULT = "highest"


def checked(owner, value):
    """``value`` when it names a mode; else a ValueError naming ``owner``'s argument 'precision'
    and the allowed values (``owner`` as in the other argument errors, e.g. ``ot_flow.lse``)."""
    if not isinstance(value, str) or value not in MODES:
        allowed = ", ".join(repr(m) for m in MODES)
        raise ValueError(f"{owner}: argument 'precision' must be one of {allowed}, got {value!r}")
    return value
