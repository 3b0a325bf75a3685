"""Batched Sinkhorn: ``ot_flow.sinkhorn(x, y)`` with x (B, n, d), y (B, m, d) solves B independent
problems of equal sizes in one call (OTT's vmap, POT's ot.batch; class-conditional couplings).

Each problem is what the 2-D solve makes of it: its own working frame (frame.py: centre and
power-of-two unit), its own std(C) for a relative eps, its own annealing, momentum and stopping
(sinkhorn_batched_iterations.py); the kernels see all still-running problems at once, one batched
call per half-step. The result (sinkhorn_batched_result.py) holds B 2-D results.

Across the ranks of a process group (sinkhorn_batched_halves.py) every rank either passes the
whole batch (replicated) or its rows of every problem (sharded); the setup is then the 2-D
solve's per problem (its frame and std(C) summed over the ranks' shards), and the checks of the
arguments run on every rank together, so that a bad argument on one rank raises on all of them.
"""

import math
import warnings

import torch

from ot_flow import distributed
from ot_flow.ops import precision as op_precision
from ot_flow.ops.layout import stack_aligned
from ot_flow.solvers import costs, validation
from ot_flow.solvers.progress import progress_bar
from ot_flow.solvers.cost_cache import cache_group_size, caches_batched_costs
from ot_flow.solvers.sinkhorn_batched_halves import halves_of
from ot_flow.solvers.sinkhorn_batched_iterations import solve_batched_at
from ot_flow.solvers.sinkhorn_batched_result import BatchedSinkhornResult
from ot_flow.solvers.sinkhorn_result import SinkhornResult
from ot_flow.solvers.working_problem import WorkingProblem, check_range, warm_start

__all__ = ["sinkhorn_batched"]


def sinkhorn_batched(x, y, a, b, *, eps, relative_eps, cost, tol, max_iter, momentum, init, process_group, sharded,
                     anneal, target_entropy, entropy_tol, cost_cache, progress, tau_a, tau_b, precision):
    """The batched branch of :func:`ot_flow.sinkhorn` (see its docstring for the batched contract)."""
    if process_group is None and sharded:
        raise ValueError("argument 'sharded' needs a 'process_group'")
    if cost_cache not in ("auto", True, False):
        raise ValueError(f"argument 'cost_cache' must be 'auto', True or False, got {cost_cache!r}")
    precision = op_precision.checked("ot_flow.sinkhorn", precision)
    sharded = bool(sharded) and process_group is not None
    if process_group is not None:  # a bad shard on one rank must not leave the others waiting
        distributed.group_info(process_group)
        distributed.checked_together(lambda: validation.check_batched_pair(x, y), process_group)
        settings = dict(count=x.shape[0], dim=x.shape[2], dtype=str(x.dtype), eps=eps, relative_eps=relative_eps,
                        cost=cost, tol=tol, max_iter=max_iter, momentum=momentum, anneal=anneal, sharded=sharded,
                        warm_start=init is not None, target_entropy=target_entropy, entropy_tol=entropy_tol,
                        tau_a=tau_a, tau_b=tau_b, precision=precision, cost_cache=cost_cache)
        if not sharded:
            settings.update(n=x.shape[1], m=y.shape[1])
        distributed.same_on_all_ranks(settings, "ot_flow.sinkhorn", process_group)
        if cost_cache is True:
            raise ValueError("argument 'cost_cache': the distributed solver streams; pass 'auto' or False")
    validation.check_batched_pair(x, y)
    costs.check_cost(cost)
    eps = validation.positive("eps", eps)
    tol = validation.positive("tol", tol)
    entropy_tol = validation.positive("entropy_tol", entropy_tol)
    tau_a, tau_b = validation.tau("tau_a", tau_a), validation.tau("tau_b", tau_b)
    validation.integer("max_iter", max_iter, 1)
    if target_entropy is not None:
        target_entropy = validation.in_open_interval("target_entropy", target_entropy, 0.0, 1.0)
    count, n, m = x.shape[0], x.shape[1], y.shape[1]
    if sharded:  # this rank's rows of each problem; each problem's weights sum to 1 over the ranks
        a = validation.shard_weights("a", a, x, process_group)
        b = validation.shard_weights("b", b, y, process_group)
    else:
        a, b = distributed.checked_on_ranks(lambda: (validation.batched_weights("a", a, count, n, x),
                                                     validation.batched_weights("b", b, count, m, y)), process_group)
    x, y = x.detach(), y.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x, y = x.float(), y.float()  # half inputs: potentials and sums in float32
    y = y.to(x.dtype)
    reduce = (lambda t: distributed.all_sum(t, process_group)) if sharded else None
    works = [WorkingProblem.of(x[k], y[k], a[k], b[k], cost, reduce) for k in range(count)]
    spreads = [costs.cost_std(x[k], y[k], a[k], b[k], cost, reduce=reduce, frame=works[k].frame) or works[k].frame.unit
               for k in range(count)]
    distributed.checked_on_ranks(
        lambda: [check_range(works[k], eps * spreads[k] if relative_eps else eps) for k in range(count)], process_group)
    if cost_cache == "auto":
        cost_cache = process_group is None and caches_batched_costs(x, y)
    balanced = tau_a == 1.0 and tau_b == 1.0
    init_w = None
    if init is not None:
        distributed.checked_on_ranks(lambda: _check_init(init, count, n, m), process_group)
        # sharded: the constant that warm_start moves from f to g is chosen over all ranks' rows
        starts = [warm_start((init[0][k], init[1][k]), works[k], process_group if sharded else None,
                             balanced=balanced) for k in range(count)]
        init_w = [torch.stack([s[0] for s in starts]), torch.stack([s[1] for s in starts])]
    problem = dict(x=x, y=y, a=a, b=b, works=works, spreads=spreads, tol=tol, max_iter=max_iter, momentum=momentum,
                   anneal=anneal, progress=progress, tau_a=tau_a, tau_b=tau_b, precision=precision,
                   process_group=process_group, sharded=sharded, reduce=reduce, cost_cache=bool(cost_cache))
    if target_entropy is None:
        return _solve(list(range(count)), [eps * s if relative_eps else eps for s in spreads], init_w, problem)
    first = [eps if relative_eps else eps / s for s in spreads]  # the relative eps of each problem
    return _solve_for_entropy(target_entropy, first, entropy_tol, init_w, problem)


