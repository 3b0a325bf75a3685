"""The CUDA tensor-core engine against the FMA kernels, op by op, with each precision mode's error.

    python benchmarks/bench_engine.py [--sizes 16384 65536] [--dims 2 64 512] [--out FILE]

Second table: exact mips (issue #17's sizes: queries x N, d) against the FMA kernel and torch
`addmm + max` in float32 and bfloat16, with each one's agreement with the float64 answer; top-1 at
every size (the engine's also in the opt-in 128-row blocks, "rows=128"), and top-k (`--mips-k`,
default 2 (the semidiscrete fit's) and 16) at the first size against `addmm + topk`, agreeing
where a row's k indices all equal the float64 answer's. Rows print on stderr as they are measured.

For lse and barycentric at n = m, each row times one call on one engine
(OT_FLOW_CUDA_ENGINE=fma: the verified FMA kernels; tensor_cores: csrc/ops/cuda/engine/) and
one precision, and reports the largest error over the first 256 rows against float64 (relative
to the row's largest |logit|, the scale a float32 logit is exact to) and the share of the floor
reached: the larger of n m exps at the exp rate (common.gpu_floor_rates) and 2 n m d (lse; + 2 n m k for
barycentric) tensor-core FLOPs at the measured TF32 GEMM rate (x3 for split TF32, /2 for bfloat16,
whose dense rate is twice TF32's, x1.5 for split float16: three products at bfloat16's rate).
The row "highest/split_f16" is "highest" with OT_FLOW_ENGINE_HIGHEST=split_f16 (lse and
barycentric; mips keeps split TF32). Column "rows": the engine's block rows, 64, or 128 for lse's
opt-in OT_FLOW_ENGINE_BLOCK_ROWS=128 (8-warp blocks, half the L2 reads of y), timed only where
the switch changes the kernel: d > 8, and for split float16 d > 16 (in 16-value slices instead
of 32-value ones).
"""

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import ot_flow  # noqa: E402
from common import gpu_floor_rates, header, publish, table, timeit  # noqa: E402

CHECK_ROWS = 256
RUNS = [("fma", "highest"), ("tensor_cores", "highest"), ("tensor_cores", "tf32"), ("tensor_cores", "bf16")]
SPLIT_F16 = "highest/split_f16"
# Tensor-core time per FLOP of each mode, in units of one TF32 product: split TF32 is three.
MMA_COST = {"highest": 3.0, "tf32": 1.0, "bf16": 0.5, SPLIT_F16: 1.5}


def set_highest(precision):
    """The precision argument for `precision`, with OT_FLOW_ENGINE_HIGHEST set to match."""
    if precision == SPLIT_F16:
        os.environ["OT_FLOW_ENGINE_HIGHEST"] = "split_f16"
        return "highest"
    os.environ.pop("OT_FLOW_ENGINE_HIGHEST", None)
    return precision


