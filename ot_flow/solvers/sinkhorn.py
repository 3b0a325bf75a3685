"""Log-domain Sinkhorn on the streaming ops: memory O((n + m) d), any n and m.

Two paths, chosen per solve (``cost_cache``): "streamed" recomputes the dot products tile by
tile in every half-iteration (``softmin`` on ``lse``), never holding an n x m matrix;
"cached" holds the n x m dot products when they fit a budget and then makes one fused pass
per half-iteration (``lse_dense``), which is faster on a CPU where the GEMM dominates.

Potentials are iterated for the dot cost C_ij = -<x_i, y_j> and shifted by the cost offsets
(costs.py) on the way out, so "sqeuclidean" and "dot" share every kernel call:

    f_i <- -eps lse_i(X, Y, g / eps + log b, 1 / eps)
    g_j <- -eps lse_j(Y, X, f / eps + log a, 1 / eps)

After a g-update the column marginals are exact; the row marginals of (f, g) are
a_i exp((f_i - f_new_i) / eps), so the 1-norm marginal error is a by-product of the next
f-update and costs no extra pass.

The loop itself (annealing, momentum, unbalanced half-steps) is sinkhorn_iterations.py; the
result and what is read off it, sinkhorn_result.py.
"""

import math
import warnings

import torch

from ot_flow import distributed
from ot_flow.ops import precision as op_precision
from ot_flow.solvers import costs, validation
from ot_flow.solvers.cost_cache import caches_costs
from ot_flow.solvers.full_precision import autocast_off
from ot_flow.solvers.progress import progress_bar
from ot_flow.solvers.sinkhorn_batched import sinkhorn_batched
from ot_flow.solvers.sinkhorn_iterations import solve_at
from ot_flow.solvers.sinkhorn_result import SinkhornResult
from ot_flow.solvers.working_problem import WorkingProblem, check_range, row_barycentres, warm_start

__all__ = ["SinkhornResult", "caches_costs", "sinkhorn", "row_barycentres"]


