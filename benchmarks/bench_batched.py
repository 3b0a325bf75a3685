"""Batched Sinkhorn (issue #18): B problems in one ``ot_flow.sinkhorn(x (B, n, d), y (B, m, d))``
call against B separate calls, same inputs, eps and tolerance; solve + one sample per row.

    python benchmarks/bench_batched.py [--batch 10] [--n 1024] [--dims 2 64] [--out FILE]

Problems: class-conditional-like, problem k has x ~ N(0, I_d), y ~ N(mu_k, s_k^2 I_d) with its
own offset and scale (so per-problem eps, frames and iteration counts differ), uniform weights,
cost |x - y|^2 / 2, eps = 0.05 std(C) per problem, float32. Rows:

* "separate, streamed": B calls with cost_cache=False -- the same kernels and arithmetic as the
  batched call (the batched result equals them bitwise);
* "separate, auto": B calls with the default cost_cache="auto", which on the CPU holds each n x m
  matrix (lse_dense: no GEMM per half-step) at these sizes;
* "batched": one call (it streams: its half-steps are batched lse calls).

"kernel s" is the time inside the half-step kernels (the ops profiled by torch.profiler), the
rest ("other s") being Python, argument checks and per-iteration host work (measured as a share
of one profiled run, applied to the best of --reps unprofiled runs); "iters" is the sum
over problems (the batched call runs max(iters) rounds). "floor" is the GEMM work of the
streamed half-steps at the measured GEMM rate: 2 half-steps x 2 n m d FLOPs x iterations.
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

    def batched():
        res = ot_flow.sinkhorn(x, y, eps=EPS, tol=TOL, progress=False)
        j = res.sample(torch.Generator().manual_seed(0))
        return int(res.n_iter.sum()), list(j), "streamed"

    rows, timed = [], {}
    for name, fn in (("separate, streamed", lambda: separate(False)), ("separate, auto", lambda: separate("auto")),
                     ("batched", batched)):
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
    same = all(torch.equal(a, b) for a, b in zip(timed["separate, streamed"][1], timed["batched"][1]))
    for row in rows:
        wall = timed[row["method"]][0]
        row["batched speed-up"] = f"{wall / timed['batched'][0]:.2f}x"
    rows[-1]["note"] = f"samples equal to separate streamed: {same}"
    return rows


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
        iters, d = row["iters"], row["d"]
        row["floor s"] = f"{iters * 2 * 2 * args.n * args.n * d / rates['gemm_flops']:.3f}"
    columns = ["B x n", "d", "method", "path", "total s", "kernel s", "other s", "floor s", "iters",
               "batched speed-up", "note"]
    text = "\n".join([
        header(f"Batched Sinkhorn benchmark (cpu, float32, eps = {EPS} std(C) per problem, tol = {TOL}, "
               "solve + one sample per row)"),
        f"measured rates: GEMM {rates['gemm_flops'] / 1e9:.1f} GFLOP/s, exp {rates['exp_per_s'] / 1e9:.2f} G/s",
        table(rows, columns),
    ])
    publish(text, args.out)


if __name__ == "__main__":
    main()
