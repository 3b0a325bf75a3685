"""Batched Sinkhorn (issue #18): B problems in one ``ot_flow.sinkhorn(x (B, n, d), y (B, m, d))``
call against B separate calls, same inputs, eps and tolerance; solve + one sample per row.

    python benchmarks/bench_batched.py [--batch 10] [--n 1024] [--dims 2 64] [--out FILE]
    python benchmarks/bench_batched.py --device cuda [--batch 10] [--n 1024] [--dims 2 64]

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

--device cuda: the same problems on the GPU, streamed on both sides (cost_cache=False: the GPU
streams), once per CUDA engine (OT_FLOW_CUDA_ENGINE, read per call, set around each: "fma" the
verified default kernels, whose batched lse is a loop of 2-D launches; "tensor_cores" the engine,
which runs a batched lse as one launch). Rows per engine: "separate" (B calls, check_every "auto":
the host reads the error every 10 iterations), "separate, check_every=1" (B calls reading it every
iteration, as the batched solve does: the same iterations, so the batched call's samples should
equal these bitwise) and "batched" (one call). "speed-up" is the separate row's time over the
batched one's (the B calls a user would otherwise make), "same-iters speed-up" the check_every=1
row's. "kernel s" is the GPU's busy time (the kernels' device time, torch.profiler with CUDA
activity, a share of one profiled run applied to the best of --reps), "other s" the rest: launch
latency, host reads and Python. "floor s": per half-step max(n m exps / exp rate, 2 n m d FLOPs /
TF32 tensor-core rate) (common.gpu_floor_rates), over the iterations run. Timings synchronise the GPU.
"""

import argparse
import contextlib
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from common import gpu_floor_rates, header, machine_rates, publish, require_cuda, sync, table  # noqa: E402

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
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.device == "cuda":
        require_cuda("bench_batched")
        return main_cuda(args)
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


ENGINES = ("fma", "tensor_cores")


@contextlib.contextmanager
def cuda_engine(engine):
    """OT_FLOW_CUDA_ENGINE=engine inside the block (ot_flow reads it on each call), restored after."""
    saved = os.environ.get("OT_FLOW_CUDA_ENGINE")
    os.environ["OT_FLOW_CUDA_ENGINE"] = engine
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OT_FLOW_CUDA_ENGINE", None)
        else:
            os.environ["OT_FLOW_CUDA_ENGINE"] = saved


