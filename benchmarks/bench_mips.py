"""Biased maximum inner-product search side by side: ot_flow.ops.mips in each precision mode
(every one exact: a coarser mode only searches faster and rescores more candidates), plain
PyTorch ``(x @ y.T + bias).max(1)`` in float32 and in bfloat16 (what a user writes instead, and
how often it is wrong) and FAISS ``IndexFlatIP`` (the bias folded in as an extra coordinate:
[x, 1] . [y, bias]), same inputs; then the time a SemidiscreteSampler needs to reach a
chi-square marginal error of 1e-2 (measured on fresh noise every --fit-log-every steps, the
measurements included in the time, then checked once more on 50 N other noise points).

    python benchmarks/bench_mips.py [--device cpu] [--sizes 10000 100000 1000000] [--dims 64 784 3072]
    python benchmarks/bench_mips.py --device cuda --queries 4096 --cases 1000000:64 1000000:512 200000:3072
    python benchmarks/bench_mips.py --fit-only --fit-sizes 10000 100000

Queries: --queries (1024) noise vectors per call, float32, top-1; the sizes are --sizes x --dims,
or the (N, d) pairs of --cases. "q/s" = queries per second (median call); "floor" = 2 B N d
FLOPs at the measured float32 GEMM rate, i.e. that GEMM alone. A method whose buffers would pass
--budget-gb (PyTorch's B x N scores; the data itself) is not run. Each answer is checked two
ways: "exact" is the fraction of the first --exact-queries queries whose answer scores the
float64 maximum (a float64 brute force), "agree" the fraction of all queries with the answer of
ot_flow's default ("highest"). ot_flow's modes and torch float32 must agree up to float32
rounding (a differing answer's score within rounding of the other's, else the run stops);
torch bfloat16 is reported as it is.
"""

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from common import header, machine_rates, publish, sync, table, timeit  # noqa: E402

# ot_flow's precision modes by method name; torch's dtype likewise.
OURS = {"ot_flow": "highest", "ot_flow tf32": "tf32", "ot_flow bf16": "bf16"}
TORCH = {"torch": torch.float32, "torch bf16": torch.bfloat16}
METHODS = [*OURS, *TORCH, "FAISS"]
# Methods whose answer must equal the exact one up to float32 rounding (check()).
EXACT_UP_TO_ROUNDING = {*OURS, "torch", "FAISS"}


def problem(n_data, d, queries, device):
    g = torch.Generator().manual_seed(n_data + d)
    y = torch.randn(n_data, d, generator=g)
    bias = torch.randn(n_data, generator=g) * d**0.5  # potentials on the scale of the scores
    x = torch.randn(queries, d, generator=g)
    return x.to(device), y.to(device), bias.to(device)


def run_method(method, x, y, bias, device):
    if method in OURS:
        import ot_flow

        mode = OURS[method]
        fn = lambda: ot_flow.ops.mips(x, y, bias, precision=mode)[1][:, 0]  # noqa: E731
    elif method in TORCH:
        # The operands converted once, outside the timing, as a user holding them so would.
        xt, yt, bt = (t.to(TORCH[method]) for t in (x, y, bias))
        fn = lambda: torch.addmm(bt, xt, yt.T).max(1).indices  # noqa: E731
    else:
        import faiss

        index = faiss.IndexFlatIP(y.shape[1] + 1)
        index.add(torch.cat([y, bias[:, None]], 1).cpu().numpy())
        xq = torch.cat([x, torch.ones(x.shape[0], 1, device=x.device)], 1).cpu().numpy()
        fn = lambda: torch.from_numpy(index.search(xq, 1)[1][:, 0])  # noqa: E731
    seconds = timeit(fn, device, min_time=1.0, max_reps=5)
    return seconds, fn().to(x.device)


def scores64(x, y, bias, index):
    """<x_i, y_index_i> + bias_index_i in float64."""
    return (x.double() * y[index].double()).sum(1) + bias[index].double()


