"""Argument checks of the Python side of the ops: the wrappers' non-tensor arguments, and the
device rule in the fake kernels. Errors are ValueErrors whose message starts with
``ot_flow.<op>: argument '<name>'``, like the C++ checks (csrc/ops/checks.cpp)."""

import operator

import torch

INT64_MIN, INT64_END = -(1 << 63), 1 << 63


def real(op, name, value):
    """``value`` as a Python float. A tensor that requires grad is refused: the op takes a plain
    number, so the gradient with respect to it would silently be missing."""
    if isinstance(value, (str, bytes)) or isinstance(value, torch.Tensor) and value.requires_grad:
        raise ValueError(f"{op}: argument '{name}' must be a real number (float), got {_describe(value)}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{op}: argument '{name}' must be a real number (float), got {_describe(value)}") from None


def integer(op, name, value, low=INT64_MIN, end=INT64_END):
    """``value`` as a Python int in ``[low, end)``; floats are refused rather than truncated."""
    try:
        result = operator.index(value)
    except TypeError:
        raise ValueError(f"{op}: argument '{name}' must be an integer, got {_describe(value)}") from None
    if not low <= result < end:
        raise ValueError(f"{op}: argument '{name}' must lie in [{low}, {end - 1}], got {result}")
    return result


def same_device(op, **tensors):
    """Raise unless every tensor given (None skipped) is on the device of the first one.

    Called by the fake kernels: when one input is on the meta device and another is not, the
    dispatcher picks the Meta kernel, which is the fake kernel, and without this check it would
    return an uninitialised tensor on the other input's device instead of an error."""
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if first is None:
            first = name, t
        elif t.device != first[1].device:
            raise ValueError(
                f"{op}: argument '{name}' is on {t.device} but '{first[0]}' is on {first[1].device}; "
                "put them on one device"
            )


def streaming_inputs(op, x, y, bias=None, bias_name="h", **others):
    """The fake kernels' checks of a streaming op's points x (n, d), y (m, d) and column bias
    (m,): one device (``others`` included), shapes and dtypes. The values cannot be checked on
    fake tensors; the C++ kernels check them (csrc/ops/checks.cpp)."""
    same_device(op, x=x, y=y, **{bias_name: bias}, **others)
    torch._check(x.dim() == 2 and y.dim() == 2, lambda: f"{op}: 'x' and 'y' must be 2-D")
    torch._check(x.shape[1] == y.shape[1], lambda: f"{op}: 'x' and 'y' must have the same dimension")
    torch._check(x.dtype == y.dtype, lambda: f"{op}: 'x' and 'y' must have one dtype")
    if bias is not None:
        torch._check(bias.shape == (y.shape[0],), lambda: f"{op}: '{bias_name}' must have shape (m,)")


def _describe(value):
    if isinstance(value, torch.Tensor):
        grad = ", requires_grad=True" if value.requires_grad else ""
        return f"a tensor of shape {tuple(value.shape)}{grad}"
    return f"{type(value).__name__} {value!r}"
