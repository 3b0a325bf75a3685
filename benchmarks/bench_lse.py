"""ot_flow.ops.lse against plain PyTorch `logsumexp(s * x @ y.T + h)`, with the hardware floor.

    python benchmarks/bench_lse.py [--device cuda] [--out benchmarks/results/lse-cpu.txt]

The floor is the larger of the GEMM time (2 n m d FLOPs over the measured GEMM rate) and the
exp time (n m exps over the measured exp rate); `of floor` is floor / our time.
"""

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import ot_flow  # noqa: E402
from common import header, machine_rates, publish, table, timeit  # noqa: E402


def dense_lse(x, y, h, s):
    return torch.logsumexp(torch.addmm(h, x, y.T, alpha=s), dim=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--out", default=None, help="also write the report to this file")
    parser.add_argument("--memory-budget-gb", type=float, default=4.0, help="skip dense runs above this")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    cuda = args.device == "cuda"
    sizes = [1024, 4096, 16384, 65536] if not cuda else [4096, 16384, 65536, 262144]
    dims = [2, 64, 256]

    rates = machine_rates(args.device, dtype)
    report = [header(f"lse benchmark ({args.device}, {args.dtype})")]
    report.append(
        f"measured rates: GEMM {rates['gemm_flops'] / 1e9:.1f} GFLOP/s, exp {rates['exp_per_s'] / 1e9:.2f} G/s, "
        f"copy {rates['bytes_per_s'] / 1e9:.1f} GB/s"
    )
    rows = []
    for n in sizes:
        for d in dims:
            g = torch.Generator(device=args.device).manual_seed(n + d)
            x = torch.randn(n, d, device=args.device, dtype=dtype, generator=g)
            y = torch.randn(n, d, device=args.device, dtype=dtype, generator=g)
            h = torch.randn(n, device=args.device, dtype=dtype, generator=g)
            s = 1.0 / d**0.5
            if not cuda and n * n * d > 2**34:
                continue  # minutes per call on a small CPU; the trend is clear below
            t_ours = timeit(lambda: ot_flow.ops.lse(x, y, h, s), args.device)
            floor = max(2 * n * n * d / rates["gemm_flops"], n * n / rates["exp_per_s"])
            row = {"n=m": n, "d": d, "ot_flow ms": f"{t_ours * 1e3:.2f}", "of floor": f"{floor / t_ours:.0%}"}
            dense_bytes = 3 * n * n * x.element_size()  # logits, exp temp, reduction input
            if dense_bytes <= args.memory_budget_gb * 2**30:
                t_dense = timeit(lambda: dense_lse(x, y, h, s), args.device)
                err = (ot_flow.ops.lse(x, y, h, s).double() - dense_lse(x.double(), y.double(), h.double(), s)).abs().max()
                row.update({"torch dense ms": f"{t_dense * 1e3:.2f}", "speed-up": f"{t_dense / t_ours:.2f}x",
                            "max abs err": f"{err.item():.1e}"})
            else:
                row.update({"torch dense ms": "out of budget", "speed-up": "-"})
            rows.append(row)
            print(row, flush=True)
    report.append(table(rows, ["n=m", "d", "ot_flow ms", "torch dense ms", "speed-up", "of floor", "max abs err"]))
    text = "\n".join(report)
    publish(text, args.out)


if __name__ == "__main__":
    main()
