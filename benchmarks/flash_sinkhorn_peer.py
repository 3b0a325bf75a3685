"""FlashSinkhorn 0.4.1 (`pip install flash-sinkhorn==0.4.1`, Triton, CUDA only) as a benchmark peer.

Optional: `unavailable()` says why it cannot run here (no CUDA device, package missing) and the
benchmarks print that reason and skip it. Nothing is imported from flash_sinkhorn until a function
below is called. We call its code, we do not copy it.

Conventions, read from the 0.4.1 wheel's sources (flash_sinkhorn/...):

* One streaming log-sum-exp (the kernel of every half-step):
  `kernels/sinkhorn_flashstyle_sqeuclid.py`, `flashsinkhorn_lse(x, y, bias, eps, *, cost_scale,
  damping, allow_tf32=True, use_exp2=True, autotune=True)` (line 811) returns
  out_i = -eps * damping * LSE_j[2 cost_scale <x_i, y_j> / eps + bias_j]
  (the raw kernel, lines 198-304: `vals = dot * scaled_inv_eps + bias`, `out = -eps * damping * lse`,
  scaled_inv_eps = coord_scale / eps, coord_scale = 2 cost_scale). Our
  ot_flow.ops.lse(x, y, h, s) = LSE_j[s <x_i, y_j> + h_j] is therefore -flashsinkhorn_lse(x, y, h,
  eps=1, cost_scale=s/2, damping=1): the kernel's factor 2 cost_scale / eps is then s exactly, and
  the negation is exact. allow_tf32=True (its default) forms the dot products with one TF32 MMA
  (`tl.dot(..., allow_tf32=True)`, kernels/_triton_helpers.py `_tiled_dot`), False in IEEE fp32.
  Inputs are cast to float32 (line 876); autotune=True (default) tunes block sizes on the first call
  of each (n // 32, m // 32, d, tf32) key: the benchmarks' warm-up call absorbs it.
* Balanced Sinkhorn at an absolute eps with a fixed number of iterations:
  `sinkhorn_solvers.py` `sinkhorn_flashstyle_alternating(x, y, a, b, *, eps, n_iters, cost_scale,
  allow_tf32, threshold, check_every, return_n_iters)` (line 64, exported by flash_sinkhorn.kernels):
  Gauss-Seidel half-steps f then g (lines 289-305, the fused-bias variant of the kernel above), as
  ot_flow.sinkhorn alternates them. The cost is cost_scale |x - y|^2 (its docstring;
  SamplesLoss(half_cost=True) sets cost_scale = 0.5, samples_loss.py line 522), so cost_scale=0.5 is
  ot_flow's "sqeuclidean" cost |x - y|^2 / 2, and eps is the absolute eps in those cost units (no
  blur: blur = eps^(1/p) only enters its eps-scaling schedule, kernels/_common.py line 81, which
  use_epsilon_scaling=False / this solver do not use). a, b are weights (it takes their logs,
  kernels/_common.py `log_weights`). Potentials come back in GeomLoss's convention (line 124):
  f_i = -eps LSE_j[(g_j - C_ij) / eps + log b_j], P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps).
  threshold stops when the largest change of a potential over check_every iterations is below it
  (line 316): a potential-change test, not a marginal error; the benchmark measures the 1-norm
  marginal error of the resulting plan itself.
  SamplesLoss(backend="alternating", use_epsilon_scaling=False, eps=eps, n_iters=k, half_cost=True,
  potentials=True) calls this same solver (samples_loss.py lines 853-871) after translating both
  clouds to their joint centroid (line 682) and, with allow_tf32, rounding the coordinates to TF32
  (truncate_tf32, line 460); we call the solver directly so that it sees exactly our inputs and
  reports its iteration count.
* Unbalanced Sinkhorn (KL-relaxed marginals), the same solver with `reach_x`, `reach_y`
  (sinkhorn_solvers.py lines 78-79; `rho_x`, `rho_y` directly, lines 76-77; the deprecated `reach`,
  `rho` set both sides, lines 147-157): rho_x = reach_x ** 2, rho_y = reach_y ** 2 (lines 159-167,
  "GeomLoss convention: rho = reach^p where p=2", line 150), rho in the units of the cost
  cost_scale |x - y|^2 like eps. The penalty is rho KL(P 1 | a) (rho KL(P^T 1 | b)): each
  half-step is the balanced one times damping = 1 / (1 + eps / rho) (kernels/_common.py
  `dampening`, lines 20-36; sinkhorn_solvers.py lines 175-176): the fused kernel returns
  -eps damping LSE_j[...] on the shifted potential (kernels/sinkhorn_flashstyle_sqeuclid.py line
  348 (formula), line 414 (`out = -eps * damping * lse`)) and the solver adds (damping - 1) alpha
  (sinkhorn_solvers.py lines 297-298, 309-310: f = f_hat + alpha), so
  f_i = -eps damping LSE_j[(g_j - C_ij) / eps + log b_j], with P as above. damping = rho / (rho +
  eps) is OTT's and our tau: ot_flow.sinkhorn(tau_a=tau_b=tau) at absolute eps, cost |x - y|^2 / 2,
  is this solver with cost_scale=0.5, the same eps and reach_x = reach_y = sqrt(rho),
  rho = eps tau / (1 - tau) (`reach_for`). Both relaxed: its semi-unbalanced translation is a
  no-op (line 50). The same in SamplesLoss: reach -> rho = reach ** 2 (samples_loss.py lines
  487-499), eps = blur ** 2 (kernels/_common.py line 81), half_cost=True for |x - y|^2 / 2 (line
  522); with half_cost=False (cost |x - y|^2) eps and rho double: blur = sqrt(2 eps), reach =
  sqrt(2 rho). The plan's mass is not something it returns; `plan_mass` measures it, and the row
  condition of the relaxed problem, P 1 = a exp(-f / rho) (the one ot_flow's tol tests), in float64.
"""

