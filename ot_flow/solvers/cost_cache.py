"""When a Sinkhorn solve holds its n x m dot products (``cost_cache="auto"``): the cached-cost
path makes one fused ``lse_dense`` pass per half-iteration instead of a streamed GEMM.

Held on the CPU when they fit the budget and either the GEMM is what a streamed pass pays for
(d >= 16) or the matrix is small enough to stay near the caches. Measured
(benchmarks/results/sinkhorn-cpu.txt): cached is 1.6x faster at n = 4096, d = 2 and 3.2x at
d = 64; at n = 16384, d = 2 the 1 GiB matrix is read from memory twice per iteration and
streaming wins (476 vs 575 ms/iter). On a GPU the streamed GEMM runs on the tensor cores; the
cache there is opt-in until measured. A batch holds its B matrices when each problem's solve
would hold its own and all B fit the same budget together.

A cached half-step reads its n x m matrix once and does one exp per entry: a matrix that stays
in the last-level cache between half-steps is read at cache speed, one that does not from
memory. Ten problems of 1024 x 1024 (40 MiB) overflow a 32 MiB L3 where each one alone fits:
measured at d = 2, one batch of the ten took 0.295 s against 0.234 s for ten separate solves
(1.26x slower). A CPU batch is therefore solved in groups whose matrices take at most a third of
the last-level cache: groups of two took 0.202 s (1.16x faster than the separate solves).
"""

import functools
import glob

__all__ = ["CACHE_BUDGET_BYTES", "cache_group_size", "caches_costs", "caches_batched_costs"]

CACHE_BUDGET_BYTES = 1 << 30
_CACHE_MIN_DIM = 16
_CACHE_SMALL_BYTES = 256 << 20


def caches_costs(x, y, process_group=None):
    """Whether ``cost_cache="auto"`` holds the dot products of a 2-D solve of x (n, d), y (m, d)
    (float32/float64 points)."""
    size = x.shape[0] * y.shape[0] * x.element_size()
    return process_group is None and x.device.type == "cpu" and size <= CACHE_BUDGET_BYTES and (
        x.shape[1] >= _CACHE_MIN_DIM or size <= _CACHE_SMALL_BYTES)


def caches_batched_costs(x, y):
    """Whether ``cost_cache="auto"`` holds the dot products of a batch x (B, n, d), y (B, m, d):
    when a separate solve of one problem would hold its own (so that every problem runs the
    path of its separate default solve) and the B matrices together fit the budget."""
    return batch_fits(x.shape[0], x.shape[1], y.shape[1], x.element_size()) and caches_costs(x[0], y[0])


def batch_fits(count, n, m, item_size):
    """Whether ``count`` cached n x m matrices of ``item_size``-byte entries fit the budget."""
    return count * n * m * item_size <= CACHE_BUDGET_BYTES


def cache_group_size(n, m, item_size):
    """How many cached n x m matrices a CPU batch solves together: as many as fit a third of the
    last-level cache (the rest of it holds the points, potentials and the other thread's lines),
    at least one."""
    return max(1, last_level_cache_bytes() // 3 // (n * m * item_size))


@functools.lru_cache(maxsize=None)
def last_level_cache_bytes():
    """The size of CPU 0's largest cache level (Linux sysfs), 32 MiB where it cannot be read."""
    best_level, size = 0, 32 << 20
    for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(f"{index}/level") as f:
                level = int(f.read())
            with open(f"{index}/size") as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        value = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        if level > best_level:
            best_level, size = level, value
    return size
