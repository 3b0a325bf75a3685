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
    exp = _cpu_exp_rate(dtype) if torch.device(device).type == "cpu" else _gpu_exp_rate(device, dtype)
    big = torch.randn(64 * 2**20 // (4 if dtype == torch.float32 else 8), device=device, dtype=dtype)
    out = torch.empty_like(big)
    copy = 2 * big.numel() * big.element_size() / timeit(lambda: out.copy_(big), device)
    return {"gemm_flops": gemm, "exp_per_s": exp, "bytes_per_s": copy}


def _cpu_exp_rate(dtype):
    """exp/s of the CPU: one thread's rate on a cache-resident block times the thread count.

    A parallel exp over a buffer small enough to stay in cache measures the threads' start-up
    (on a loaded 2-core machine, 0.02 G/s), and a large one measures memory. One thread, best of
    many runs, scaled by the threads, is the arithmetic ceiling. The faster of torch.exp and
    our own vectorised exp (an lse_dense pass: one exp and two flops per entry, the cached
    Sinkhorn's loop) counts: the floor is the best exp this machine is known to do."""
    import ot_flow

    threads = torch.get_num_threads()
    block = torch.randn(64, 4096, dtype=dtype)  # 1 MiB in float32: resident in L2
    bias = torch.zeros(4096, dtype=dtype)
    hint = ot_flow.ops.lse_dense(block, bias, 1.0, 1)  # the one-pass route, as in Sinkhorn
    out = torch.empty_like(block)
    torch.set_num_threads(1)
    try:
        best = min(min_time(lambda: torch.exp(block, out=out)),
                   min_time(lambda: ot_flow.ops.lse_dense(block, bias, 1.0, 1, shift=hint, validate=False)))
    finally:
        torch.set_num_threads(threads)
    return threads * block.numel() / best


def _gpu_exp_rate(device, dtype):
    """exp/s of a GPU: torch.exp over a buffer large enough to fill it (memory-bound there too,
    so a lower bound of the SFU rate; gpu_floor_rates has the datasheet's)."""
    small = torch.randn(2**26, device=device, dtype=dtype)
    small_out = torch.empty_like(small)
    return small.numel() / timeit(lambda: torch.exp(small, out=small_out), device)


def min_time(fn, reps=50):
    """The best of ``reps`` wall times of fn() on the CPU (the least disturbed run)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


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


def require_cuda(script):
    """Exits with a one-line reason (no traceback) unless a CUDA device is visible and ot_flow was
    built with its CUDA kernels: what a benchmark's --device cuda mode calls first."""
    import ot_flow

    if not torch.cuda.is_available():
        sys.exit(f"{script}: --device cuda needs a CUDA GPU, and torch sees none here "
                 f"(torch {torch.__version__}, torch.cuda.is_available() is False)")
    if not ot_flow.cuda_built():
        sys.exit(f"{script}: --device cuda needs ot_flow built with its CUDA kernels "
                 "(OT_FLOW_CUDA=1 python setup.py build_ext --inplace; scripts/gpu-check.sh does it)")


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