@torch.compiler.disable
@autocast_off
def sinkhorn(x, y, a=None, b=None, *, eps=0.05, relative_eps=True, cost="sqeuclidean", tol=1e-3,
             max_iter=10_000, momentum=True, init=None, process_group=None, sharded=False, anneal=None,
             target_entropy=None, entropy_tol=0.01, cost_cache="auto", progress="auto", tau_a=1.0, tau_b=1.0,
             precision="highest", check_every="auto"):
    """Entropic optimal transport between point clouds x (n, d) and y (m, d), streamed.

    Args:
        a, b: weights (sum to 1); uniform when None.
        eps: entropic regularisation; relative to std(C) when ``relative_eps`` (seed paper 002).
        cost: "sqeuclidean" (|x - y|^2 / 2) or "dot" (-<x, y>).
        tol: stop when the 1-norm marginal error |P 1 - a|_1 falls below it (unbalanced:
            |P 1 - a exp(-f / rho_a)|_1 / |a exp(-f / rho_a)|_1, the row condition of the relaxed
            problem relative to the mass it asks for).
        max_iter: at most this many iterations (annealing included); then a warning and
            ``converged=False``.
        momentum: over-relaxation that switches on by itself once the error decays steadily.
        init: (f, g) of an earlier solve (same cost) to warm start from; only the coupling they
            define matters (a constant moved from f to g is the same start).
        anneal: decay eps from std(C) to the target first; default: when eps < 0.05 std(C).
        target_entropy: choose eps so that the renormalized entropy lands within
            ``entropy_tol`` of this value (seed paper 002 recommends about 0.2); ``eps`` is then
            the first guess. When the entropy does not move with eps (one cloud a single point,
            say), a warning says so at once.
        process_group: solve across the ranks of this torch.distributed group (NCCL on GPUs,
            Gloo on CPUs); every rank calls with the same arguments and gets the same result.
            With ``sharded=False`` every rank passes the full x and y and the rows and columns
            are split between the ranks (only potentials travel); with ``sharded=True`` every
            rank passes only its own rows of x and y (and of a, b, which sum to 1 over all
            ranks) and gets its slices of f and g, the shards passing round the ranks.
        sharded: see ``process_group``.
        tau_a, tau_b: unbalanced OT (OTT's convention): the row (column) marginal is relaxed by
            rho KL(P 1 | a) with tau_a = rho_a / (rho_a + eps) in (0, 1]; 1 (default) keeps it
            exact. Either side alone (semi-unbalanced) or both. tau is invariant under the frame's
            change of unit (rho scales with eps). ``result.mass()`` is the plan's total mass.
        cost_cache: hold the n x m dot products in memory (one fused pass per half-iteration,
            no GEMM) -- "auto" does so on the CPU when they fit 1 GiB and either d >= 16 or
            they take at most 256 MiB; True forces it, False always streams (memory
            O((n + m) d)). ``result.path`` says which ran.
        progress: a tqdm bar (iterations, marginal error, eps; the solves of an entropy search):
            "auto" shows it once a solve has run for 2 seconds, True at once, False never
            (rank 0 only when distributed).
        precision: of the dot products in every op call of the solve and of the result's passes
            (``result.precision``): "highest" (default), "tf32" or "bf16", faster on CUDA tensor
            cores at ~1e-3 / ~1e-2 relative error in the dot products (ot_flow.ops.precision);
            the CPU and float64 points compute every mode exactly.
        check_every: iterations between two reads of the marginal error on the host. Each read
            waits for the device; "auto" reads every iteration on the CPU, where that costs
            nothing, and every 10 on a GPU, which meanwhile runs the next half-steps. The errors
            of the iterations in between are computed all the same (``result.errors`` holds
            every one), but the stop, the momentum and the checks of finiteness act on them at a
            read, so the solve may run up to ``check_every - 1`` iterations past the first that
            met ``tol`` (``n_iter`` counts them; the returned potentials are those whose error
            was read last, <= tol). A momentum step's convergence is confirmed at the very next
            iteration. A batched solve reads every iteration (its problems drop out as they
            converge).

    The points may lie anywhere: the solve runs on the clouds moved to their common centre and
    measured in their own unit (frame.py), so translating both clouds, or scaling them, changes
    neither the coupling nor its entropy (the cost only by the scale squared). Under autocast
    the solve runs in the points' own precision. Not differentiable: the result holds the points
    detached (see :func:`ot_flow.sinkhorn_divergence` for gradients).

    Batched: x (B, n, d) and y (B, m, d) (a (B, n), b (B, m) optional) are B independent
    problems of equal sizes, solved together: each in its own working frame, with its own eps
    (relative to its own std(C)), annealing, momentum and stopping, exactly as B separate solves
    on the same path would run them, while every half-step is one batched kernel call over the
    problems still running. Returns a :class:`BatchedSinkhornResult`: ``f`` (B, n), ``g`` (B, m),
    per-problem ``eps``, ``error``, ``n_iter``, ``converged`` (tensors (B,)), and ``result[k]``,
    problem k's SinkhornResult. ``tau_a``, ``tau_b`` apply to every problem; ``init`` is a pair
    of (B, n), (B, m) potentials; ``target_entropy`` searches eps per problem. ``cost_cache``
    holds the B matrices ("auto": where a separate solve would hold each and all B fit its
    budget together; one process only; on the CPU, matrices that overflow the last-level cache
    are solved in groups that fit it, with the same results). With ``process_group`` every rank passes
    the whole batch and computes its block of rows of every problem; with ``sharded=True`` its
    own rows of every problem, x (B, n_r, d), y (B, m_r, d), a (B, n_r), b (B, m_r) (each
    problem's weights summing to 1 over the ranks), and gets f (B, n_r), g (B, m_r). Either way
    every rank gets the same ``eps``, ``n_iter``, ``converged``; a sharded result's ``plan()``
    raises.

    Returns:
        SinkhornResult (BatchedSinkhornResult for batched inputs). Under ``torch.compile`` this
        function runs eagerly (one graph break: its loop stops on a data-dependent error).
    """
    if any(isinstance(t, torch.Tensor) and t.dim() == 3 for t in (x, y)):
        return sinkhorn_batched(x, y, a, b, eps=eps, relative_eps=relative_eps, cost=cost, tol=tol, max_iter=max_iter,
                                momentum=momentum, init=init, process_group=process_group, sharded=sharded,
                                anneal=anneal, target_entropy=target_entropy, entropy_tol=entropy_tol,
                                cost_cache=cost_cache, progress=progress, tau_a=tau_a, tau_b=tau_b, precision=precision)
    precision = op_precision.checked("ot_flow.sinkhorn", precision)
    if process_group is not None:  # a bad shard on one rank must not leave the others waiting
        distributed.group_info(process_group)
        distributed.checked_together(lambda: validation.check_pair(x, y), process_group)
        settings = dict(dim=x.shape[1], dtype=str(x.dtype), eps=eps, relative_eps=relative_eps, cost=cost,
                        tol=tol, max_iter=max_iter, sharded=bool(sharded), target_entropy=target_entropy,
                        tau_a=tau_a, tau_b=tau_b, precision=precision, check_every=check_every,
                        cost_cache=cost_cache)
        if not sharded:
            settings.update(n=x.shape[0], m=y.shape[0])
        distributed.same_on_all_ranks(settings, "ot_flow.sinkhorn", process_group)
    validation.check_pair(x, y)
    costs.check_cost(cost)
    eps = validation.positive("eps", eps)
    tol = validation.positive("tol", tol)
    entropy_tol = validation.positive("entropy_tol", entropy_tol)
    tau_a = validation.tau("tau_a", tau_a)
    tau_b = validation.tau("tau_b", tau_b)
    validation.integer("max_iter", max_iter, 1)
    check_every = validation.check_every(check_every, x.device)
    if target_entropy is not None:
        target_entropy = validation.in_open_interval("target_entropy", target_entropy, 0.0, 1.0)
    if process_group is None and sharded:
        raise ValueError("argument 'sharded' needs a 'process_group'")
    if cost_cache not in ("auto", True, False):
        raise ValueError(f"argument 'cost_cache' must be 'auto', True or False, got {cost_cache!r}")
    sharded = bool(sharded) and process_group is not None
    reduce = (lambda t: distributed.all_sum(t, process_group)) if sharded else None
    if sharded:
        a = validation.shard_weights("a", a, x, process_group)
        b = validation.shard_weights("b", b, y, process_group)
    else:
        a = validation.weights("a", a, x.shape[0], x)
        b = validation.weights("b", b, y.shape[0], y)
    x, y = x.detach(), y.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x, y = x.float(), y.float()  # half inputs: potentials and sums in float32
    y = y.to(x.dtype)
    work = WorkingProblem.of(x, y, a, b, cost, reduce)
    spread = costs.cost_std(x, y, a, b, cost, reduce=reduce, frame=work.frame) or work.frame.unit  # 0: any eps is fine
    check_range(work, eps * spread if relative_eps else eps, process_group)
    if cost_cache == "auto":
        cost_cache = caches_costs(x, y, process_group)
    if cost_cache and process_group is not None:
        raise ValueError("argument 'cost_cache': the distributed solver streams; pass 'auto' or False")
    dots = work.x @ work.y.T if cost_cache else None  # working points: bounded by check_range
    init_w = None if init is None else warm_start(init, work, process_group if sharded else None,
                                                           balanced=tau_a == 1.0 and tau_b == 1.0)
    solve = dict(x=x, y=y, a=a, b=b, work=work, tol=tol, max_iter=max_iter, momentum=momentum,
                 anneal=anneal, spread=spread, dots=dots, process_group=process_group, sharded=sharded,
                 progress=progress, tau_a=tau_a, tau_b=tau_b, precision=precision, check_every=check_every)
    if target_entropy is not None:
        first = eps if relative_eps else eps / spread
        if costs.interaction_std(x, y, a, b, reduce) == 0.0:
            result = solve_at(first * spread, init_w, **solve)
            warnings.warn(f"ot_flow.sinkhorn: target_entropy={target_entropy} cannot be reached: the coupling is the "
                          "independent one whatever eps (one cloud is a single point, or the clouds lie in orthogonal "
                          f"subspaces), with entropy {result.renormalized_entropy():.3f}; returning eps={result.eps:.4g}",
                          RuntimeWarning, stacklevel=3)
            return result
        return _solve_for_entropy(target_entropy, first, entropy_tol, init_w, solve)
    return solve_at(eps * spread if relative_eps else eps, init_w, **solve)


