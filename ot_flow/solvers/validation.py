"""Checks of solver arguments: each error names the argument, as the ops' checks do."""

import math

import torch

from ot_flow import distributed


def all_finite(t):
    """Whether every entry of ``t`` is finite: its float64 sum is (one reduction where
    ``torch.isfinite(t).all()`` takes five ops, 4x the time on a small solve's clouds), and only
    a sum that is not finite is decided entry by entry (finite entries near float64's largest can
    add up to inf)."""
    t = t.detach()
    return math.isfinite(t.sum(dtype=torch.float64)) or bool(torch.isfinite(t).all())


def check_points(name, t):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"argument '{name}' must be a 2-D tensor of points (num_points, dim), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"argument '{name}' must be a floating-point tensor, got {t.dtype}")
    if t.device.type == "meta":
        raise ValueError(f"argument '{name}' is a meta tensor (a shape without data); the solvers need its values")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"argument '{name}' is empty (shape {tuple(t.shape)})")
    if not all_finite(t):
        raise ValueError(f"argument '{name}' contains NaN or Inf")


def check_pair(x, y, x_name="x", y_name="y"):
    check_points(x_name, x)
    check_points(y_name, y)
    if x.device != y.device:
        raise ValueError(f"argument '{y_name}' is on {y.device} but '{x_name}' is on {x.device}; put them on one device")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"arguments '{x_name}' and '{y_name}' must have the same dimension, got {tuple(x.shape)} and {tuple(y.shape)}")


def check_batched_pair(x, y):
    """x (B, n, d) and y (B, m, d): B independent problems of equal sizes, each checked as
    ``check_pair`` checks one (its errors name the problem: 'x[k]')."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"argument '{name}' of a batched solve must be a 3-D tensor (num_problems, num_points, "
                             f"dim), got {shape}; pass 2-D x and y for one problem")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"arguments 'x' and 'y' must hold the same number of problems, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"arguments 'x' and 'y' hold no problem (shapes {tuple(x.shape)} and {tuple(y.shape)})")
    for k in range(x.shape[0]):
        check_pair(x[k], y[k], f"x[{k}]", f"y[{k}]")


def batched_weights(name, w, batch, size, like):
    """(B, size) float64 weights, each problem's row as ``weights`` checks it (uniform when None)."""
    if w is None:
        return torch.full((batch, size), 1.0 / size, dtype=torch.float64, device=like.device)
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or tuple(w.shape) != (batch, size):
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"argument '{name}' of a batched solve must be a 2-D tensor of shape ({batch}, {size}), "
                         f"got {shape}")
    return torch.stack([weights(f"{name}[{k}]", w[k], size, like) for k in range(batch)])


def weights(name, w, size, like, atol=1e-5):
    """Probability weights of length `size` (uniform when None), float64 on like's device."""
    if w is None:
        return torch.full((size,), 1.0 / size, dtype=torch.float64, device=like.device)
    if not isinstance(w, torch.Tensor) or w.dim() != 1 or w.shape[0] != size:
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"argument '{name}' must be a 1-D tensor of length {size}, got {shape}")
    if w.device != like.device:
        raise ValueError(f"argument '{name}' is on {w.device} but the points are on {like.device}")
    if not w.is_floating_point():
        raise ValueError(f"argument '{name}' must be a floating-point tensor, got {w.dtype}")
    w = w.detach().double()  # the solvers' weights; gradients in weights go through the caller
    if not all_finite(w) or (w < 0).any():
        raise ValueError(f"argument '{name}' must be finite and non-negative")
    total = float(w.sum())
    if abs(total - 1.0) > atol:
        raise ValueError(f"argument '{name}' must sum to 1, sums to {total:.6g}")
    return w / total