def _check_init(init, count, n, m):
    if not (isinstance(init, (tuple, list)) and len(init) == 2 and all(isinstance(p, torch.Tensor) for p in init)
            and tuple(init[0].shape) == (count, n) and tuple(init[1].shape) == (count, m)):
        raise ValueError(f"argument 'init' of a batched solve must be a pair (f, g) of tensors of shapes "
                         f"({count}, {n}) and ({count}, {m})")
    if not all(bool(torch.isfinite(p).all()) for p in init):
        raise ValueError("argument 'init' contains NaN or Inf")


def _solve(ids, eps, init_w, problem):
    """Problems ``ids`` of the batch solved at absolute eps (one per id): together, or, when their
    cached matrices would not stay in the CPU's cache, in groups that do (cost_cache.cache_group_size:
    the problems are independent, so the results are the same bits either way)."""
    results = []
    for lo, hi in _groups(len(ids), problem):
        init = None if init_w is None else [init_w[0][lo:hi], init_w[1][lo:hi]]
        results += _solve_together(ids[lo:hi], eps[lo:hi], init, problem)
    return BatchedSinkhornResult.of(results, stack_aligned([r.working.x for r in results]),
                                    stack_aligned([r.working.y for r in results]))


def _groups(count, problem):
    """[(lo, hi)] slices of the ``count`` problems of a solve, solved one slice after the other."""
    if not problem["cost_cache"] or problem["x"].device.type != "cpu":
        return [(0, count)]
    x, y = problem["x"], problem["y"]
    per = cache_group_size(x.shape[1], y.shape[1], x.element_size())
    return [(lo, min(count, lo + per)) for lo in range(0, count, per)]


def _solve_together(ids, eps, init_w, problem):
    """Problems ``ids`` solved together (one batched kernel call per half-step); their results."""
    x, y, a, b, works = problem["x"], problem["y"], problem["a"], problem["b"], problem["works"]
    sub = [works[k] for k in ids]
    xw, yw = stack_aligned([w.x for w in sub]), stack_aligned([w.y for w in sub])
    dots = _working_dots(sub) if problem["cost_cache"] else None
    fd, gd, states = solve_batched_at(
        eps, init_w, a=a[ids], b=b[ids], works=sub, xw=xw, yw=yw, tol=problem["tol"], max_iter=problem["max_iter"],
        momentum=problem["momentum"], anneal=problem["anneal"], spreads=[problem["spreads"][k] for k in ids],
        progress=problem["progress"], tau_a=problem["tau_a"], tau_b=problem["tau_b"], precision=problem["precision"],
        halves=halves_of(problem["process_group"], problem["sharded"], dots), process_group=problem["process_group"])
    results = []
    for p, k in enumerate(ids):
        state, work = states[p], works[k]
        solved = WorkingProblem(work.frame, work.x, work.y, work.alpha, work.beta, state.eps_w, fd[p], gd[p])
        f, g = solved.potentials_out(xw.dtype)
        results.append(SinkhornResult(
            f=f, g=g, eps=float(eps[p]), n_iter=state.n_iter, error=state.error, converged=state.converged,
            errors=state.errors, x=x[k], y=y[k], a=a[k], b=b[k], cost=work.frame.cost,
            path="cached" if problem["cost_cache"] else "streamed", process_group=problem["process_group"],
            sharded=problem["sharded"], spread=float(problem["spreads"][k]), tau_a=problem["tau_a"],
            tau_b=problem["tau_b"], precision=problem["precision"], working=solved))
    return results


