"""Pairs from a coupling, per pair: ot_flow (streamed Sinkhorn + Gumbel-max sampling) side by
side with torchcfm's OTPlanSampler (POT exact and POT Sinkhorn) and plain PyTorch (dense
Sinkhorn, then torch.multinomial on the materialised plan), same inputs and eps.

    python benchmarks/bench_sampling.py [--device cpu] [--sizes 4096 16384 65536] [--dim 32]

Problem: x ~ N(0, I_d), y ~ N(1, I_d), n = m, uniform weights, cost |x - y|^2 / 2,
eps = 0.05 std(C) (POT gets 2 eps on its cost |x - y|^2, the same coupling), float32; one
partner drawn for each of the n rows. "per pair" is (solve + sampling) / n, as seed paper 002
reports it. torchcfm's samplers draw n (i, j) pairs from the flattened plan with replacement,
ours one j per row i; both follow P. torchcfm "sinkhorn" is POT's ot.sinkhorn (Sinkhorn-Knopp
in the kernel domain) with stopThr set to our tolerance, and again ("our L1") with the largest
stopThr in tol / 2^(k/2) at which its plan is as accurate as ours; "exact" is POT's network simplex
(eps = 0), run up to --exact-max-n. On a GPU, FlashSinkhorn 0.4.1 (optional, Triton; see
benchmarks/flash_sinkhorn_peer.py) solves in TF32 and torch.multinomial draws each row's partner
from its potentials, rows in chunks (what a user of that solver writes); elsewhere its row says
why it is skipped. "L1 err" is the 1-norm marginal error of the plan that
was sampled (POT stops on its own 2-norm criterion). Dense methods are skipped when their n x n float32
matrices would pass --budget-gb. "floor" is what the sampling pass alone needs at the
machine's measured GEMM rate (2 n^2 d FLOPs). A method whose first run takes under 0.2 s (the
OT-FM batch sizes, n = 256-1024) is run --repeats times and its fastest run reported.
"""

import argparse
import os
import sys
import time
import warnings
from functools import partial

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from bench_sinkhorn import absolute_eps, dense_cost, problem, torch_dense_sinkhorn  # noqa: E402
from common import header, machine_rates, publish, sync, table  # noqa: E402

TOL = 1e-3
MATCHED = "torchcfm sinkhorn (POT), our L1"
FLASH = "FlashSinkhorn + torch multinomial"
METHODS = ["ot_flow", "torch dense + multinomial", "torchcfm sinkhorn (POT)", MATCHED, "torchcfm exact (POT)", FLASH]
_SAMPLE_CHUNK_BYTES = 256 * 2**20  # the rows of logits the torch sampling of the FlashSinkhorn peer holds at once


def run_ot_flow(x, y, eps):
    import ot_flow

    t0 = time.perf_counter()
    res = ot_flow.sinkhorn(x, y, eps=eps, relative_eps=False, tol=TOL)
    sync(x.device)
    solve = time.perf_counter() - t0
    t0 = time.perf_counter()
    j = res.sample(torch.Generator().manual_seed(0))
    sync(x.device)
    return {"solve s": solve, "sample s": time.perf_counter() - t0, "iters": res.n_iter, "L1 err": f"{res.error:.1e}",
            "note": f"{res.path}, E = {res.renormalized_entropy():.3f}", "_pairs": j}


def run_torch_dense(x, y, eps):
    t0 = time.perf_counter()
    cost = dense_cost(x, y)
    n_iter, f, g = torch_dense_sinkhorn(cost, eps, 10_000, TOL)
    sync(x.device)
    solve = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = torch.exp((f[:, None] + g[None, :] - cost) / eps)  # rows of P up to a_i: multinomial normalises
    j = torch.multinomial(plan, 1, generator=None).squeeze(1)
    sync(x.device)
    sample = time.perf_counter() - t0
    n = x.shape[0]
    plan /= n * n
    l1 = float((plan.sum(1) - 1 / n).abs().sum() + (plan.sum(0) - 1 / n).abs().sum())
    return {"solve s": solve, "sample s": sample, "iters": n_iter, "L1 err": f"{l1:.1e}", "_pairs": j}


