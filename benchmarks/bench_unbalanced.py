"""Unbalanced Sinkhorn: ot_flow's per-iteration cost against its own balanced solve, and POT's
``ot.unbalanced.sinkhorn_unbalanced`` on the same problem.

    python benchmarks/bench_unbalanced.py [--sizes 1024 4096] [--dims 2 64] [--tau 0.9] [--out FILE]

Problem as in bench_sinkhorn.py: x ~ N(0, I_d), y ~ N(1, I_d), uniform weights, cost |x - y|^2 / 2,
eps = 0.05 std(C) (absolute value passed to both libraries), float32, tau_a = tau_b = --tau
(rho = eps tau / (1 - tau), POT's reg_m; POT's reg_type="kl" is our KL(P | a x b)).

Columns: "ms/iter" over a fixed number of iterations with no early stop (anneal and momentum off,
so both solvers do the same iterations; POT: numItermax of them with stopThr=0, its
cost-matrix and kernel set-up included); "vs balanced" our unbalanced over our balanced ms/iter
(same path); "to tol" a full solve to the relative marginal error 1e-3 (ours: the relaxed row
condition, sinkhorn.py; POT: its own stopping rule on the scaling vectors, stopThr=1e-3,
at most 1000 iterations);
"mass" the plan's total mass (the two solvers should agree). POT is skipped with a note when it
is not installed (it is in requirements-bench.txt).
"""

import argparse
import os
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from common import header, publish, table  # noqa: E402

REL_EPS = 0.05
TOL = 1e-3
POT_MAX_ITER = 1000


def problem(n, d):
    g = torch.Generator().manual_seed(n * 1000 + d)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + 1.0


def per_iter(fns, iters, repeats=5):
    """Best ms/iter of each fn(iters), the fns interleaved so that a shared machine's load falls
    on all of them alike."""
    for fn in fns:
        fn(2)  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            fn(iters)
            best[k] = min(best[k], time.perf_counter() - t)
    return [1e3 * b / iters for b in best]


def main():
    import ot_flow
    from ot_flow.solvers.costs import cost_std

    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    p.add_argument("--tau", type=float, default=0.9)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    try:
        import ot  # POT
    except ImportError:
        ot = None
    rows = []
    for n in args.sizes:
        for d in args.dims:
            x, y = problem(n, d)
            w = torch.full((n,), 1.0 / n, dtype=torch.float64)
            eps = REL_EPS * cost_std(x, y, w, w, "sqeuclidean")
            rho = eps * args.tau / (1 - args.tau)
            iters = 30 if n <= 4096 else 5
            for cache in (True, False):
                def ours(k, tau):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        return ot_flow.sinkhorn(x, y, eps=eps, relative_eps=False, tol=1e-30, max_iter=k,
                                                anneal=False, momentum=False, cost_cache=cache, progress=False,
                                                tau_a=tau, tau_b=tau)

                bal, unb = per_iter([lambda k: ours(k, 1.0), lambda k: ours(k, args.tau)], iters)
                t = time.perf_counter()
                res = ot_flow.sinkhorn(x, y, eps=eps, relative_eps=False, tol=TOL, cost_cache=cache, progress=False,
                                       tau_a=args.tau, tau_b=args.tau)
                full = time.perf_counter() - t
                rows.append(dict(n=n, d=d, method=f"ot_flow unbalanced ({res.path})", **{
                    "ms/iter": f"{unb:.1f}", "vs balanced": f"{unb / bal:.2f}x", "balanced ms/iter": f"{bal:.1f}",
                    "to tol s": f"{full:.2f}", "iters": res.n_iter, "mass": f"{res.mass():.4f}"}))
            if ot is None:
                rows.append(dict(n=n, d=d, method="POT", note="skipped: POT not installed"))
                continue
            xd, yd = x.double(), y.double()

            def pot(k, thr=0.0):
                m = 0.5 * torch.cdist(xd, yd).square()
                return ot.unbalanced.sinkhorn_unbalanced(w, w, m, eps, rho, method="sinkhorn_stabilized",
                                                         reg_type="kl", numItermax=k, stopThr=thr, log=True)

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pot_iter, = per_iter([pot], iters, repeats=3)
                t = time.perf_counter()
                plan, log = pot(POT_MAX_ITER, TOL)
                full = time.perf_counter() - t
            bad = not (torch.isfinite(plan).all() and abs(float(plan.sum()) - res.mass()) < 0.01 * res.mass())
            rows.append(dict(n=n, d=d, method="POT sinkhorn_stabilized (float64)", **{
                "ms/iter": f"{pot_iter:.1f}", "to tol s": f"{full:.2f}",
                "mass": f"{float(plan.sum()):.4f}",
                "note": f"mass off ours by > 1% (plan sum {float(plan.sum()):.3g})" if bad else ""}))
    text = "\n".join([header(f"Unbalanced Sinkhorn (cpu, float32, eps = {REL_EPS} std(C), tau_a = tau_b = "
                             f"{args.tau}, tol = {TOL})"),
                      f"POT: {ot.__version__ if ot is not None else 'not installed'}",
                      table(rows, ["n", "d", "method", "ms/iter", "balanced ms/iter", "vs balanced", "to tol s",
                                   "iters", "mass", "note"])])
    publish(text, args.out)


if __name__ == "__main__":
    main()
