"""Sinkhorn side by side: ot_flow, POT, GeomLoss, OTT-JAX, FlashSinkhorn and plain PyTorch, same inputs and eps.

    python benchmarks/bench_sinkhorn.py [--device cpu] [--sizes 1024 4096 16384 65536] [--dims 2 64 256]
    python benchmarks/bench_sinkhorn.py --memory-run 65536 --dims 64     (one full solve, peak RSS)

Problem: x ~ N(0, I_d), y ~ N(1, I_d), uniform weights, cost |x - y|^2 / 2, eps = 0.05 std(C)
(absolute value passed to every library; OTT's cost is |x - y|^2, so it gets 2 eps, which gives
the same coupling), float32. With --device cuda the default methods add FlashSinkhorn 0.4.1 (TF32,
its default, and fp32; optional, benchmarks/flash_sinkhorn_peer.py, a row saying why when it cannot
run): its alternating solver at the same absolute eps with cost |x - y|^2 / 2 (cost_scale 0.5),
compiled and autotuned by one untimed iteration; its "to tol" run stops when no potential moved by
more than tol * eps over 10 iterations (its own test), and the L1 err column is its plan's 1-norm
marginal error, measured here.

Columns: "ms/iter" from a fixed number of iterations with no early stop (30 for n <= 4096,
else 3; the setup of each library, such as building a cost matrix, is included); "to tol" a full solve
to the 1-norm marginal error 1e-3 (for n <= --full-max-n) (ot_flow, OTT with norm_error=1 and the dense loop measure
exactly that; POT stops on the 2-norm of its marginal error; GeomLoss runs its own eps-scaling
schedule to the same eps and has no tolerance); "peak MiB" the growth of the process's peak RSS
during the case over the resident size before it (Linux's VmHWM, reset before the case; each
case runs in a fresh process; the first compute calls of a process, thread pools and BLAS
buffers, count in it). A peer whose dense matrices would pass the
memory budget is reported as "out of memory budget" instead of being run. "floor" is the time
one iteration needs at the machine's measured rates: 2 half-iterations, each n m exps and either
2 n m d FLOPs (streamed) or a read of the n m cached dot products (cached), the larger term.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from common import header, machine_rates, publish, table  # noqa: E402

TOL = 1e-3
REL_EPS = 0.05
METHODS = ["ot_flow", "ot_flow streamed", "torch dense", "POT", "GeomLoss", "OTT-JAX"]
# Not in the default list (minutes per iteration at n = 65536); run with --methods.
EXTRA_METHODS = ["OTT-JAX online"]
# In the default list with --device cuda only (Triton kernels).
GPU_METHODS = ["FlashSinkhorn", "FlashSinkhorn fp32"]


def problem(n, d, device):
    g = torch.Generator().manual_seed(n * 1000 + d)
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, d, generator=g) + 1.0
    return x.to(device), y.to(device)


def absolute_eps(x, y):
    from ot_flow.solvers.costs import cost_std

    w = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64, device=x.device)
    return REL_EPS * cost_std(x, y, w, w, "sqeuclidean")


def dense_cost(x, y):
    return 0.5 * torch.cdist(x, y).square()


def run_ot_flow(x, y, eps, iters, full, streamed):
    import ot_flow

    kw = dict(eps=eps, relative_eps=False, momentum=True, cost_cache=False if streamed else "auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        res = ot_flow.sinkhorn(x, y, tol=1e-12, max_iter=iters, anneal=False, **kw)
        per_iter = (time.perf_counter() - t0) / res.n_iter
    out = {"ms/iter": per_iter * 1e3, "path": res.path}
    if full:
        t0 = time.perf_counter()
        res = ot_flow.sinkhorn(x, y, tol=TOL, **kw)
        out.update({"to tol s": time.perf_counter() - t0, "iters": res.n_iter, "converged": res.converged,
                    "cost": res.transport_cost(), "L1 err": res.error})
    return out


def l1_error(plan):
    """1-norm marginal error of a dense plan between uniform weights, both sides."""
    n, m = plan.shape
    return float((plan.sum(1) - 1.0 / n).abs().sum() + (plan.sum(0) - 1.0 / m).abs().sum())


def torch_dense_sinkhorn(cost, eps, max_iter, tol):
    """The plain PyTorch log-domain loop on a dense cost (uniform weights): (n_iter, f, g).
    tol > 0 stops on the 1-norm row-marginal error, measured as ot_flow measures it."""
    n, m = cost.shape
    log_a = torch.full((n,), -math.log(n), device=cost.device)
    log_b = torch.full((m,), -math.log(m), device=cost.device)
    f = torch.zeros(n, device=cost.device)
    g = torch.zeros(m, device=cost.device)
    for it in range(1, max_iter + 1):
        f_new = -eps * torch.logsumexp((g[None, :] - cost) / eps + log_b[None, :], dim=1)
        if it > 1 and tol > 0:
            err = (torch.exp((f - f_new) / eps) - 1).abs().mean().item()
            if err < tol:
                return it - 1, f, g
        f = f_new
        g = -eps * torch.logsumexp((f[:, None] - cost) / eps + log_a[:, None], dim=0)
    return max_iter, f, g


def run_torch_dense(x, y, eps, iters, full):
    cost = dense_cost(x, y)
    t0 = time.perf_counter()
    torch_dense_sinkhorn(cost, eps, iters, 0.0)
    out = {"ms/iter": (time.perf_counter() - t0) / iters * 1e3}
    if full:
        t0 = time.perf_counter()
        n_iter, f, g = torch_dense_sinkhorn(cost, eps, 10_000, TOL)
        plan = torch.exp((f[:, None] + g[None, :] - cost) / eps) / x.shape[0] ** 2
        out.update({"to tol s": time.perf_counter() - t0, "iters": n_iter, "converged": n_iter < 10_000,
                    "cost": float((plan * cost).sum()), "L1 err": l1_error(plan)})
    return out


def run_pot(x, y, eps, iters, full):
    import ot

    cost = dense_cost(x, y)
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], device=x.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        ot.sinkhorn(a, a, cost, eps, method="sinkhorn_log", numItermax=iters, stopThr=0.0)
        out = {"ms/iter": (time.perf_counter() - t0) / iters * 1e3}
        if full:
            t0 = time.perf_counter()
            plan, log = ot.sinkhorn(a, a, cost, eps, method="sinkhorn_log", numItermax=10_000, stopThr=TOL, log=True)
            out.update({"to tol s": time.perf_counter() - t0, "iters": int(log["niter"]),
                        "converged": int(log["niter"]) < 9_999, "cost": float((plan * cost).sum()),
                        "L1 err": l1_error(plan)})
    return out


def run_geomloss(x, y, eps, iters, full):
    from geomloss import SamplesLoss

    if not full:
        return {}
    loss = SamplesLoss("sinkhorn", p=2, blur=eps**0.5, scaling=0.9, debias=False, backend="tensorized")
    t0 = time.perf_counter()
    value = float(loss(x, y))
    return {"to tol s": time.perf_counter() - t0, "iters": "eps-scaling", "converged": "-", "cost": value,
            "note": "<P,C> column: its OT_eps value"}


def run_ott(x, y, eps, iters, full, batch_size=None):
    import jax
    import jax.numpy as jnp
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    jax.config.update("jax_enable_x64", False)
    xj, yj = jnp.asarray(x.cpu().numpy()), jnp.asarray(y.cpu().numpy())

    def compiled(threshold, min_it, max_it):
        solver = sinkhorn.Sinkhorn(threshold=threshold, min_iterations=min_it, max_iterations=max_it,
                                   inner_iterations=10, norm_error=1)

        # Dense geometry unless batch_size is given ("OTT-JAX online": O(n) memory, slower).
        def solve(xa, ya):
            geom = pointcloud.PointCloud(xa, ya, epsilon=2 * eps, batch_size=batch_size)
            return solver(linear_problem.LinearProblem(geom))

        fn = jax.jit(solve)
        jax.block_until_ready(fn(xj, yj).f)  # compile outside the timing
        return fn

    fixed = compiled(0.0, iters, iters)
    t0 = time.perf_counter()
    jax.block_until_ready(fixed(xj, yj).f)
    out = {"ms/iter": (time.perf_counter() - t0) / iters * 1e3}
    if full:
        to_tol = compiled(TOL, 0, 10_000)
        t0 = time.perf_counter()
        res = to_tol(xj, yj)
        jax.block_until_ready(res.f)
        out.update({"to tol s": time.perf_counter() - t0, "iters": int(res.n_iters), "converged": bool(res.converged),
                    "L1 err": float(res.errors[res.errors > -1][-1])})
    return out


def run_flash(x, y, eps, iters, full, precision):
    import flash_sinkhorn_peer as flash

    reason = flash.unavailable(x.device)
    if reason:
        return {"note": f"skipped: {reason}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flash.warm_up(x, y, eps, precision)
        out = {"ms/iter": flash.sinkhorn_iteration_ms(x, y, eps, iters, precision)}
        if full:
            torch.cuda.synchronize(x.device)
            t0 = time.perf_counter()
            f, g, n_iter = flash.solve(x, y, eps, 10_000, precision, threshold=TOL * eps, check_every=10)
            torch.cuda.synchronize(x.device)
            elapsed = time.perf_counter() - t0
            plan, cost = flash.plan(x, y, f, g, eps)
            out.update({"to tol s": elapsed, "iters": n_iter, "converged": n_iter < 10_000,
                        "cost": float((plan * cost).sum()), "L1 err": l1_error(plan),
                        "note": f"stops on potential change < {TOL} eps"})
    return out


def dense_bytes(n):
    return 4 * n * n * 4  # cost matrix plus the temporaries of a log-sum-exp, float32


def proc_status_kib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def reset_peak_rss():
    """Linux: make the peak RSS (VmHWM) the current resident size."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_case(method, n, d, device, budget_gb, full_max_n):
    x, y = problem(n, d, device)
    eps = absolute_eps(x, y)
    # Peak RSS is a high-water mark that importing the libraries already raised: reset it, and
    # measure the peak during the case against the resident size before it.
    reset_peak_rss()
    base = proc_status_kib("VmRSS:")
    iters = 30 if n <= 4096 else 3  # setup (checks, std(C), the cache) amortised alike for all
    full = n <= full_max_n
    if method in ("torch dense", "POT", "GeomLoss", "OTT-JAX") and dense_bytes(n) > budget_gb * 2**30:
        return {"note": "out of memory budget"}
    runner = {
        "ot_flow": lambda: run_ot_flow(x, y, eps, iters, full, streamed=False),
        "ot_flow streamed": lambda: run_ot_flow(x, y, eps, iters, full, streamed=True),
        "torch dense": lambda: run_torch_dense(x, y, eps, iters, full),
        "POT": lambda: run_pot(x, y, eps, iters, full),
        "GeomLoss": lambda: run_geomloss(x, y, eps, iters, full),
        "OTT-JAX": lambda: run_ott(x, y, eps, iters, full),
        "OTT-JAX online": lambda: run_ott(x, y, eps, iters, full, batch_size=1024),
        "FlashSinkhorn": lambda: run_flash(x, y, eps, iters, full, "tf32"),
        "FlashSinkhorn fp32": lambda: run_flash(x, y, eps, iters, full, "fp32"),
    }[method]
    try:
        out = runner()
    except (RuntimeError, MemoryError) as err:  # a peer that fails reports why, the table goes on
        return {"note": f"failed: {str(err).splitlines()[0][:60]}"}
    except ImportError as err:
        return {"note": f"not installed ({err.name})"}
    out["peak MiB"] = (proc_status_kib("VmHWM:") - base) / 1024
    return out


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64, 256])
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS + EXTRA_METHODS + GPU_METHODS,
                        help="default: " + ", ".join(METHODS) + " (and " + ", ".join(GPU_METHODS) + " on cuda)")
    parser.add_argument("--budget-gb", type=float, default=12.0, help="dense peers above this are not run")
    parser.add_argument("--full-max-n", type=int, default=4096, help="full solves to tol up to this n")
    parser.add_argument("--max-work", type=float, default=2**38, help="skip n*n*d above this (minutes per iteration)")
    parser.add_argument("--memory-run", type=int, default=None, help="one full ot_flow solve at this n (streamed)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.methods is None:
        args.methods = METHODS + (GPU_METHODS if torch.device(args.device).type == "cuda" else [])

    if args.case:  # child process: one measurement, printed as JSON
        method, n, d = args.case.split("|")
        print(json.dumps(run_case(method, int(n), int(d), args.device, args.budget_gb, args.full_max_n)))
        return
    if args.memory_run:
        return memory_run(args)

    rates = machine_rates(args.device)
    lines = [header(f"Sinkhorn benchmark ({args.device}, float32, eps = {REL_EPS} std(C), tol = {TOL})"),
             f"measured rates: GEMM {rates['gemm_flops'] / 1e9:.1f} GFLOP/s, exp {rates['exp_per_s'] / 1e9:.2f} G/s"]
    print("\n".join(lines), flush=True)
    rows = []
    for n in args.sizes:
        for d in args.dims:
            if n * n * d > args.max_work:
                continue
            exps = n * n / rates["exp_per_s"]
            floors = {"streamed": 2 * max(2 * n * n * d / rates["gemm_flops"], exps),
                      "cached": 2 * max(4 * n * n / rates["bytes_per_s"], exps)}
            group = []
            for method in args.methods:
                cmd = [sys.executable, os.path.abspath(__file__), "--case", f"{method}|{n}|{d}", "--device", args.device,
                       "--budget-gb", str(args.budget_gb), "--full-max-n", str(args.full_max_n)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                try:
                    res = json.loads(proc.stdout.strip().splitlines()[-1])
                except (IndexError, json.JSONDecodeError):
                    res = {"note": f"crashed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1][:60] if proc.stderr.strip() else ''}"}
                row = {"n": n, "d": d, "method": method + (f" ({res['path']})" if "path" in res else ""),
                       "ms/iter": fmt(res.get("ms/iter", "-"), ".1f"), "to tol s": fmt(res.get("to tol s", "-"), ".2f"),
                       "iters": res.get("iters", "-"), "converged": res.get("converged", "-"),
                       "<P,C>": fmt(res.get("cost", "-"), ".4f"), "L1 err": fmt(res.get("L1 err", "-"), ".1e"),
                       "peak MiB": fmt(res.get("peak MiB", "-"), ".0f"),
                       "note": res.get("note", "")}
                row["_ms"] = res.get("ms/iter")
                row["_s"] = res.get("to tol s")
                group.append(row)
                print(row, flush=True)
            ours = group[0]
            for row in group:
                if isinstance(row["_ms"], float) and isinstance(ours["_ms"], float):
                    row["per-iter vs ot_flow"] = f"{row['_ms'] / ours['_ms']:.2f}x"
                if isinstance(row["_s"], float) and isinstance(ours["_s"], float):
                    row["to-tol vs ot_flow"] = f"{row['_s'] / ours['_s']:.2f}x"
            for row in (r for r in group if r["method"].startswith("ot_flow")):
                path = "cached" if "cached" in row["method"] else "streamed"
                if isinstance(row["_ms"], float):
                    floor = floors[path] * 1e3
                    row["note"] = (row["note"] + f" floor {floor:.1f} ms/iter ({floor / row['_ms']:.0%})").strip()
            rows += group
    cols = ["n", "d", "method", "ms/iter", "per-iter vs ot_flow", "to tol s", "to-tol vs ot_flow", "iters",
            "converged", "L1 err", "<P,C>", "peak MiB", "note"]
    text = "\n".join(lines + [table(rows, cols)])
    publish(text, args.out)


def memory_run(args):
    """One full streamed solve at n = --memory-run: time, iterations, and the peak memory it took
    (host RSS; on a GPU also the device's peak allocation, seed paper 002's n = 2^20 on one GPU)."""
    import ot_flow

    n, d = args.memory_run, args.dims[0]
    x, y = problem(n, d, args.device)
    cuda = x.device.type == "cuda"
    reset_peak_rss()
    base = proc_status_kib("VmRSS:") / 2**20
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        device_base = torch.cuda.memory_allocated() / 2**20
    t0 = time.perf_counter()
    res = ot_flow.sinkhorn(x, y, eps=REL_EPS, tol=TOL, cost_cache=False)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak = proc_status_kib("VmHWM:") / 2**20
    engine = f", OT_FLOW_CUDA_ENGINE={os.environ.get('OT_FLOW_CUDA_ENGINE', 'fma')}" if cuda else ""
    lines = [
        header(f"ot_flow.sinkhorn memory run: n = m = {n:,}, d = {d}, float32, {args.device}, eps = {REL_EPS} std(C), "
               f"tol {TOL}{engine}"),
        f"converged {res.converged} in {res.n_iter} iterations, {elapsed:.1f} s ({elapsed / max(res.n_iter, 1):.2f} s/iter), "
        f"marginal error {res.error:.2e}, path {res.path}",
        f"peak RSS during the solve {peak:.2f} GiB, {(peak - base) * 1024:.0f} MiB above the {base:.2f} GiB before it "
        f"(inputs {2 * n * d * 4 / 2**20:.0f} MiB); a dense float32 cost matrix alone would be {n * n * 4 / 2**30:.0f} GiB",
    ]
    if cuda:
        device_peak = torch.cuda.max_memory_allocated() / 2**20
        lines.append(f"peak device allocation {device_peak:.0f} MiB, {device_peak - device_base:.0f} MiB above the "
                     f"{device_base:.0f} MiB held before the solve ({torch.cuda.get_device_name()})")
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
