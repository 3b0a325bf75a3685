"""Exact optimal assignment (n = m, eps = 0): ot_flow.assignment side by side with
scipy.optimize.linear_sum_assignment, POT's ot.emd (network simplex) and torchcfm's
OTPlanSampler(method="exact") (POT emd on its own cost matrix), same inputs, one run.

    python benchmarks/bench_assignment.py [--sizes 128 256 1024 4096] [--dims 2 64]
        [--dtypes float32 float64] [--variants] [--out benchmarks/results/assignment-cpu.txt]

Problem: x ~ N(0, I_d), y ~ N(1, I_d), cost |x - y|^2 / 2. Every time is the total a user
pays from the points to the permutation (or plan), cost matrix included: for scipy and POT the
float64 matrix is built with torch (torch.cdist(x, y) ** 2 / 2, the fastest dense builder here)
and that time is shown apart ("cost ms") and included in "total ms"; ot_flow builds its own.
"gap" is (our cost - the method's cost) / |scipy's cost| on the same float64 matrix, so 0 (or
rounding) means the same optimum, negative that the method's pairing costs more than ours
(torchcfm calls ot.emd with POT's default numItermax = 1e5, which stops before optimality at
n = 4096; "POT ot.emd" here gets 1e7). Ratios are the method's total over ours. --variants adds the
variants of the solver that were measured to choose it (Sinkhorn warm start).
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from common import header, publish, table  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def problem(n, d, dtype):
    g = torch.Generator().manual_seed(n * 1000 + d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0
    return x.to(dtype), y.to(dtype)


def dense_cost(x, y):
    return torch.cdist(x.double(), y.double()).square_() / 2


def best_of(fn, reps):
    """(min wall time in seconds, last result) over `reps` runs (min: the machine is shared)."""
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_ours(x, y):
    import ot_flow

    return ot_flow.assignment(x, y).numpy()


def run_warm(x, y, rel_eps):
    """The Sinkhorn warm start: column potentials of an entropic solve at small eps."""
    import ot_flow
    from ot_flow.ops import assignment_dense
    from ot_flow.solvers.assignment import assignment_cost_matrix

    res = ot_flow.sinkhorn(x.double(), y.double(), eps=rel_eps, tol=1e-2, progress=False)
    c = assignment_cost_matrix(x, y)
    # The solver's working potentials are those of -<x', y'> in the same frame: C' itself.
    return assignment_dense(c, res.working.g.double())[0].numpy()


def run_scipy(c):
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(c.numpy())[1]


def run_pot(c):
    import ot

    n = c.shape[0]
    w = np.full(n, 1.0 / n)
    plan = ot.emd(w, w, c.numpy(), numItermax=10_000_000)
    return plan.argmax(1)


def run_torchcfm(x, y):
    from torchcfm.optimal_transport import OTPlanSampler

    sampler = OTPlanSampler(method="exact")
    plan = sampler.get_map(x, y)
    return plan.argmax(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 1024, 4096])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=list(DTYPES))
    parser.add_argument("--peers-max-n", type=int, default=4096, help="POT and torchcfm up to this n")
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: every solver compared is sequential, and on a shared "
                             "machine a 2-thread pool stalls small problems by tens of ms)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lines = [header("Exact assignment benchmark (cpu, n = m, cost |x - y|^2 / 2)")]
    print("\n".join(lines), flush=True)
    rows = []
    for n in args.sizes:
        reps = 5 if n <= 256 else 3 if n <= 1024 else 1
        for d in args.dims:
            for dtype_name in args.dtypes:
                x, y = problem(n, d, DTYPES[dtype_name])
                c_time, c = best_of(lambda: dense_cost(x, y), reps)
                ours_time, ours = best_of(lambda: run_ours(x, y), reps)
                c_np = c.numpy()
                ours_cost = c_np[np.arange(n), ours].sum()
                methods = [("ot_flow.assignment", ours_time, "incl.", ours)]
                if args.variants:
                    for rel in (0.01, 0.001):
                        t, p = best_of(lambda: run_warm(x, y, rel), reps)
                        methods.append((f"ot_flow, Sinkhorn warm start eps={rel}", t, "incl.", p))
                t, p = best_of(lambda: run_scipy(c), reps)
                methods.append(("scipy linear_sum_assignment", t + c_time, c_time, p))
                if n <= args.peers_max_n:
                    for name, fn in (("POT ot.emd", lambda: run_pot(c)), ("torchcfm exact (POT)", lambda: run_torchcfm(x, y))):
                        try:
                            t, p = best_of(fn, reps)
                            methods.append((name, t + (c_time if name == "POT ot.emd" else 0.0),
                                            c_time if name == "POT ot.emd" else "", p))
                        except ImportError as err:
                            methods.append((name, None, "", f"not installed ({err.name})"))
                scipy_cost = c_np[np.arange(n), methods[[m[0] for m in methods].index("scipy linear_sum_assignment")][3]].sum()
                for name, t, ct, p in methods:
                    row = {"n": n, "d": d, "dtype": dtype_name, "method": name}
                    if t is None:
                        row["note"] = p
                    else:
                        their = c_np[np.arange(n), p].sum()
                        row.update({"total ms": f"{t * 1e3:.1f}", "cost ms": f"{ct * 1e3:.1f}" if isinstance(ct, float) else ct,
                                    "vs ours": f"{t / ours_time:.1f}x",
                                    "gap": f"{(ours_cost - their) / abs(scipy_cost):+.1e}"})
                        if len(np.unique(p)) != n:
                            row["note"] = "not a permutation"
                    rows.append(row)
                    print(row, flush=True)
    text = "\n".join(lines + [table(rows, ["n", "d", "dtype", "method", "total ms", "cost ms", "vs ours", "gap",
                                           "note"])])
    publish(text, args.out)


if __name__ == "__main__":
    main()
