"""ot_flow.ops.lse against plain PyTorch `logsumexp(s * x @ y.T + h)`, with the hardware floor.

    python benchmarks/bench_lse.py [--device cuda] [--precision highest] [--sizes ...] [--dims ...]
                                   [--out benchmarks/results/lse-cpu.txt]

The floor is the larger of the GEMM time (2 n m d FLOPs over the measured GEMM rate) and the
exp time (n m exps over the measured exp rate); `of floor` is floor / our time.

With --device cuda each row also times FlashSinkhorn 0.4.1's streaming log-sum-exp (the kernel of
its Sinkhorn half-steps; optional, benchmarks/flash_sinkhorn_peer.py; skipped with the reason
printed when it is not installed) in TF32 (its default) and fp32, and torch dense in fp32 and TF32
(torch.backends.cuda.matmul.allow_tf32), all on the same x, y, h and scale. "P ms" is P's median
time, "vs P" P's time over ours (above 1: ot_flow is faster), "P err" the largest absolute error of
the first 256 rows against a float64 dense reference, `precision` the mode passed to
ot_flow.ops.lse. On CUDA the floor is max(n m exps / exp rate, 2 n m d FLOPs / TF32 tensor-core
rate): the exp units bound it for d <= 64, the tensor cores above (common.gpu_floor_rates).
"""

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import ot_flow  # noqa: E402
from common import gpu_floor_rates, header, machine_rates, publish, table, timeit  # noqa: E402

CHECK_ROWS = 256


