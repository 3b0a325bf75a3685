"""Unbalanced Sinkhorn: ot_flow's per-iteration cost against its own balanced solve, and POT's
``ot.unbalanced.sinkhorn_unbalanced`` on the same problem (CPU), or FlashSinkhorn's unbalanced
solver (--device cuda).

    python benchmarks/bench_unbalanced.py [--sizes 1024 4096] [--dims 2 64] [--tau 0.9] [--out FILE]
    python benchmarks/bench_unbalanced.py --device cuda [--sizes 4096 65536] [--dims 64]
                                          [--flash-precisions tf32 fp32] [--no-flash-autotune]

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

--device cuda (default sizes 4096 65536, d = 64, issue #3's; the same problems, moved to the GPU):
ot_flow streamed (cost_cache=False: the GPU streams) unbalanced against balanced per iteration,
and FlashSinkhorn 0.4.1's alternating solver (Triton; TF32, its default, and fp32; optional,
benchmarks/flash_sinkhorn_peer.py, a row saying why when it cannot run) at the same absolute eps,
cost |x - y|^2 / 2 (cost_scale 0.5) and rho: reach_x = reach_y = sqrt(rho), which makes its
damping 1 / (1 + eps / reach^2) our tau (the mapping and its source lines: flash_sinkhorn_peer.py),
also against its own balanced solve, the same fixed iterations with no early stop, compiled and
autotuned by one untimed iteration. Its "to tol" run stops when no potential moved by more than
tol * eps over 10 iterations (its own test); both run at most 300 iterations. "mass" and "rel err" of
its plan come from one float64 pass over its potentials (flash_sinkhorn_peer.plan_mass): the
total mass and the relative row error |P 1 - a exp(-f / rho)|_1 / |a exp(-f / rho)|_1, ours'
tol test (our rows: result.mass() and result.error). "per-iter vs ot_flow" is a row's unbalanced
ms/iter over ours (above 1: ot_flow is faster); "floor" the iteration at the GPU's rates
(common.gpu_floor_rates): 2 half-steps, each max(n m exps / exp rate, 2 n m d FLOPs / TF32
tensor-core rate) -- the unbalanced step adds O(n + m) -- and "of floor" floor / ms/iter. Every
timing synchronises the GPU.
"""

import argparse
import os
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from common import gpu_floor_rates, header, publish, require_cuda, sync, table  # noqa: E402

REL_EPS = 0.05
TOL = 1e-3
POT_MAX_ITER = 1000
CUDA_MAX_ITER = 300  # --device cuda, both solvers' runs to tol (85 ms/iter: 25 s at most per case)


def problem(n, d):
    g = torch.Generator().manual_seed(n * 1000 + d)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + 1.0


def per_iter(fns, iters, repeats=5, device="cpu"):
    """Best ms/iter of each fn(iters), the fns interleaved so that a shared machine's load falls
    on all of them alike (a GPU synchronised around each)."""
    for fn in fns:
        fn(2)  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            sync(device)
            t = time.perf_counter()
            fn(iters)
            sync(device)
            best[k] = min(best[k], time.perf_counter() - t)
    return [1e3 * b / iters for b in best]


def main():
    import ot_flow
    from ot_flow.solvers.costs import cost_std

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="default 1024 2048 (cpu), 4096 65536 (cuda)")
    p.add_argument("--dims", type=int, nargs="+", default=None, help="default 2 64 (cpu), 64 (cuda)")
    p.add_argument("--tau", type=float, default=0.9)
    p.add_argument("--flash-precisions", nargs="+", default=["tf32", "fp32"], choices=["tf32", "fp32"],
                   help="cuda: FlashSinkhorn's modes (tf32 is its default)")
    p.add_argument("--flash-autotune", action=argparse.BooleanOptionalAction, default=True,
                   help="cuda: FlashSinkhorn's Triton autotuning (its default; the untimed first call pays it)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not 0.0 < args.tau < 1.0:
        p.error("--tau must lie in (0, 1): 1 is the balanced problem")
    if args.device == "cuda":
        require_cuda("bench_unbalanced")
        args.sizes, args.dims = args.sizes or [4096, 65536], args.dims or [64]
        return main_cuda(args)
    args.sizes, args.dims = args.sizes or [1024, 2048], args.dims or [2, 64]
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


def ratio(a, b):
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) and b > 0 else ""


