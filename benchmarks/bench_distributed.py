"""Sharded Sinkhorn on this machine: 1 process against 2 Gloo processes, per iteration.

    python benchmarks/bench_distributed.py [--n 16384] [--d 64] [--worlds 1 2] [--iters 10]

Each configuration runs in freshly spawned processes (Gloo, CPU); every process gets
total_threads / world threads, so 1 x 2 threads and 2 x 1 thread use the same cores. Timed: a
fixed number of streamed iterations (no early stop) after a warm-up solve; "MB sent/iter" is
what one rank puts on the wire per iteration, counted from the message sizes (replicated: its
blocks of f and g in the all-gathers; sharded: its shards of x and y with their bias column,
passed world - 1 times round the ring). The README turns these counts into the expected scaling
at n = 2^21 on 8 GPUs.
"""

import argparse
import datetime
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from common import header, publish, table  # noqa: E402


def bytes_per_iteration(n, m, d, world, sharded, element=4):
    """Bytes one rank sends per Sinkhorn iteration (one f- and one g-update)."""
    if world == 1:
        return 0
    if not sharded:  # all_gather of its block of f and of g (ring all-gather: world - 1 sends of a block)
        return (world - 1) * (-(-n // world) + -(-m // world)) * element
    return (world - 1) * (-(-n // world) + -(-m // world)) * (d + 1) * element


def rank_main(rank, world, init_file, n, d, iters, threads, sharded, out_file):
    torch.set_num_threads(threads)
    import ot_flow

    group = None
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=10))
        group = dist.group.WORLD
    g = torch.Generator().manual_seed(n + d)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + 1
    if sharded and world > 1:
        x, y = x.chunk(world)[rank].contiguous(), y.chunk(world)[rank].contiguous()
    kw = dict(eps=0.05, tol=1e-12, anneal=False, cost_cache=False, process_group=group,
              sharded=sharded and world > 1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ot_flow.sinkhorn(x, y, max_iter=2, **kw)  # warm-up: thread pools, first collectives
        t0 = time.perf_counter()
        ot_flow.sinkhorn(x, y, max_iter=iters, **kw)
        elapsed = time.perf_counter() - t0
    if rank == 0:
        with open(out_file, "w") as f:
            f.write(str(elapsed / iters))
    if world > 1:
        dist.destroy_process_group()


def measure(world, n, d, iters, sharded, total_threads):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "seconds")
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=rank_main, args=(r, world, os.path.join(tmp, "init"), n, d, iters,
                                                     max(1, total_threads // world), sharded, out))
                 for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            return None
        with open(out) as f:
            return float(f.read())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    lines = [header(f"Distributed Sinkhorn, Gloo on CPU: n = m = {args.n}, d = {args.d}, float32, streamed, "
                    f"{args.iters} iterations, {threads} threads shared by the ranks")]
    print("\n".join(lines), flush=True)
    rows, base = [], None
    for sharded in (False, True):
        for world in args.worlds:
            if world == 1 and sharded:
                continue
            seconds = measure(world, args.n, args.d, args.iters, sharded, threads)
            placement = "one process" if world == 1 else ("sharded" if sharded else "replicated")
            row = {"ranks": world, "placement": placement, "threads/rank": max(1, threads // world),
                   "s/iter": "failed" if seconds is None else f"{seconds:.3f}",
                   "MB sent/iter/rank": f"{bytes_per_iteration(args.n, args.n, args.d, world, sharded) / 1e6:.3f}"}
            if world == 1:
                base = seconds
            if seconds and base:
                row["vs one process"] = f"{seconds / base:.2f}x"
            rows.append(row)
            print(row, flush=True)
    lines.append(table(rows, ["ranks", "placement", "threads/rank", "s/iter", "vs one process", "MB sent/iter/rank"]))
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
