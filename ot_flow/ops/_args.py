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
    if type(value) is int and low <= value < end:  # the common case, first: the solvers' loops call ops by the thousand
        return value
    try:
        result = operator.index(value)
    except TypeError:
        raise ValueError(f"{op}: argument '{name}' must be an integer, got {_describe(value)}") from None
    if not low <= result < end:
        raise ValueError(f"{op}: argument '{name}' must lie in [{low}, {end - 1}], got {result}")
    return result


def per_problem(op, name, value, x, kind=None, unused=1.0, batched_dim=3):
    """The (scalar, list) pair an op takes for an argument that batched calls may give per
    problem (``scale`` -> ``scales``, ``eps`` -> ``epsilons``, ``seed`` -> ``seeds``): a scalar
    stays the scalar (every problem uses it) with the list None; a sequence or 1-D tensor of
    values, allowed only when ``x`` is batched (3-D), becomes the list (its length is checked
    by the op against B), and the scalar ``unused``. ``kind(name, v)`` converts one value
    (default: :func:`real`). ``batched_dim``: how many axes ``x`` has in a batched call."""
    plain = kind is None  # floats: the common case goes first (see `integer`)
    if plain and type(value) is float:
        return value, None
    kind = kind or (lambda n, v: real(op, n, v))
    many = isinstance(value, (list, tuple)) or isinstance(value, torch.Tensor) and value.dim() == 1
    if not many:
        return kind(name, value), None
    if not isinstance(x, torch.Tensor) or x.dim() != batched_dim:
        raise ValueError(f"{op}: argument '{name}' holds {len(value)} values (one per problem), which only a "
                         f"batched call (a {batched_dim}-D first argument, B problems) takes; pass one number")
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            raise ValueError(f"{op}: argument '{name}' must be real numbers, got {_describe(value)}")
        value = value.detach().cpu().tolist()
    if plain and all(type(v) is float for v in value):
        return unused, list(value)
    return unused, [kind(name, v) for v in value]


def padded(inputs, defaults):
    """An autograd ``setup_context``'s ``inputs`` with the trailing arguments that were left at
    their defaults (and may be missing from it) filled in from ``defaults``."""
    return tuple(inputs) + tuple(defaults[len(inputs):])


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


def streaming_inputs(op, x, y, bias=None, bias_name="h", scales=None, **others):
    """The fake kernels' checks of a streaming op's points x (n, d), y (m, d) and column bias
    (m,), or of a batched call's x (B, n, d), y (B, m, d), bias (B, m) and ``scales`` (None or
    B values): one device (``others`` included), shapes and dtypes. The values cannot be checked
    on fake tensors; the C++ kernels check them (csrc/ops/checks.cpp)."""
    same_device(op, x=x, y=y, **{bias_name: bias}, **others)
    if x.dim() == 3 or y.dim() == 3:
        torch._check(x.dim() == 3 and y.dim() == 3, lambda: f"{op}: 'x' and 'y' must both be batched (3-D)")
        torch._check(x.shape[0] == y.shape[0], lambda: f"{op}: 'x' and 'y' must hold the same number of problems")
        torch._check(scales is None or len(scales) == x.shape[0],
                     lambda: f"{op}: 'scales' must hold one value per problem")
    else:
        torch._check(x.dim() == 2 and y.dim() == 2, lambda: f"{op}: 'x' and 'y' must be 2-D")
        torch._check(scales is None, lambda: f"{op}: 'scales' is for batched inputs")
    torch._check(x.shape[-1] == y.shape[-1], lambda: f"{op}: 'x' and 'y' must have the same dimension")
    torch._check(x.dtype == y.dtype, lambda: f"{op}: 'x' and 'y' must have one dtype")
    if bias is not None:
        torch._check(bias.shape == y.shape[:-1], lambda: f"{op}: '{bias_name}' must have shape (m,) (batched: (B, m))")


def scaled(t, scale, scales):
    """``scale * t``, or with per-problem ``scales`` (batched, t of shape (B, ...)) problem b's
    rows times scales[b], in t's dtype: the same products as the 2-D ``scale * t`` per problem."""
    if scales is None:
        return scale * t
    s = torch.tensor(scales, dtype=t.dtype, device=t.device)
    return s.view(-1, *[1] * (t.dim() - 1)) * t


def result_dtype(dtype):
    """The dtype the streaming ops compute and return in for inputs of ``dtype``: float32 for
    float16 and bfloat16 (torch autocast's rule for reductions such as logsumexp and softmax,
    whose sums would lose too much in 16 bits), else ``dtype``. The C++ ops upcast their inputs
    so (csrc/ops/checks.h, compute_dtype); the fake kernels report it."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def upcast(*tensors):
    """The tensors in :func:`result_dtype`: a backward pass computes in the forward's dtype."""
    return tuple(t.to(result_dtype(t.dtype)) for t in tensors)


def like_inputs(grads, inputs):
    """Each gradient (None kept) in the dtype of its input, as autograd requires: the backward
    of float16/bfloat16 inputs computes in float32."""
    return tuple(None if g is None else g.to(t.dtype) for g, t in zip(grads, inputs))


def _describe(value):
    if isinstance(value, torch.Tensor):
        grad = ", requires_grad=True" if value.requires_grad else ""
        return f"a tensor of shape {tuple(value.shape)}{grad}"
    return f"{type(value).__name__} {value!r}"