def best64(x, y, bias):
    """The float64 maximum of each query's scores (a brute force over blocks of y of 256 MB in
    float64)."""
    best = torch.full((x.shape[0],), -float("inf"), dtype=torch.float64, device=x.device)
    x64, block = x.double(), max(1, 2**25 // y.shape[1])
    for c0 in range(0, y.shape[0], block):
        scores = torch.addmm(bias[c0:c0 + block].double(), x64, y[c0:c0 + block].double().T)
        best = torch.maximum(best, scores.max(1).values)
    return best


def check(method, answer, reference, x, y, bias):
    """Fraction equal to the reference; raises when a method that should be exact gives an
    answer whose score is not within float32 rounding of the reference's."""
    same = answer == reference
    if method in EXACT_UP_TO_ROUNDING and not same.all():
        rows = (~same).nonzero().squeeze(1)
        theirs = scores64(x[rows], y, bias, reference[rows])
        gap = (scores64(x[rows], y, bias, answer[rows]) - theirs).abs().max()
        scale = 1e-5 * (1 + theirs.abs().max().item())
        if gap.item() > scale:
            raise AssertionError(f"{method}: answers differ beyond rounding (score gap {gap.item():.3g})")
    return same.double().mean().item()


def cases(args):
    if args.cases:
        return [tuple(int(v) for v in c.split(":")) for c in args.cases]
    return [(n_data, d) for n_data in args.sizes for d in args.dims]


def search_table(args, rates):
    rows = []
    for n_data, d in cases(args):
        if n_data * d * 4 > args.budget_gb * 2**30 / 3:
            rows.append({"N": n_data, "d": d, "method": "-", "note": "data out of memory budget"})
            continue
        x, y, bias = problem(n_data, d, args.queries, args.device)
        floor = 2 * args.queries * n_data * d / rates["gemm_flops"]
        probe = slice(0, min(args.exact_queries, args.queries))
        exact_best = best64(x[probe], y, bias)
        reference = None  # ot_flow's default answer, which runs first
        for method in sorted(args.methods, key=lambda m: m != "ot_flow"):
            row = {"N": n_data, "d": d, "method": method}
            if method in TORCH and args.queries * n_data * TORCH[method].itemsize * 2 > args.budget_gb * 2**30:
                row["note"] = "B x N scores out of memory budget"
            elif method == "FAISS" and args.device != "cpu":
                row["note"] = "faiss-cpu only"
            else:
                try:
                    seconds, answer = run_method(method, x, y, bias, args.device)
                except ImportError as err:
                    row["note"] = f"not installed ({err.name})"
                else:
                    if reference is None:
                        reference = answer
                    # Float64 sums in another order differ by ~1e-16 relative; float32 rounding by ~1e-7.
                    slack = 1e-10 * (1 + exact_best.abs())
                    exact = (scores64(x[probe], y, bias, answer[probe]) >= exact_best - slack).double().mean().item()
                    row.update({"ms/call": f"{seconds * 1e3:.1f}", "q/s": f"{args.queries / seconds:,.0f}",
                                "exact": f"{exact:.4f}", "agree": f"{check(method, answer, reference, x, y, bias):.4f}",
                                "floor": f"{floor / seconds:.0%}", "_s": seconds})
            rows.append(row)
            print({k: v for k, v in row.items() if not k.startswith("_")}, flush=True)
        ours = next((r for r in rows[-len(args.methods):] if r["method"] == "ot_flow" and "_s" in r), None)
        for r in rows[-len(args.methods):]:
            if ours and "_s" in r:
                r["vs ot_flow"] = f"{r['_s'] / ours['_s']:.2f}x"
    return table(rows, ["N", "d", "method", "ms/call", "q/s", "vs ot_flow", "floor", "exact", "agree", "note"])


def fit_table(args):
    """The fits' table, and each fit's chi2 trajectory on its full level."""
    import ot_flow

    rows, traces = [], []
    for d in args.fit_dims:
        for n_data in args.fit_sizes:
            g = torch.Generator().manual_seed(n_data)
            data = (torch.randn(n_data, d, generator=g) + 1).to(args.device)
            sampler = ot_flow.SemidiscreteSampler(data, seed=0, quasi_random="auto" if args.fit_noise == "auto" else False)
            t0 = time.perf_counter()
            sampler.fit(args.fit_max_steps, batch_size=args.fit_batch, target_chi2=1e-2, progress=False,
                        optimizer=args.fit_optimizer, warm_start=None if args.fit_no_warm_start else "multiscale",
                        log_every=args.fit_log_every, eval_samples=args.fit_eval_samples)
            sync(args.device)
            seconds = time.perf_counter() - t0
            last = sampler.history[-1]
            check_chi2 = sampler.marginal_error(num_samples=min(50 * n_data, 2_000_000), seed=-1 % 2**31)
            # Statistical floor: T steps of B independent samples pin each point's share down to
            # a chi2 of about N / (B T) at best (a perfect average of the counts), so 1e-2 needs
            # 100 N / B. Quasi-random noise is not independent and can go below it.
            floor_steps = 100 * n_data / args.fit_batch
            rows.append({"N": n_data, "d": d, "noise": "sobol" if sampler.quasi_random else "iid",
                         "steps (full level)": sampler.step, "batch": args.fit_batch,
                         "floor steps": f"{floor_steps:.0f}", "seconds (all levels, chi2 checks)": f"{seconds:.1f}",
                         "chi2 at stop": f"{last['chi2']:.2e}", "chi2, independent check": f"{check_chi2:.2e}",
                         "reached": "yes" if last["chi2"] <= 1e-2 else f"no, stopped at {sampler.step} steps"})
            traces.append(f"N = {n_data}, d = {d}, chi2 by step: " + ", ".join(
                f"{h['step']}: {h['chi2']:.3g}" for h in sampler.history))
            print(rows[-1], flush=True)
    return "\n".join([table(rows, list(rows[0])), ""] + traces)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 784, 3072])
    parser.add_argument("--cases", nargs="+", default=None, metavar="N:d",
                        help="(N, d) pairs to run instead of --sizes x --dims")
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--exact-queries", type=int, default=32,
                        help="queries checked against a float64 brute force (all N columns)")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--budget-gb", type=float, default=12.0)
    parser.add_argument("--fit-sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--fit-dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--fit-optimizer", default="auto", choices=["auto", "newton", "adam", "sgd"])
    parser.add_argument("--fit-no-warm-start", action="store_true", help="start from g = 0 (no multiscale)")
    parser.add_argument("--fit-batch", type=int, default=4096)
    parser.add_argument("--fit-max-steps", type=int, default=20_000)
    parser.add_argument("--fit-noise", default="auto", choices=["auto", "iid"],
                        help="the fit's noise: the sampler's default (Sobol up to 16 features) or independent")
    parser.add_argument("--fit-log-every", type=int, default=None,
                        help="steps between chi2 measurements (default: the fit's, a tenth of its time)")
    parser.add_argument("--fit-eval-samples", type=int, default=None, help="noise points per chi2 measurement")
    parser.add_argument("--fit-only", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    rates = machine_rates(args.device)
    lines = [header(f"MIPS benchmark ({args.device}, float32, {args.queries} queries per call, top-1)"),
             f"measured rates: GEMM {rates['gemm_flops'] / 1e9:.1f} GFLOP/s"]
    print("\n".join(lines), flush=True)
    if not args.fit_only:
        lines.append(search_table(args, rates))
    if args.fit_sizes:
        start = "g = 0" if args.fit_no_warm_start else "multiscale start"
        lines += ["", f"Semidiscrete fit to chi2 <= 1e-2 (optimizer {args.fit_optimizer}, default lr, {start}, "
                      f"cosine over {args.fit_max_steps} steps, data N(1, I_d), noise N(0, I): "
                      f"{'Sobol up to 16 features, else independent' if args.fit_noise == 'auto' else 'independent'})",
                  fit_table(args)]
    text = "\n".join(lines)
    publish(text, args.out)


if __name__ == "__main__":
    main()