import math
import time

import torch

VERSION = "0.4.1"
NAME = "FlashSinkhorn"


def unavailable(device="cuda"):
    """None when the peer can run on `device`, else the reason it cannot (printed by the benchmarks)."""
    if torch.device(device).type != "cuda":
        return "GPU only (Triton kernels need a CUDA device)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import flash_sinkhorn
    except ImportError as err:
        return f"not installed ({err.name}; pip install --no-deps flash-sinkhorn=={VERSION})"
    except Exception as err:  # a broken Triton install fails at import, not as ImportError
        return f"import failed: {type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}"
    version = getattr(flash_sinkhorn, "__version__", "?")
    if version != VERSION:
        return f"flash_sinkhorn {version} installed, the benchmarks pin {VERSION}"
    return None


def available(device="cuda"):
    return unavailable(device) is None


def _allow_tf32(precision):
    if precision not in ("tf32", "fp32"):
        raise ValueError(f"FlashSinkhorn precision is 'tf32' (its default) or 'fp32', not {precision!r}")
    return precision == "tf32"


def lse(x, y, h, scale, precision="tf32", autotune=True):
    """LSE_j[scale <x_i, y_j> + h_j] by FlashSinkhorn's streaming kernel (float32 result)."""
    from flash_sinkhorn.kernels.sinkhorn_flashstyle_sqeuclid import flashsinkhorn_lse

    if h is None:
        h = torch.zeros(y.shape[0], device=y.device, dtype=torch.float32)
    out = flashsinkhorn_lse(x, y, h, 1.0, cost_scale=0.5 * float(scale), damping=1.0,
                            allow_tf32=_allow_tf32(precision), autotune=autotune)
    return out.neg_()


def _uniform(n, device):
    return torch.full((n,), 1.0 / n, device=device, dtype=torch.float32)


