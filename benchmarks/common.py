"""Timing and hardware-floor helpers shared by the benchmark scripts."""

import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device="cpu", min_time=0.5, max_reps=50, warmup=1):
    """Median wall time of fn() in seconds over repetitions filling about min_time."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < 3 or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_rates(device="cpu", dtype=torch.float32):
    """Measured ceilings: GEMM FLOP/s, exp/s and memory bytes/s (read + write) on `device`."""
    n = 4096 if torch.device(device).type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    gemm = 2 * n**3 / timeit(lambda: a @ b, device)
    # exp throughput on a cache-resident buffer (arithmetic, not memory, is what it measures)
    small = torch.randn(2**17 if torch.device(device).type == "cpu" else 2**26, device=device, dtype=dtype)
    small_out = torch.empty_like(small)
    exp = small.numel() / timeit(lambda: torch.exp(small, out=small_out), device)
    big = torch.randn(64 * 2**20 // (4 if dtype == torch.float32 else 8), device=device, dtype=dtype)
    out = torch.empty_like(big)
    copy = 2 * big.numel() * big.element_size() / timeit(lambda: out.copy_(big), device)
    return {"gemm_flops": gemm, "exp_per_s": exp, "bytes_per_s": copy}


def header(title):
    lines = [
        f"# {title}",
        f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"command: {shlex.join([sys.executable.split('/')[-1]] + sys.argv)}",
        f"torch: {torch.__version__}, threads: {torch.get_num_threads()}",
        f"machine: {platform.machine()} {cpu_name()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name()}")
    return "\n".join(lines)


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip() + f" ({torch.get_num_threads()} threads)"
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor()


def table(rows, columns):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    lines = [fmt.format(*columns), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*(str(r.get(c, "")) for c in columns)) for r in rows]
    return "\n".join(lines)


def publish(text, out):
    """Prints a report and, when `out` is given, writes it there (benchmarks/results/...)."""
    print(text)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(text + "\n")


def gpu_floor_rates(device="cuda"):
    """Ceilings for a CUDA floor: the measured TF32 tensor-core GEMM rate (FLOP/s) and the exp rate.

    The exp rate is the larger of torch.exp2's measured rate (a memory-bound elementwise kernel, so
    a lower bound) and the nominal rate of the special-function units, 16 ex2 per SM per clock
    (sm_80 / sm_90), from the device's SM count and clock when torch reports it: "exp units".
    """
    n = 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        tf32 = 2 * n**3 / timeit(lambda: a @ b, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    big = torch.randn(2**26, device=device)
    out = torch.empty_like(big)
    measured = big.numel() / timeit(lambda: torch.exp2(big, out=out), device)
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "clock_rate", 0) or 0
    nominal = 16 * props.multi_processor_count * clock_khz * 1e3
    return {"tf32_flops": tf32, "exp_per_s": max(measured, nominal), "exp_measured": measured, "exp_nominal": nominal}