def main_cuda(args):
    """--device cuda: ot_flow (streamed) against FlashSinkhorn's unbalanced solver, same inputs."""
    import flash_sinkhorn_peer as flash
    import ot_flow
    from ot_flow.solvers.costs import cost_std

    device = args.device
    rates = gpu_floor_rates(device)
    skip = flash.unavailable(device)
    lines = [header(f"Unbalanced Sinkhorn ({device}, float32, eps = {REL_EPS} std(C), tau_a = tau_b = {args.tau}, "
                    f"tol = {TOL})"),
             f"measured rates: TF32 GEMM {rates['tf32_flops'] / 1e12:.0f} TFLOP/s, exp {rates['exp_per_s'] / 1e9:.0f} "
             f"G/s (torch.exp2 {rates['exp_measured'] / 1e9:.0f} G/s, SFU nominal {rates['exp_nominal'] / 1e9:.0f} G/s)",
             f"{flash.NAME} {flash.VERSION}: " + (f"skipped: {skip}" if skip else
                                                 f"reach_x = reach_y = sqrt(eps tau / (1 - tau)), cost_scale 0.5, "
                                                 f"autotune {'on' if args.flash_autotune else 'off'}, "
                                                 "first call per shape untimed")]
    print("\n".join(lines), flush=True)
    rows = []
    for n in args.sizes:
        for d in args.dims:
            x, y = (t.to(device) for t in problem(n, d))
            w = torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
            eps = REL_EPS * cost_std(x, y, w, w, "sqeuclidean")
            iters, repeats = (30, 5) if n <= 4096 else (5, 3)
            floor_ms = 2e3 * max(n * n / rates["exp_per_s"], 2 * n * n * d / rates["tf32_flops"])

            def ours(tau, **kw):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return ot_flow.sinkhorn(x, y, eps=eps, relative_eps=False, cost_cache=False, progress=False,
                                            tau_a=tau, tau_b=tau, **kw)

            def fixed(k, tau):  # k iterations, no early stop, as the peer's fixed runs
                return ours(tau, tol=1e-30, max_iter=k, anneal=False, momentum=False)

            bal, unb = per_iter([lambda k: fixed(k, 1.0), lambda k: fixed(k, args.tau)], iters, repeats, device)
            sync(device)
            t = time.perf_counter()
            res = ours(args.tau, tol=TOL, max_iter=CUDA_MAX_ITER)
            sync(device)
            full = time.perf_counter() - t
            mass = res.mass()
            group = [dict(n=n, d=d, method=f"ot_flow unbalanced ({res.path})", _ms=unb, _s=full, **{
                "ms/iter": f"{unb:.2f}", "balanced ms/iter": f"{bal:.2f}", "vs balanced": f"{unb / bal:.2f}x",
                "to tol s": f"{full:.3f}", "iters": res.n_iter, "mass": f"{mass:.5g}", "rel err": f"{res.error:.1e}",
                "note": "" if res.converged else f"not converged in {CUDA_MAX_ITER} iterations"})]
            print(group[0], flush=True)
            for precision in args.flash_precisions:
                name = f"{flash.NAME} {precision}"
                if skip:
                    group.append(dict(n=n, d=d, method=name, note=f"skipped: {skip}"))
                    continue
                try:
                    group.append(flash_row(flash, x, y, eps, args.tau, iters, repeats, precision, args.flash_autotune,
                                           mass) | dict(n=n, d=d, method=name))
                except Exception as err:  # a failing peer reports why, the table goes on
                    group.append(dict(n=n, d=d, method=name,
                                      note=f"failed: {type(err).__name__}: {str(err).splitlines()[0][:60] if str(err) else ''}"))
                print(group[-1], flush=True)
            for row in group:
                row["per-iter vs ot_flow"] = ratio(row.get("_ms"), unb)
                row["to-tol vs ot_flow"] = ratio(row.get("_s"), full)
                if isinstance(row.get("_ms"), float):
                    row["floor ms/iter"] = f"{floor_ms:.2f}"
                    row["of floor"] = f"{floor_ms / row['_ms']:.0%}"
            rows += group
    lines.append(table(rows, ["n", "d", "method", "ms/iter", "balanced ms/iter", "vs balanced", "per-iter vs ot_flow",
                              "floor ms/iter", "of floor", "to tol s", "to-tol vs ot_flow", "iters", "mass", "rel err",
                              "note"]))
    publish("\n".join(lines), args.out)


def flash_row(flash, x, y, eps, tau, iters, repeats, precision, autotune, our_mass):
    """FlashSinkhorn at ot_flow's eps and tau: ms/iter unbalanced and balanced (interleaved, best of
    `repeats`), a run to its own stopping rule, and its plan's mass and row error (float64)."""
    reach = flash.reach_for(eps, tau)

    def run(k, r, **kw):
        return flash.solve(x, y, eps, k, precision, autotune=autotune, reach=r, **kw)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(1, reach)  # Triton compilation and autotuning (damping is a run-time argument: shared)
        bal, unb = per_iter([lambda k: run(k, None), lambda k: run(k, reach)], iters, repeats, x.device)
        sync(x.device)
        t = time.perf_counter()
        f, g, n_iter = run(CUDA_MAX_ITER, reach, threshold=TOL * eps, check_every=10)
        sync(x.device)
        full = time.perf_counter() - t
    mass, err = flash.plan_mass(x, y, f, g, eps, tau)
    off = abs(mass - our_mass) / max(our_mass, 1e-300)
    note = f"mass {off:.1e} rel. off ours" + ("; > 1%!" if off > 0.01 else "")
    if n_iter >= CUDA_MAX_ITER:
        note += f"; no stop in {CUDA_MAX_ITER} iterations"
    return {"_ms": unb, "_s": full, "ms/iter": f"{unb:.2f}", "balanced ms/iter": f"{bal:.2f}",
            "vs balanced": f"{unb / bal:.2f}x", "to tol s": f"{full:.3f}", "iters": n_iter, "mass": f"{mass:.5g}",
            "rel err": f"{err:.1e}", "note": note + f"; stops on potential change < {TOL} eps"}


if __name__ == "__main__":
    main()