def solve(x, y, eps, n_iters, precision="tf32", threshold=None, check_every=10, autotune=True, reach=None):
    """Sinkhorn between uniform weights, cost |x - y|^2 / 2, absolute eps: (f, g, iterations run),
    f and g in GeomLoss's convention (see the module docstring). Balanced, or with ``reach``
    (``reach_for``) both marginals KL-relaxed."""
    from flash_sinkhorn.kernels import sinkhorn_flashstyle_alternating

    a, b = _uniform(x.shape[0], x.device), _uniform(y.shape[0], y.device)
    return sinkhorn_flashstyle_alternating(
        x, y, a, b, eps=float(eps), n_iters=int(n_iters), cost_scale=0.5, reach_x=reach, reach_y=reach,
        allow_tf32=_allow_tf32(precision), autotune=autotune, threshold=threshold, check_every=check_every,
        return_n_iters=True)


def reach_for(eps, tau):
    """FlashSinkhorn's reach_x = reach_y for ot_flow's tau_a = tau_b = tau at absolute eps (cost
    |x - y|^2 / 2, cost_scale 0.5): sqrt(rho), rho = eps tau / (1 - tau), so that its damping
    1 / (1 + eps / reach^2) is tau (module docstring); None for tau = 1 (balanced)."""
    if tau >= 1.0:
        return None
    return (eps * tau / (1.0 - tau)) ** 0.5


def plan_mass(x, y, f, g, eps, tau, chunk_bytes=256 * 2**20):
    """(sum_ij P_ij, relative row error) of P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) between
    uniform weights, C = |x - y|^2 / 2, in float64 by row blocks (O(block x m) memory, any n):
    the plan's total mass, and |P 1 - a exp(-f / rho)|_1 / |a exp(-f / rho)|_1 with
    rho = eps tau / (1 - tau), the row condition of the relaxed problem as ot_flow's tol measures
    it (tau = 1: the balanced |P 1 - a|_1)."""
    n, m = x.shape[0], y.shape[0]
    xd, yd, fd = x.double(), y.double(), f.double()
    # log P_ij = log a_i + f_i / eps + [<x_i, y_j> + g_j - |y_j|^2 / 2 - |x_i|^2 / 2] / eps + log b_j
    col = (g.double() - 0.5 * yd.square().sum(1)) / eps - math.log(m)
    rows = max(1, chunk_bytes // (8 * m))
    log_r = torch.cat([torch.logsumexp(torch.addmm(col, xd[i:i + rows], yd.T, alpha=1.0 / eps), dim=1)
                       for i in range(0, n, rows)])
    log_r += (fd - 0.5 * xd.square().sum(1)) / eps - math.log(n)
    r = log_r.exp()
    target = torch.full_like(r, 1.0 / n)
    if tau < 1.0:
        target = target * torch.exp(-fd * (1.0 - tau) / (eps * tau))
    return float(r.sum()), float((r - target).abs().sum() / target.sum())


def warm_up(x, y, eps, precision="tf32", reach=None):
    """One iteration outside any timing: Triton compilation and autotuning of both half-steps
    (damping is a run-time argument of the kernel, not a compile-time one: balanced and unbalanced
    share the compiled and tuned kernels)."""
    solve(x, y, eps, 1, precision, reach=reach)
    torch.cuda.synchronize(x.device)


def sinkhorn_iteration_ms(x, y, eps, iters, precision="tf32", reach=None):
    """Milliseconds per iteration of `iters` iterations with no early stop (call warm_up first)."""
    torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    solve(x, y, eps, iters, precision, reach=reach)
    torch.cuda.synchronize(x.device)
    return (time.perf_counter() - t0) / iters * 1e3


def plan(x, y, f, g, eps):
    """The dense float64 plan of GeomLoss-convention potentials between uniform weights (small n only)."""
    xd, yd = x.double(), y.double()
    cost = 0.5 * torch.cdist(xd, yd).square()
    return torch.exp((f.double()[:, None] + g.double()[None, :] - cost) / eps) / (x.shape[0] * y.shape[0]), cost