def _solve_for_entropy(target, rel_eps, entropy_tol, init, solve, max_solves=12):
    """Bracket, then bisect log(eps) on the renormalized entropy (increasing in eps)."""
    spread = solve["spread"]
    lo = hi = None  # (log rel eps, result) with entropy below / above the target
    log_eps, result = math.log(rel_eps), None
    bar = progress_bar(solve["progress"], max_solves, "sinkhorn target_entropy", solve["process_group"])
    with bar:
        for _ in range(max_solves):
            result = solve_at(math.exp(log_eps) * spread, init, **solve)
            entropy = result.renormalized_entropy()
            bar.set_postfix(eps=f"{math.exp(log_eps):.3g}", entropy=f"{entropy:.4f}", refresh=False)
            bar.update(1)
            if abs(entropy - target) <= entropy_tol:
                return result
            if entropy < target:
                lo = (log_eps, result)
            else:
                hi = (log_eps, result)
            init = (result.working.f, result.working.g)
            if lo is None:
                log_eps -= math.log(4.0)
            elif hi is None:
                log_eps += math.log(4.0)
            else:
                log_eps = 0.5 * (lo[0] + hi[0])
    warnings.warn(f"ot_flow.sinkhorn: target_entropy={target} not reached within {max_solves} solves; "
                  f"returning eps={result.eps:.4g} with entropy {result.renormalized_entropy():.3f}", RuntimeWarning)
    return result