def reference(x, y, h, s, values):
    logits = s * (x[:CHECK_ROWS].double() @ y.double().T) + h.double()
    lse = torch.logsumexp(logits, dim=1)
    mean = torch.softmax(logits, dim=1) @ values.double()
    return lse, mean, logits.abs().amax(dim=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64, 512])
    parser.add_argument("--mips", type=int, nargs=3, action="append", metavar=("QUERIES", "N", "D"),
                        help="mips problem sizes (default: 4096 1000000 64, 4096 1000000 512, 4096 200000 3072)")
    parser.add_argument("--mips-k", type=int, nargs="*", default=[2, 16],
                        help="top-k searches timed at the first mips size (default: 2 16)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not (torch.cuda.is_available() and ot_flow.cuda_built()):
        sys.exit("bench_engine: needs a CUDA GPU and an ot_flow build with CUDA")
    device = "cuda"
    rates = gpu_floor_rates(device)
    tf32_rate, exp_rate = rates["tf32_flops"], rates["exp_per_s"]
    report = [header("CUDA engine benchmark (float32 inputs, one call, n = m)"),
              f"rates: TF32 GEMM {tf32_rate / 1e12:.0f} TFLOP/s, exp {exp_rate / 1e9:.0f} G/s "
              f"(measured exp2 {rates['exp_measured'] / 1e9:.0f}, nominal {rates['exp_nominal'] / 1e9:.0f})"]
    rows = []
    saved = os.environ.get("OT_FLOW_CUDA_ENGINE")
    try:
        for n in args.sizes:
            for d in args.dims:
                g = torch.Generator(device=device).manual_seed(n + d)
                x = torch.randn(n, d, device=device, generator=g)
                y = torch.randn(n, d, device=device, generator=g)
                h = torch.randn(n, device=device, generator=g)
                s = 1.0 / d**0.5
                ref_lse, ref_mean, logit_scale = reference(x, y, h, s, y)
                for op in ("lse", "barycentric"):
                    flops = 2 * n * n * d + (2 * n * n * d if op == "barycentric" else 0)
                    runs = [(engine, precision, 64) for engine, precision in RUNS + [("tensor_cores", SPLIT_F16)]]
                    if op == "lse":
                        runs += [("tensor_cores", precision, 128) for precision in ("highest", "tf32", "bf16", SPLIT_F16)
                                 if d > (16 if precision == SPLIT_F16 else 8)]
                    for engine, precision, block_rows in runs:
                        os.environ["OT_FLOW_CUDA_ENGINE"] = engine
                        os.environ["OT_FLOW_ENGINE_BLOCK_ROWS"] = str(block_rows)
                        mode = set_highest(precision)
                        if op == "lse":
                            call = lambda: ot_flow.ops.lse(x, y, h, s, precision=mode)  # noqa: E731
                            err = ((call()[:CHECK_ROWS].double() - ref_lse).abs() / logit_scale).max().item()
                        else:
                            call = lambda: ot_flow.ops.barycentric(x, y, h, s, precision=mode)  # noqa: E731
                            mean = call()[0][:CHECK_ROWS].double()
                            err = ((mean - ref_mean).abs().amax(1) / ref_mean.abs().amax(1).clamp_min(1e-30)).max().item()
                        t = timeit(call, device)
                        floor = max(n * n / exp_rate, flops * MMA_COST[precision] / tf32_rate)
                        record(rows, {"op": op, "n=m": n, "d": d, "engine": engine, "precision": precision,
                                      "rows": block_rows if engine == "tensor_cores" else "", "ms": f"{t * 1e3:.3f}",
                                      "error": f"{err:.1e}", "of floor": f"{floor / t:.0%}"})
    finally:
        restore(saved)
        os.environ.pop("OT_FLOW_ENGINE_HIGHEST", None)
        os.environ.pop("OT_FLOW_ENGINE_BLOCK_ROWS", None)
    report.append(table(rows, ["op", "n=m", "d", "engine", "precision", "rows", "ms", "error", "of floor"]))
    report.append(mips_table(args.mips or [(4096, 1_000_000, 64), (4096, 1_000_000, 512), (4096, 200_000, 3072)],
                             args.mips_k, device, saved))
    publish("\n".join(report), args.out)


def exact_top_k(x, y, k, rows=CHECK_ROWS):
    """The float64 answer's indices (rows, k) for the first `rows` queries, ties to the lowest index
    (a stable descending sort keeps tied columns in index order)."""
    scores = x[:rows].double() @ y.double().T
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def mips_table(sizes, top_k, device, saved_engine):
    rows = []
    for position, (queries, n_points, d) in enumerate(sizes):
        g = torch.Generator(device=device).manual_seed(queries + d)
        x = torch.randn(queries, d, device=device, generator=g)
        y = torch.randn(n_points, d, device=device, generator=g)
        xb, yb = x.bfloat16(), y.bfloat16()
        for k in [1] + (list(top_k) if position == 0 else []):
            exact = exact_top_k(x, y, k)
            # Top-1 also in the opt-in 128-row blocks, where they change the kernel (d > 8;
            # bfloat16's packed pairs: d > 32).
            tall = [("tensor_cores", p, 128) for _, p in RUNS[1:] if k == 1 and d > (32 if p == "bf16" else 8)]
            for engine, precision, block_rows in [(e, p, 64) for e, p in RUNS] + tall:
                os.environ["OT_FLOW_CUDA_ENGINE"] = engine
                os.environ["OT_FLOW_ENGINE_BLOCK_ROWS"] = str(block_rows)
                call = lambda: ot_flow.ops.mips(x, y, None, k, precision=precision)[1]  # noqa: E731
                label = f"ot_flow {engine} {precision}" + (" rows=128" if block_rows == 128 else "")
                record(rows, mips_row(queries, n_points, d, k, label, call, exact, device))
            os.environ.pop("OT_FLOW_ENGINE_BLOCK_ROWS", None)
            restore(saved_engine)
            select = (lambda s: s.max(1).indices[:, None]) if k == 1 else (lambda s: s.topk(k, 1).indices)
            name = "addmm+max" if k == 1 else "addmm+topk"
            record(rows, mips_row(queries, n_points, d, k, f"torch fp32 {name}", lambda: select(x @ y.T), exact,
                                  device))
            record(rows, mips_row(queries, n_points, d, k, f"torch bf16 {name}", lambda: select(xb @ yb.T), exact,
                                  device))
    return "\n" + table(rows, ["queries", "N", "d", "k", "method", "ms", "agrees with float64"])


def mips_row(queries, n_points, d, k, name, call, exact, device):
    agree = (call()[:CHECK_ROWS] == exact).all(1).double().mean().item()
    return {"queries": queries, "N": n_points, "d": d, "k": k, "method": name,
            "ms": f"{timeit(call, device) * 1e3:.2f}", "agrees with float64": f"{agree:.1%} of {CHECK_ROWS}"}


def record(rows, row):
    """Adds a row to its table, and prints it at once on stderr: a run cut short by its time limit
    (gpu-check's) still shows what it measured."""
    rows.append(row)
    print(" | ".join(str(v) for v in row.values()), file=sys.stderr, flush=True)


def restore(saved):
    if saved is None:
        os.environ.pop("OT_FLOW_CUDA_ENGINE", None)
    else:
        os.environ["OT_FLOW_CUDA_ENGINE"] = saved


if __name__ == "__main__":
    main()
