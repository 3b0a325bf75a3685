"""ODE integration of a velocity field: samples, flow maps and likelihoods of flow-matching models.

`odeint` integrates dx/dt = velocity(x, t) from t0 to t1 (forwards or backwards) with a fixed-step
explicit Runge-Kutta method (euler, midpoint, rk4) or adaptive Dormand-Prince 5(4) (dopri5). All of
them run one Runge-Kutta step driven by a Butcher tableau. Nothing here changes the grad mode: under
`torch.no_grad()` no graph is built, otherwise the result is differentiable in x0 and the field's
parameters (for dopri5 through the states, not through the chosen step sizes).
"""

import math
from typing import NamedTuple, Optional

import torch

from ot_flow.solvers import validation

__all__ = ["METHODS", "ODESolution", "odeint"]

METHODS = ("euler", "midpoint", "rk4", "dopri5")

# Step-size control of dopri5 (Hairer, Norsett & Wanner, Solving ODEs I, II.4).
_SAFETY = 0.9
_MIN_FACTOR = 0.2
_MAX_FACTOR = 10.0
_ERROR_ORDER = 5  # the embedded error estimate is O(h^5)


class _Tableau(NamedTuple):
    c: tuple  # stage times as fractions of the step
    a: tuple  # a[i]: weights of stages 0..i that form the state of stage i + 1
    b: tuple  # weights of the solution
    err: tuple = ()  # b minus the weights of the embedded lower-order solution; () when there is none


_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DOPRI5_B_LOW = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)