def _working_dots(works):
    """The (B, n, m) dot products of the problems' working points, each formed as a separate
    solve forms its own (``work.x @ work.y.T``: the same GEMM, so the same bits)."""
    first = works[0]
    dots = first.x.new_empty((len(works), first.x.shape[0], first.y.shape[0]))
    for k, work in enumerate(works):
        dots[k] = work.x @ work.y.T
    return dots


def _solve_for_entropy(target, rel_eps, entropy_tol, init_w, problem, max_solves=12):
    """sinkhorn._solve_for_entropy per problem: each problem brackets, then bisects log(eps) on its
    own entropy; the problems still searching are solved together, one batched solve a round."""
    count, spreads = len(rel_eps), problem["spreads"]
    x, y, a, b = problem["x"], problem["y"], problem["a"], problem["b"]
    log_eps = [math.log(e) for e in rel_eps]
    lo, hi = [None] * count, [None] * count
    final = [None] * count
    inits = None if init_w is None else [(init_w[0][k], init_w[1][k]) for k in range(count)]
    searching = []
    for k in range(count):
        if costs.interaction_std(x[k], y[k], a[k], b[k], problem["reduce"]) == 0.0:
            final[k] = _solve([k], [rel_eps[k] * spreads[k]], _stacked(inits, [k]), problem)[0]
            warnings.warn(f"ot_flow.sinkhorn: problem {k} of the batch: target_entropy={target} cannot be reached: "
                          "the coupling is the independent one whatever eps (one cloud is a single point, or the "
                          f"clouds lie in orthogonal subspaces), with entropy {final[k].renormalized_entropy():.3f}; "
                          f"returning eps={final[k].eps:.4g}", RuntimeWarning, stacklevel=4)
        else:
            searching.append(k)
    bar = progress_bar(problem["progress"], max_solves, "sinkhorn batched target_entropy", problem["process_group"])
    with bar:
        for _ in range(max_solves):
            if not searching:
                break
            batch = _solve(searching, [math.exp(log_eps[k]) * spreads[k] for k in searching],
                           _stacked(inits, searching), problem)
            entropies = batch.renormalized_entropy().tolist()
            bar.update(1)
            still = []
            for k, result, entropy in zip(searching, batch, entropies):
                final[k] = result
                if abs(entropy - target) <= entropy_tol:
                    continue
                if entropy < target:
                    lo[k] = log_eps[k]
                else:
                    hi[k] = log_eps[k]
                if inits is None:
                    inits = [None] * count
                inits[k] = (result.working.f, result.working.g)
                if lo[k] is None:
                    log_eps[k] -= math.log(4.0)
                elif hi[k] is None:
                    log_eps[k] += math.log(4.0)
                else:
                    log_eps[k] = 0.5 * (lo[k] + hi[k])
                still.append(k)
            searching = still
    for k in searching:
        warnings.warn(f"ot_flow.sinkhorn: problem {k} of the batch: target_entropy={target} not reached within "
                      f"{max_solves} solves; returning eps={final[k].eps:.4g} with entropy "
                      f"{final[k].renormalized_entropy():.3f}", RuntimeWarning, stacklevel=4)
    xw = stack_aligned([p.working.x for p in final])
    yw = stack_aligned([p.working.y for p in final])
    return BatchedSinkhornResult.of(final, xw, yw)


def _stacked(inits, ids):
    """The working warm starts of problems ``ids`` stacked, or None when they have none (the
    problems of one round are alike: all start cold in the first round, none after it)."""
    if inits is None or inits[ids[0]] is None:
        return None
    return [torch.stack([inits[k][0] for k in ids]), torch.stack([inits[k][1] for k in ids])]