def dense_lse(x, y, h, s):
    return torch.logsumexp(torch.addmm(h, x, y.T, alpha=s), dim=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--out", default=None, help="also write the report to this file")
    parser.add_argument("--memory-budget-gb", type=float, default=4.0, help="skip dense runs above this")
    parser.add_argument("--precision", default="highest", choices=["highest", "tf32", "bf16"],
                        help="ot_flow.ops.lse's precision mode")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="n = m values (default 1024 4096 16384 65536 on CPU, 4096 16384 65536 262144 on CUDA)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64, 256])
    parser.add_argument("--flash-autotune", action=argparse.BooleanOptionalAction, default=True,
                        help="FlashSinkhorn's Triton autotuning (its default; minutes on a fresh machine)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    cuda = args.device == "cuda"
    sizes = args.sizes or ([1024, 4096, 16384, 65536] if not cuda else [4096, 16384, 65536, 262144])
    dims = args.dims
    if cuda:
        return main_cuda(args, dtype, sizes, dims)

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
            if n * n * d > 2**34:
                continue  # minutes per call on a small CPU; the trend is clear below
            t_ours = timeit(lambda: ot_flow.ops.lse(x, y, h, s, precision=args.precision), args.device)
            floor = max(2 * n * n * d / rates["gemm_flops"], n * n / rates["exp_per_s"])
            row = {"n=m": n, "d": d, "ot_flow ms": f"{t_ours * 1e3:.2f}", "of floor": f"{floor / t_ours:.0%}"}
            dense_bytes = 3 * n * n * x.element_size()  # logits, exp temp, reduction input
            if dense_bytes <= args.memory_budget_gb * 2**30:
                t_dense = timeit(lambda: dense_lse(x, y, h, s), args.device)
                err = (ot_flow.ops.lse(x, y, h, s, precision=args.precision).double() - dense_lse(x.double(), y.double(), h.double(), s)).abs().max()
                row.update({"torch dense ms": f"{t_dense * 1e3:.2f}", "speed-up": f"{t_dense / t_ours:.2f}x",
                            "max abs err": f"{err.item():.1e}"})
            else:
                row.update({"torch dense ms": "out of budget", "speed-up": "-"})
            rows.append(row)
            print(row, flush=True)
    report.append(table(rows, ["n=m", "d", "ot_flow ms", "torch dense ms", "speed-up", "of floor", "max abs err"]))
    text = "\n".join(report)
    publish(text, args.out)


def dense_tf32(fn, tf32):
    """fn() with torch's float32 matmuls on TF32 tensor cores (tf32=True) or in full fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return fn()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def main_cuda(args, dtype, sizes, dims):
    """--device cuda: ot_flow against FlashSinkhorn (TF32, fp32) and torch dense (fp32, TF32)."""
    import flash_sinkhorn_peer as flash

    device = args.device
    rates = gpu_floor_rates(device)
    report = [header(f"lse benchmark ({device}, {args.dtype}, ot_flow precision={args.precision})")]
    report.append(
        f"measured rates: TF32 GEMM {rates['tf32_flops'] / 1e12:.0f} TFLOP/s, exp {rates['exp_per_s'] / 1e9:.0f} G/s "
        f"(torch.exp2 {rates['exp_measured'] / 1e9:.0f} G/s, SFU nominal {rates['exp_nominal'] / 1e9:.0f} G/s)"
    )
    skip = flash.unavailable(device)
    if skip is None and dtype != torch.float32:
        skip = "float32 inputs only"
    report.append(f"{flash.NAME} {flash.VERSION}: " + (f"skipped: {skip}" if skip else
                  f"autotune {'on' if args.flash_autotune else 'off'}, first call per shape untimed"))
    print("\n".join(report), flush=True)
    peers = [] if skip else [
        ("flash tf32", lambda x, y, h, s: flash.lse(x, y, h, s, "tf32", autotune=args.flash_autotune)),
        ("flash fp32", lambda x, y, h, s: flash.lse(x, y, h, s, "fp32", autotune=args.flash_autotune)),
    ]
    dense = [("dense fp32", False), ("dense tf32", True)]
    rows = []
    for n in sizes:
        for d in dims:
            g = torch.Generator(device=device).manual_seed(n + d)
            x = torch.randn(n, d, device=device, dtype=dtype, generator=g)
            y = torch.randn(n, d, device=device, dtype=dtype, generator=g)
            h = torch.randn(n, device=device, dtype=dtype, generator=g)
            s = 1.0 / d**0.5
            ref = dense_lse(x[:CHECK_ROWS].double(), y.double(), h.double(), s)

            def err(out):
                return f"{(out[:CHECK_ROWS].double() - ref).abs().max().item():.1e}"

            ours = lambda: ot_flow.ops.lse(x, y, h, s, precision=args.precision)  # noqa: E731
            t_ours = timeit(ours, device)
            floor = max(n * n / rates["exp_per_s"], 2 * n * n * d / rates["tf32_flops"])
            row = {"n=m": n, "d": d, "precision": args.precision, "ot_flow ms": f"{t_ours * 1e3:.3f}",
                   "ot_flow err": err(ours()), "floor ms": f"{floor * 1e3:.3f}", "of floor": f"{floor / t_ours:.0%}"}
            for name, fn in peers:
                try:
                    call = lambda: fn(x, y, h, s)  # noqa: E731
                    t = timeit(call, device)  # its warm-up call compiles and autotunes
                    row.update({f"{name} ms": f"{t * 1e3:.3f}", f"vs {name}": f"{t / t_ours:.2f}x", f"{name} err": err(call())})
                except Exception as exc:  # a failing peer reports why, the table goes on
                    row[f"{name} ms"] = f"failed: {type(exc).__name__}"
                    print(f"{name} failed at n={n} d={d}: {exc}", flush=True)
            if 3 * n * n * x.element_size() <= args.memory_budget_gb * 2**30:
                for name, tf32 in dense:
                    call = lambda: dense_tf32(lambda: dense_lse(x, y, h, s), tf32)  # noqa: E731
                    t = timeit(call, device)
                    row.update({f"{name} ms": f"{t * 1e3:.3f}", f"vs {name}": f"{t / t_ours:.2f}x", f"{name} err": err(call())})
            else:
                row.update({f"{name} ms": "out of budget" for name, _ in dense})
            rows.append(row)
            print(row, flush=True)
    cols = ["n=m", "d", "precision", "ot_flow ms", "ot_flow err", "floor ms", "of floor"]
    for name in [p for p, _ in peers] + [p for p, _ in dense]:
        cols += [f"{name} ms", f"vs {name}", f"{name} err"]
    report.append(table(rows, cols))
    publish("\n".join(report), args.out)


if __name__ == "__main__":
    main()