def gpu_kernel_seconds(fn, device):
    """(wall s, GPU busy s, fn()'s value) of one run under torch.profiler (CPU + CUDA activity):
    the device time of the kernels it ran; None for the busy time where the profiler gives none."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        wall = time.perf_counter() - t0
    try:
        def device_us(e):
            return getattr(e, "self_device_time_total", 0) or 0  # torch >= 2.4 (self_cuda_time_total before)

        events = prof.key_averages()
        busy = sum(device_us(e) for e in events if e.device_type == DeviceType.CUDA)  # the kernels themselves
        if not busy:  # versions that attribute kernel time to the launching ops only
            busy = sum(device_us(e) for e in events if e.device_type == DeviceType.CPU)
        return wall, (busy / 1e6 if busy else None), out
    except Exception as err:  # a profiler that cannot say leaves the column empty, the table goes on
        print(f"kernel time unavailable: {type(err).__name__}: {err}", flush=True)
        return wall, None, out


def run_cuda(batch, n, d, reps, device):
    import ot_flow

    x, y = (t.to(device) for t in problems(batch, n, d))

    def separate(check_every):
        res = [ot_flow.sinkhorn(x[k], y[k], eps=EPS, tol=TOL, cost_cache=False, progress=False,
                                check_every=check_every) for k in range(batch)]
        js = [r.sample(torch.Generator().manual_seed(0)) for r in res]  # seeds drawn on the host, as on the CPU
        return sum(r.n_iter for r in res), js, res[0].path

    def batched():
        res = ot_flow.sinkhorn(x, y, eps=EPS, tol=TOL, cost_cache=False, progress=False)
        j = res.sample(torch.Generator().manual_seed(0))
        return int(res.n_iter.sum()), list(j), res[0].path

    rows = []
    for engine in ENGINES:
        timed = {}
        for name, fn in (("separate", lambda: separate("auto")), ("separate, check_every=1", lambda: separate(1)),
                         ("batched", batched)):
            row = {"B x n": f"{batch} x {n}", "d": d, "engine": engine, "method": name}
            rows.append(row)
            try:
                with cuda_engine(engine):
                    fn()  # warm-up
                    walls = []
                    for _ in range(reps):
                        sync(device)
                        t0 = time.perf_counter()
                        fn()
                        sync(device)
                        walls.append(time.perf_counter() - t0)
                    profiled, kernel, (iters, js, path) = gpu_kernel_seconds(fn, device)
            except Exception as err:  # e.g. the engine failing here: the row says why, the table goes on
                row["note"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:70] if str(err) else ''}"
                print(row, flush=True)
                continue
            wall = min(walls)
            timed[name] = (wall, js)
            row.update({"path": path, "total s": f"{wall:.4f}", "iters": iters})
            if kernel is not None:
                kernel *= wall / profiled  # the profiled run's busy share, applied to the unprofiled time
                row.update({"kernel s": f"{kernel:.4f}", "other s": f"{wall - kernel:.4f}"})
            print(row, flush=True)
        row = rows[-1]
        if "batched" in timed:
            wall, js = timed["batched"]
            for key, column in (("separate", "speed-up"), ("separate, check_every=1", "same-iters speed-up")):
                if key in timed:
                    row[column] = f"{timed[key][0] / wall:.2f}x"
            if "separate, check_every=1" in timed:
                same = all(torch.equal(a, b) for a, b in zip(timed["separate, check_every=1"][1], js))
                row["note"] = f"samples equal to separate, check_every=1: {same}"
    # The engine's batched call against the default kernels' separate calls: what switching both buys.
    timed = {(r["engine"], r["method"]): float(r["total s"]) for r in rows if "total s" in r}
    if ("fma", "separate") in timed and ("tensor_cores", "batched") in timed:
        row = next(r for r in rows if (r["engine"], r["method"]) == ("tensor_cores", "batched"))
        speed_up = timed["fma", "separate"] / timed["tensor_cores", "batched"]
        row["note"] = "; ".join(filter(None, [row.get("note"), f"{speed_up:.2f}x over separate (fma)"]))
    return rows


def main_cuda(args):
    """--device cuda: batched against separate calls, streamed, on both CUDA engines."""
    device = args.device
    rates = gpu_floor_rates(device)
    lines = [header(f"Batched Sinkhorn benchmark ({device}, float32, eps = {EPS} std(C) per problem, tol = {TOL}, "
                    "streamed, solve + one sample per row)"),
             f"measured rates: TF32 GEMM {rates['tf32_flops'] / 1e12:.0f} TFLOP/s, exp {rates['exp_per_s'] / 1e9:.0f} "
             f"G/s (torch.exp2 {rates['exp_measured'] / 1e9:.0f} G/s, SFU nominal {rates['exp_nominal'] / 1e9:.0f} G/s)"]
    print("\n".join(lines), flush=True)
    rows = []
    for d in args.dims:
        rows += run_cuda(args.batch, args.n, d, args.reps, device)
    n = args.n
    for row in rows:
        if "iters" in row:
            half_steps = 2 * row["iters"]  # two per iteration, summed over the problems
            floor = half_steps * max(n * n / rates["exp_per_s"], 2 * n * n * row["d"] / rates["tf32_flops"])
            row["floor s"] = f"{floor:.5f}"
    columns = ["B x n", "d", "engine", "method", "path", "total s", "kernel s", "other s", "floor s", "iters",
               "speed-up", "same-iters speed-up", "note"]
    publish("\n".join(lines + [table(rows, columns)]), args.out)


if __name__ == "__main__":
    main()
