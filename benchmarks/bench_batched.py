"""Batched Sinkhorn (issue #18): B problems in one ``ot_flow.sinkhorn(x (B, n, d), y (B, m, d))``
call against B separate calls, same inputs, eps and tolerance; solve + one sample per row.

    python benchmarks/bench_batched.py [--batch 10] [--n 1024] [--dims 2 64] [--out FILE]

Problems: class-conditional-like, problem k has x ~ N(0, I_d), y ~ N(mu_k, s_k^2 I_d) with its
own offset and scale (so per-problem eps, frames and iteration counts differ), uniform weights,
cost |x - y|^2 / 2, eps = 0.05 std(C) per problem, float32. Rows:

* "separate, streamed": B calls with cost_cache=False;
* "separate, auto": B calls with the default cost_cache="auto", which on the CPU holds each n x m
  matrix (lse_dense: no GEMM per half-step) at these sizes;
* "batched, streamed" / "batched, auto": one call each, on the same paths (its half-steps are
  batched lse / lse_dense calls); each equals its separate counterpart bitwise (the note checks
  the samples).

"speed-up" is the separate counterpart's time over the batched call's (the issue's target: 3x for
"auto" against "auto"). "kernel s" is the time inside the op calls (torch.profiler), the rest
("other s") being Python, argument checks and per-iteration host work (measured as a share of
one profiled run, applied to the best of --reps unprofiled runs); "iters" is the sum over
problems (the batched call runs max(iters) rounds). "floor s" is the work of the half-steps at
the machine's measured rates (common.machine_rates): streamed max(2 n m d FLOPs of GEMM, n m
exps) per half-step, cached max(n m exps, n m entries read from memory).
"""

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from common import header, machine_rates, publish, table  # noqa: E402

TOL = 1e-3
EPS = 0.05


def problems(batch, n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, d, generator=g)
    scales = 0.5 + torch.rand(batch, 1, 1, generator=g) * 2
    offsets = torch.randn(batch, 1, d, generator=g) * 2
    y = torch.randn(batch, n, d, generator=g) * scales + offsets
    return x, y


def kernel_seconds(fn):
    """(wall s, s inside the ot_flow ops' CPU kernels) of fn(), by torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
    # the ops' wall time on the calling thread (their tiles run on the worker threads meanwhile);
    # softmin is a composite around lse, counted through it
    kernel = sum(e.cpu_time_total for e in prof.key_averages()
                 if e.key.startswith("ot_flow::") and e.key != "ot_flow::softmin") / 1e6
    return wall, kernel, out


def run(batch, n, d, reps):
    import ot_flow

    x, y = problems(batch, n, d)

    def separate(cache):
        res = [ot_flow.sinkhorn(x[k], y[k], eps=EPS, tol=TOL, cost_cache=cache, progress=False) for k in range(batch)]
        js = [r.sample(torch.Generator().manual_seed(0)) for r in res]
        return sum(r.n_iter for r in res), js, res[0].path

    def batched(cache):
        res = ot_flow.sinkhorn(x, y, eps=EPS, tol=TOL, cost_cache=cache, progress=False)
        j = res.sample(torch.Generator().manual_seed(0))
        return int(res.n_iter.sum()), list(j), res[0].path

    rows, timed = [], {}
    for name, fn in (("separate, streamed", lambda: separate(False)), ("separate, auto", lambda: separate("auto")),
                     ("batched, streamed", lambda: batched(False)), ("batched, auto", lambda: batched("auto"))):
        fn()  # warm-up
        walls = []
        for _ in range(reps):  # unprofiled: the profiler's own cost per recorded op is not ours
            t0 = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
        wall = min(walls)
        profiled, kernel, (iters, js, path) = kernel_seconds(fn)
        kernel *= wall / profiled  # the profiled run's kernel share, applied to the unprofiled time
        timed[name] = (wall, js)
        rows.append({"B x n": f"{batch} x {n}", "d": d, "method": name, "path": path, "total s": f"{wall:.3f}",
                     "kernel s": f"{kernel:.3f}", "other s": f"{wall - kernel:.3f}", "iters": iters})
    for row in rows[2:]:
        mode = row["method"].split(", ")[1]
        alone = timed[f"separate, {mode}"]
        row["speed-up"] = f"{alone[0] / timed[row['method']][0]:.2f}x"
        same = all(torch.equal(a, b) for a, b in zip(alone[1], timed[row["method"]][1]))
        row["note"] = f"samples equal to separate, {mode}: {same}"
    return rows


def floor_seconds(row, n, rates):
    """The row's half-step work at the machine's rates (see the module notes)."""
    entries = 2 * row["iters"] * n * n  # two half-steps per iteration
    exps = entries / rates["exp_per_s"]
    if row["path"] == "cached":
        return max(exps, entries * 4 / rates["bytes_per_s"])
    return max(exps, entries * 2 * row["d"] / rates["gemm_flops"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rates = machine_rates()
    rows = []
    for d in args.dims:
        rows += run(args.batch, args.n, d, args.reps)
    for row in rows:
        row["floor s"] = f"{floor_seconds(row, args.n, rates):.3f}"
    columns = ["B x n", "d", "method", "path", "total s", "kernel s", "other s", "floor s", "iters",
               "speed-up", "note"]
    text = "\n".join([
        header(f"Batched Sinkhorn benchmark (cpu, float32, eps = {EPS} std(C) per problem, tol = {TOL}, "
               "solve + one sample per row)"),
        f"measured rates: GEMM {rates['gemm_flops'] / 1e9:.1f} GFLOP/s, exp {rates['exp_per_s'] / 1e9:.2f} G/s, "
        f"memory {rates['bytes_per_s'] / 1e9:.1f} GB/s",
        table(rows, columns),
    ])
    publish(text, args.out)


if __name__ == "__main__":
    main()