def run_flash(x, y, eps):
    """FlashSinkhorn's balanced solve (TF32, its default; it stops when no potential moved by more
    than tol eps over 10 iterations), then one partner per row drawn by torch.multinomial from the
    row's conditional b_j exp((g_j - C_ij) / eps), rows in chunks of at most 256 MiB of logits
    (what a user of that solver writes: it returns potentials, not samples). L1 err: the 1-norm row
    error of its plan, in float64 (its last half-step leaves the columns exact)."""
    import flash_sinkhorn_peer as flash

    reason = flash.unavailable(x.device)
    if reason:
        return {"note": f"skipped: {reason}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flash.warm_up(x, y, eps)
        sync(x.device)
        t0 = time.perf_counter()
        f, g, n_iter = flash.solve(x, y, eps, 10_000, threshold=TOL * eps, check_every=10)
        sync(x.device)
        solve = time.perf_counter() - t0
    t0 = time.perf_counter()
    # row i's partner j ~ b_j exp((g_j - |x_i - y_j|^2 / 2) / eps): |x_i|^2 / 2 is constant along the row
    column = (g.float() - 0.5 * y.square().sum(1)) / eps
    rows = max(1, _SAMPLE_CHUNK_BYTES // (4 * y.shape[0]))
    j = torch.cat([torch.multinomial(torch.softmax(torch.addmm(column, x[i:i + rows], y.T, alpha=1.0 / eps), 1), 1)
                   for i in range(0, x.shape[0], rows)]).squeeze(1)
    sync(x.device)
    sample = time.perf_counter() - t0
    _, row_error = flash.plan_mass(x, y, f, g, eps, 1.0)
    return {"solve s": solve, "sample s": sample, "iters": n_iter, "L1 err": f"{row_error:.1e}",
            "note": "TF32; stops on potential change < tol eps", "_pairs": j}


def run_torchcfm(x, y, eps, method, stop=TOL):
    import ot
    from torchcfm.optimal_transport import OTPlanSampler

    sampler = OTPlanSampler(method=method, warn=True)
    if method == "sinkhorn":  # same eps (POT's cost is |x - y|^2) and tolerance as the others
        sampler.ot_fn = partial(ot.sinkhorn, reg=2 * eps, stopThr=stop, numItermax=10_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        plan = sampler.get_map(x, y)
        solve = time.perf_counter() - t0
        t0 = time.perf_counter()
        i, j = sampler.sample_map(plan, x.shape[0])
        sample = time.perf_counter() - t0
    note = "; ".join(sorted({str(w.message).splitlines()[0][:50] for w in caught}))
    n = x.shape[0]
    l1 = float(abs(plan.sum(1) - 1 / n).sum() + abs(plan.sum(0) - 1 / n).sum())
    if method == "sinkhorn" and stop != TOL:
        note = f"stopThr {stop:.1e}" + (f"; {note}" if note else "")
    return {"solve s": solve, "sample s": sample, "L1 err": f"{l1:.1e}", "note": note}


def matched_stop(x, y, eps, target):
    """The largest stopThr in TOL / 2^(k/2) (k = 0..24) at which POT's Sinkhorn reaches the L1
    marginal error `target` (ours, in the same run): POT stops on the 2-norm of its column
    marginal's error, which at one tolerance leaves an 8-18x larger 1-norm error than ours."""
    for k in range(25):
        stop = TOL / 2 ** (k / 2)
        if float(run_torchcfm(x, y, eps, "sinkhorn", stop)["L1 err"]) <= target:
            return stop
    return stop


def best_of(runner, repeats):
    """The fastest (solve + sample) of `repeats` runs when the first takes under 0.2 s: a small
    problem's single run measures first-call costs and the machine's noise as much as the method."""
    best = runner()
    if "solve s" not in best or best["solve s"] + best["sample s"] >= 0.2:
        return best
    for _ in range(repeats - 1):
        res = runner()
        if res["solve s"] + res["sample s"] < best["solve s"] + best["sample s"]:
            best = res
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--budget-gb", type=float, default=12.0)
    parser.add_argument("--exact-max-n", type=int, default=4096, help="POT's network simplex up to this n")
    parser.add_argument("--repeats", type=int, default=10,
                        help="runs of a method whose first run took under 0.2 s; the fastest is reported")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    rates = machine_rates(args.device)
    lines = [header(f"Sampling benchmark ({args.device}, float32, d = {args.dim}, eps = 0.05 std(C), tol = {TOL})"),
             f"measured rates: GEMM {rates['gemm_flops'] / 1e9:.1f} GFLOP/s, exp {rates['exp_per_s'] / 1e9:.2f} G/s"]
    print("\n".join(lines), flush=True)
    rows = []
    for n in args.sizes:
        x, y = problem(n, args.dim, args.device)
        eps = absolute_eps(x, y)
        group = []
        for method in args.methods:
            dense = method not in ("ot_flow", FLASH)
            if dense and 3 * n * n * 4 > args.budget_gb * 2**30:
                res = {"note": "out of memory budget"}
            elif method == MATCHED and "L1 err" not in group[0]:
                res = {"note": "needs the ot_flow row (its L1 error)"}
            elif method == "torchcfm exact (POT)" and n > args.exact_max_n:
                res = {"note": f"not run above n = {args.exact_max_n} (network simplex, O(n^3))"}
            else:
                if method == MATCHED:
                    try:
                        stop = matched_stop(x, y, eps, float(group[0]["L1 err"]))
                    except ImportError:
                        stop = TOL  # reported as not installed below
                runner = {"ot_flow": lambda: run_ot_flow(x, y, eps),
                          "torch dense + multinomial": lambda: run_torch_dense(x, y, eps),
                          "torchcfm sinkhorn (POT)": lambda: run_torchcfm(x, y, eps, "sinkhorn"),
                          MATCHED: lambda: run_torchcfm(x, y, eps, "sinkhorn", stop),
                          "torchcfm exact (POT)": lambda: run_torchcfm(x, y, eps, "exact"),
                          FLASH: lambda: run_flash(x, y, eps)}[method]
                try:
                    res = best_of(runner, args.repeats)
                except ImportError as err:
                    res = {"note": f"not installed ({err.name})"}
                except (RuntimeError, MemoryError) as err:
                    res = {"note": f"failed: {str(err).splitlines()[0][:60]}"}
            row = {"n": n, "method": method, **{k: v for k, v in res.items() if not k.startswith("_")}}
            if "solve s" in res:
                total = res["solve s"] + res["sample s"]
                row["per pair us"] = total / n * 1e6
                row["_total"] = total
            group.append(row)
            print({k: v for k, v in row.items() if not k.startswith("_")}, flush=True)
        ours = group[0]
        for row in group:
            if "_total" in row and "_total" in ours:
                row["vs ot_flow"] = f"{row['_total'] / ours['_total']:.1f}x"
        if "sample s" in ours:
            floor = 2 * n * n * args.dim / rates["gemm_flops"]
            ours["note"] = f"{ours.get('note', '')}; sampling pass at {floor / ours['sample s']:.0%} of the GEMM floor"
        rows += group
    for row in rows:
        for key in ("solve s", "sample s"):
            if isinstance(row.get(key), float):
                row[key] = f"{row[key]:.3f}"
        if isinstance(row.get("per pair us"), float):
            row["per pair us"] = f"{row['per pair us']:.2f}"
    text = "\n".join(lines + [table(rows, ["n", "method", "solve s", "sample s", "iters", "L1 err", "per pair us",
                                           "vs ot_flow", "note"])])
    publish(text, args.out)


if __name__ == "__main__":
    main()