def shard_weights(name, w, points, process_group):
    """This rank's slice of weights that sum to 1 over all ranks (uniform over all points by
    default), float64: for points (n_r, d), or (B, n_r, d) for a batch of B problems whose weights
    (B, n_r) each sum to 1 (one all-reduce for all B totals). Every rank goes through the same
    collectives whatever it passed."""
    shape = tuple(points.shape[:-1])
    n_local = shape[-1]
    n_total = sum(distributed.shard_sizes(n_local, points.device, process_group))

    def local():
        if w is None:
            return torch.full(shape, 1.0 / n_total, dtype=torch.float64, device=points.device)
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != shape or not w.is_floating_point():
            what = (f"a 1-D float tensor with this rank's {n_local} entries" if len(shape) == 1 else
                    f"a float tensor of shape {shape} (this rank's {n_local} entries of each problem)")
            raise ValueError(f"argument '{name}' must be {what}")
        if w.device != points.device:
            raise ValueError(f"argument '{name}' is on {w.device} but the points are on {points.device}")
        if not all_finite(w) or (w < 0).any():
            raise ValueError(f"argument '{name}' must be finite and non-negative")
        return w.detach().double()

    w = distributed.checked_together(local, process_group)
    totals = distributed.all_sum(w.sum(-1).reshape(-1), process_group)
    for k, total in enumerate(totals.tolist()):
        if abs(total - 1.0) > 1e-5:
            which = name if len(shape) == 1 else f"{name}[{k}]"
            raise ValueError(f"argument '{which}' must sum to 1 over all ranks, sums to {total:.6g}")
    return w / totals.reshape(*shape[:-1], 1)


def integer(name, value, low, optional=False):
    """An int >= low (bools refused: True is not a count); None too when ``optional``. The one
    check of counts and sizes for every floor from the solvers up."""
    if optional and value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        either = "None or " if optional else ""
        raise ValueError(f"argument '{name}' must be {either}an int >= {low}, got {value!r}")
    return value


# Iterations between two reads of the Sinkhorn loop's error on a GPU (check_every="auto"): a
# read there drains the queue of kernels and idles the GPU until the host has queued more; ten
# iterations make that one gap in twenty half-steps and keep the overrun past the first
# converged iteration small.
_GPU_CHECK_EVERY = 10


def check_every(value, device):
    """The Sinkhorn loop's read interval: "auto" is 1 on the CPU (a read costs nothing there) and
    _GPU_CHECK_EVERY on other devices; else an int >= 1."""
    if value == "auto":
        return 1 if device.type == "cpu" else _GPU_CHECK_EVERY
    return integer("check_every", value, 1)


def flat_points(name, points):
    """Points of any shape per point (N, ...) as a detached (N, D) matrix, checked like check_points."""
    if not isinstance(points, torch.Tensor):
        raise ValueError(f"argument '{name}' must be a torch.Tensor, got {type(points).__name__}")
    if points.dim() < 1 or points.shape[0] == 0:
        raise ValueError(f"argument '{name}' must hold at least one point along dim 0, got shape {tuple(points.shape)}")
    flat = points.detach().reshape(points.shape[0], -1)
    check_points(name, flat)
    return flat


def positive(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"argument '{name}' must be a finite number > 0, got {value!r}")
    return float(value)


def in_open_interval(name, value, low, high):
    """A real number strictly between low and high."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low < value < high:
        raise ValueError(f"argument '{name}' must be a number in ({low:g}, {high:g}), got {value!r}")
    return float(value)


def tau(name, value):
    """A marginal relaxation tau = rho / (rho + eps) in (0, 1] (1: the marginal is kept exactly)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value <= 1.0:
        raise ValueError(f"argument '{name}' must be a number in (0, 1] (tau = rho / (rho + eps), "
                         f"1 = balanced), got {value!r}")
    return float(value)


def relaxation_rho(eps, tau):
    """rho = eps tau / (1 - tau), the KL weight of a marginal relaxed by tau (inf when tau = 1)."""
    return math.inf if tau == 1.0 else eps * tau / (1.0 - tau)


def byte_count(size):
    """A byte count for messages: '1.5 GiB'."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.3g} {unit}"
    return f"{size} bytes"