_TABLEAUS = {
    "euler": _Tableau(c=(0.0,), a=(), b=(1.0,)),
    "midpoint": _Tableau(c=(0.0, 0.5), a=((0.5,),), b=(0.0, 1.0)),
    "rk4": _Tableau(c=(0.0, 0.5, 0.5, 1.0), a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6)),
    # The last stage is evaluated at the new state (its row of a is b): first same as last.
    "dopri5": _Tableau(
        c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
        a=((1 / 5,),
           (3 / 40, 9 / 40),
           (44 / 45, -56 / 15, 32 / 9),
           (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
           (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
           _DOPRI5_B[:6]),
        b=_DOPRI5_B,
        err=tuple(p - q for p, q in zip(_DOPRI5_B, _DOPRI5_B_LOW))),
}


class ODESolution(NamedTuple):
    x: torch.Tensor  # state at t1, shape of x0
    times: torch.Tensor  # (K + 1,) times visited, t0 first and t1 last; x0's dtype and device
    path: Optional[torch.Tensor]  # (K + 1, *x0.shape) states at `times` when return_path, else None
    nfe: int  # evaluations of the velocity


def check_callable(name, fn):
    if not callable(fn):
        raise ValueError(f"argument '{name}' must be callable, got {type(fn).__name__}")


def check_batch(name, x):
    """A finite floating-point tensor (B, *event_shape) with B >= 1."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"argument '{name}' must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"argument '{name}' must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"argument '{name}' must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"argument '{name}' contains NaN or Inf")


def check_int(name, value, low):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"argument '{name}' must be an int >= {low}, got {value!r}")


def check_number(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"argument '{name}' must be a finite number, got {value!r}")
    return float(value)


def check_output(name, out, shape):
    """What the callable argument ``name`` returned must be a tensor of ``shape``."""
    if not isinstance(out, torch.Tensor) or out.shape != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"argument '{name}' must return a tensor of shape {tuple(shape)}, got {got}")


class _Field:
    """The velocity called with t as a (B,) tensor like x; counts the calls."""

    def __init__(self, velocity):
        self.velocity = velocity
        self.nfe = 0

    def __call__(self, x, t):
        self.nfe += 1
        v = self.velocity(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
        check_output("velocity", v, x.shape)
        return v


def odeint(velocity, x0, *, method="euler", steps=None, t0=0.0, t1=1.0, rtol=1e-5, atol=1e-5,
           return_path=False, max_steps=10_000):
    """Integrate dx/dt = velocity(x, t) from t0 to t1 (t1 < t0 integrates backwards).

    ``velocity(x, t)`` gets x of shape (B, *event_shape) and t of shape (B,) with x's dtype and
    device, and returns a tensor of x's shape. ``steps`` (int >= 1) sets the uniform grid of the
    fixed-step methods and must be None for "dopri5", whose steps are chosen to keep the local error
    within ``rtol`` and ``atol``; dopri5 raises RuntimeError after ``max_steps`` attempted steps.
    Returns an `ODESolution`.
    """
    check_callable("velocity", velocity)
    check_batch("x0", x0)
    if method not in METHODS:
        raise ValueError(f"argument 'method' must be one of {METHODS}, got {method!r}")
    if method == "dopri5":
        if steps is not None:
            raise ValueError(f"argument 'steps' must be None for method 'dopri5' (its steps are adaptive), got {steps!r}")
    else:
        check_int("steps", steps, 1)
    t0, t1 = check_number("t0", t0), check_number("t1", t1)
    if t0 == t1:
        raise ValueError(f"arguments 't0' and 't1' must differ, both are {t0}")
    rtol = validation.positive("rtol", rtol)
    atol = validation.positive("atol", atol)
    check_int("max_steps", max_steps, 1)

    field = _Field(velocity)
    path = [x0] if return_path else None
    if method == "dopri5":
        x, times = _dopri5(field, x0, t0, t1, rtol, atol, max_steps, path)
    else:
        x, times = _fixed_steps(field, _TABLEAUS[method], x0, t0, t1, steps, path)
    return ODESolution(x=x, times=torch.tensor(times, dtype=x0.dtype, device=x0.device),
                       path=None if path is None else torch.stack(path), nfe=field.nfe)


def _combine(x, h, coeffs, ks):
    """x + h * sum_i coeffs[i] * ks[i], skipping zero coefficients; out of place, for autograd."""
    for c, k in zip(coeffs, ks):
        if c:
            x = x + (h * c) * k
    return x


def _rk_step(field, tableau, x, t, h, k1):
    """One explicit Runge-Kutta step of signed size h from (x, t), k1 = field(x, t).

    Returns the new state, the embedded error estimate (None without one) and the last stage.
    """
    ks = [k1]
    for c, row in zip(tableau.c[1:], tableau.a):
        ks.append(field(_combine(x, h, row, ks), t + c * h))
    x_new = _combine(x, h, tableau.b, ks)
    err = _combine(torch.zeros_like(x), h, tableau.err, ks) if tableau.err else None
    return x_new, err, ks[-1]


def _fixed_steps(field, tableau, x, t0, t1, steps, path):
    grid = [t0 + (t1 - t0) * k / steps for k in range(steps)] + [t1]
    for t, t_next in zip(grid[:-1], grid[1:]):
        x, _, _ = _rk_step(field, tableau, x, t, t_next - t, field(x, t))
        if path is not None:
            path.append(x)
    return x, grid


@torch.no_grad()
def _norm(z):
    """RMS over each sample's coordinates, then the max over the batch, so that one badly resolved
    sample is not averaged away by the others."""
    return z.reshape(z.shape[0], -1).pow(2).mean(dim=1).sqrt().max().item()


def _initial_step(field, x0, k1, t0, t1, rtol, atol):
    """Hairer's starting step size: |h| with an Euler step's change resolved to ~1% of the scale,
    refined by an estimate of the second derivative (one extra evaluation)."""
    span = abs(t1 - t0)
    direction = math.copysign(1.0, t1 - t0)
    scale = atol + rtol * x0.abs()
    d0, d1 = _norm(x0 / scale), _norm(k1 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    k_probe = field(x0 + (direction * h0) * k1, t0 + direction * h0)
    d2 = _norm((k_probe - k1) / scale) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / _ERROR_ORDER)
    return direction * min(100 * h0, h1, span)


def _step_factor(error):
    if error == 0.0:
        return _MAX_FACTOR
    if not math.isfinite(error):  # overflow in a far too large step: shrink as much as allowed
        return _MIN_FACTOR
    return min(_MAX_FACTOR, max(_MIN_FACTOR, _SAFETY * error ** (-1.0 / _ERROR_ORDER)))


def _dopri5(field, x, t0, t1, rtol, atol, max_steps, path):
    tableau = _TABLEAUS["dopri5"]
    direction = math.copysign(1.0, t1 - t0)
    k1 = field(x, t0)
    h = _initial_step(field, x, k1, t0, t1, rtol, atol)
    t, times = t0, [t0]
    for _ in range(max_steps):
        last = direction * (t + h - t1) >= 0
        if last:
            h = t1 - t
        x_new, err, k_new = _rk_step(field, tableau, x, t, h, k1)
        with torch.no_grad():
            error = _norm(err / (atol + rtol * torch.maximum(x.abs(), x_new.abs())))
        if error <= 1.0:
            t = t1 if last else t + h  # land exactly on t1
            x, k1 = x_new, k_new  # first same as last: the new state's slope is already known
            times.append(t)
            if path is not None:
                path.append(x)
            if last:
                return x, times
        h *= _step_factor(error)
        if t + h == t:
            raise RuntimeError(f"dopri5: the step size underflowed at t={t} (stiff or non-finite velocity?)")
    raise RuntimeError(f"dopri5: reached max_steps={max_steps} attempted steps at t={t} before t1={t1}; "
                       "raise 'max_steps' or loosen 'rtol'/'atol'")
