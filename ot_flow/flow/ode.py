"""ODE integration of a velocity field: samples, flow maps and likelihoods of flow-matching models.

`odeint` integrates dx/dt = velocity(x, t) from t0 to t1 (forwards or backwards) with fixed-step
"euler", "midpoint" or "rk4", or adaptive Dormand-Prince 5(4) "dopri5". Euler and midpoint are
torchdiffeq's, the solvers that torchcfm and Meta's flow_matching integrate with (same results,
bit for bit, as the steps this module took before). The other two are written here, because
torchdiffeq's namesakes are other methods: its "rk4" is Kutta's 3/8 rule (stage times t, t + h/3,
t + 2h/3, t + h), and its "dopri5" estimates the error with Shampine's embedded weights, never
shrinks a step after accepting it, and returns an interpolation at t1 (see `_dopri5`).

Around the solvers, this module gives velocity(x, t) networks per-sample times t of shape (B,)
(torchdiffeq's own f(t, x) convention is an option, see `odeint`), checks arguments and outputs,
counts velocity evaluations and reports the times visited. Nothing here changes the grad mode:
under `torch.no_grad()` no graph is built, otherwise the result is differentiable in x0 and the
field's parameters (for dopri5 through the states, not through the chosen step sizes).
"""

import math
from typing import NamedTuple, Optional

import torch
import torchdiffeq

from ot_flow.flow.checks import check_batch, check_callable, check_choice, check_int, check_number, check_output

__all__ = ["CONVENTIONS", "METHODS", "ODESolution", "odeint"]

METHODS = ("euler", "midpoint", "rk4", "dopri5")
# How odeint calls its field: "xt" is velocity(x, t) with t of shape (B,) (this package's networks);
# "tx" is f(t, x) with t a 0-dim tensor, as torchdiffeq and Meta's flow_matching call theirs.
CONVENTIONS = ("xt", "tx")

# Step-size control of dopri5 (Hairer, Norsett & Wanner, Solving ODEs I, II.4).
_SAFETY = 0.9
_MIN_FACTOR = 0.2
_MAX_FACTOR = 10.0
_ERROR_ORDER = 5  # the embedded error estimate is O(h^5)

# Dormand-Prince 5(4): stage times as fractions of the step; rows of weights of the earlier stages
# that form each later stage's state; the solution's weights, which are also the last row (first
# same as last: the last stage is evaluated at the new state); and those weights minus the
# embedded fourth-order solution's (Hairer's), which estimate the local error.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_A = ((1 / 5,),
         (3 / 40, 9 / 40),
         (44 / 45, -56 / 15, 32 / 9),
         (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
         (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
         _DP_B[:6])
_DP_ERR = tuple(p - q for p, q in zip(_DP_B, (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200,
                                               187 / 2100, 1 / 40)))


class ODESolution(NamedTuple):
    x: torch.Tensor  # state at t1, shape of x0
    times: torch.Tensor  # (K + 1,) times visited, t0 first and t1 last; x0's dtype and device
    path: Optional[torch.Tensor]  # (K + 1, *x0.shape) states at `times` when return_path, else None
    nfe: int  # evaluations of the velocity


class _Field:
    """The user's field as an f(t, x) for torchdiffeq and the solvers below: calls it in its
    convention, checks what it returns and counts the calls (torchdiffeq keeps no count)."""

    def __init__(self, velocity, convention):
        self.velocity, self.convention = velocity, convention
        self.nfe = 0

    def __call__(self, t, x):
        self.nfe += 1
        # t: a 0-dim tensor on x's device from torchdiffeq; a float from the solvers below, filled
        # in on the device (a copy from the host would wait for a GPU to finish its queue).
        t = t.to(x.dtype) if isinstance(t, torch.Tensor) else torch.full((), t, dtype=x.dtype, device=x.device)
        v = self.velocity(x, t.repeat(x.shape[0])) if self.convention == "xt" else self.velocity(t, x)
        check_output("velocity", v, x.shape)
        return v


def odeint(velocity, x0, *, method="euler", steps=None, t0=0.0, t1=1.0, rtol=1e-5, atol=1e-5,
           return_path=False, max_steps=10_000, convention="xt"):
    """Integrate dx/dt = velocity(x, t) from t0 to t1 (t1 < t0 integrates backwards).

    ``velocity(x, t)`` gets x of shape (B, *event_shape) and t of shape (B,) with x's dtype and
    device, and returns a tensor of x's shape. With ``convention="tx"`` it is called as
    ``velocity(t, x)`` with t a 0-dim tensor (x's dtype and device), the convention of torchdiffeq
    and Meta's flow_matching, so that their models integrate here unchanged. The order is set,
    never guessed: a field may run with its arguments swapped and return nonsense of the right shape.
    ``steps`` (int >= 1) sets the uniform grid of the fixed-step methods and must be None for
    "dopri5", whose steps are chosen to keep the local error of every sample within ``rtol`` and
    ``atol``; dopri5 raises RuntimeError after ``max_steps`` attempted steps.
    Returns an `ODESolution`.
    """
    check_choice("convention", convention, CONVENTIONS)
    check_callable("velocity", velocity)
    check_batch("x0", x0)
    check_choice("method", method, METHODS)
    if method == "dopri5":
        if steps is not None:
            raise ValueError(f"argument 'steps' must be None for method 'dopri5' (its steps are adaptive), got {steps!r}")
    else:
        check_int("steps", steps, 1)
    t0, t1 = check_number("t0", t0), check_number("t1", t1)
    if t0 == t1:
        raise ValueError(f"arguments 't0' and 't1' must differ, both are {t0}")
    rtol, atol = check_number("rtol", rtol, above=0), check_number("atol", atol, above=0)
    check_int("max_steps", max_steps, 1)

    field = _Field(velocity, convention)
    if method == "dopri5":
        x, times, path = _dopri5(field, x0, t0, t1, rtol, atol, max_steps, return_path)
    else:
        times = [t0 + (t1 - t0) * k / steps for k in range(steps)] + [t1]
        if method == "rk4":
            x, path = _rk4(field, x0, times, return_path)
        else:
            x, path = _torchdiffeq_fixed_grid(field, method, x0, times, return_path)
    return ODESolution(x=x, times=torch.tensor(times, dtype=x0.dtype, device=x0.device), path=path, nfe=field.nfe)


def _torchdiffeq_fixed_grid(field, method, x0, grid, return_path):
    """torchdiffeq's euler or midpoint over ``grid``. The states at the grid's points are only
    asked for (and kept) for the path. Its wrappers cost ~0.1 ms a step on a CPU, and its loop
    compares times held as device tensors, which waits for a GPU once a step."""
    times = torch.tensor(grid, dtype=torch.float64, device=x0.device)  # torchdiffeq's times: float64, x0's device
    out = torchdiffeq.odeint(field, x0, times if return_path else times[[0, -1]], method=method,
                             options=dict(grid_constructor=lambda *_: times))
    return out[-1], out if return_path else None


def _rk4(field, x, grid, return_path):
    """Classical RK4 over ``grid`` (stage times t, t + h/2, t + h/2, t + h); out of place, for
    autograd. Ours because torchdiffeq's "rk4" is the 3/8 rule, whose results differ."""
    path = [x] if return_path else None
    for t, t_next in zip(grid[:-1], grid[1:]):
        h = t_next - t
        k1 = field(t, x)
        k2 = field(t + 0.5 * h, x + (h * 0.5) * k1)
        k3 = field(t + 0.5 * h, x + (h * 0.5) * k2)
        k4 = field(t + h, x + h * k3)
        x = x + (h * (1 / 6)) * k1 + (h * (1 / 3)) * k2 + (h * (1 / 3)) * k3 + (h * (1 / 6)) * k4
        if path is not None:
            path.append(x)
    return x, None if path is None else torch.stack(path)


def _combine(x, h, coeffs, ks):
    """x + h * sum_i coeffs[i] * ks[i], skipping zero coefficients; out of place, for autograd."""
    for c, k in zip(coeffs, ks):
        if c:
            x = x + (h * c) * k
    return x


def _dopri5_step(field, x, t, h, k1):
    """One Dormand-Prince step of signed size h from (x, t), k1 = field(t, x): the new state, the
    error estimate and the slope at the new state."""
    ks = [k1]
    for c, row in zip(_DP_C[1:], _DP_A):
        ks.append(field(t + c * h, _combine(x, h, row, ks)))
    return _combine(x, h, _DP_B, ks), _combine(torch.zeros_like(x), h, _DP_ERR, ks), ks[-1]


@torch.no_grad()
def _norm(z):
    """RMS over each sample's coordinates, then the max over the batch, so that one badly resolved
    sample is not averaged away by the others (torchdiffeq's default norm is the RMS over all of z)."""
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
    k_probe = field(t0 + direction * h0, x0 + (direction * h0) * k1)
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


def _dopri5(field, x, t0, t1, rtol, atol, max_steps, return_path):
    """Adaptive Dormand-Prince 5(4), landing exactly on t1; returns (x(t1), times, path).

    Ours, not torchdiffeq's dopri5 with ``options=dict(norm=...)`` (which does keep the per-sample
    norm): torchdiffeq estimates the error with Shampine's embedded weights and never shrinks a
    step after accepting one. On tests/test_ode.py's problems that took more evaluations for
    larger errors (56 evaluations here against 50 at rtol = atol = 1e-8, failing
    test_dopri5_is_accurate_with_fewer_evaluations_than_rk4; over 48 linear problems 3.5% more
    evaluations for 1.5 times the error), and its state at t1 is an interpolating quartic whose
    cancellations cost ~1e-4 at |x| ~ 30 in float32, where this returns the last step's state.
    """
    direction = math.copysign(1.0, t1 - t0)
    k1 = field(t0, x)
    h = _initial_step(field, x, k1, t0, t1, rtol, atol)
    t, times, path = t0, [t0], [x] if return_path else None
    for _ in range(max_steps):
        last = direction * (t + h - t1) >= 0
        if last:
            h = t1 - t
        x_new, err, k_new = _dopri5_step(field, x, t, h, k1)
        with torch.no_grad():
            error = _norm(err / (atol + rtol * torch.maximum(x.abs(), x_new.abs())))
        if error <= 1.0:
            t = t1 if last else t + h  # land exactly on t1
            x, k1 = x_new, k_new  # first same as last: the new state's slope is already known
            times.append(t)
            if path is not None:
                path.append(x)
            if last:
                return x, times, None if path is None else torch.stack(path)
        h *= _step_factor(error)
        if t + h == t:
            raise RuntimeError(f"dopri5: the step size underflowed at t={t} (stiff or non-finite velocity?)")
    raise RuntimeError(f"dopri5: reached max_steps={max_steps} attempted steps at t={t} before t1={t1}; "
                       "raise 'max_steps' or loosen 'rtol'/'atol'")
