"""The two half-steps of Sinkhorn (f from g, g from f) for each placement of the work:

* ``LocalHalves``: one process (streamed, or one fused pass over cached dot products);
* ``ReplicatedHalves``: every rank holds all of x and y, updates its block of rows (and of
  columns) and all-gathers the block, so every rank ends each half-step with the full,
  bitwise identical potential;
* ``ShardedHalves``: every rank holds only its shard of x and of y and updates its slice of
  f (and of g) against the other side's shards, which pass round the ranks (ring) together
  with their part of the bias while the current one is used.

The solver loop (sinkhorn_iterations.py) is the same for all three; `total` adds up a sum over
this rank's rows (the marginal error of its slice of f) across the ranks and `sum` sums a per-row
quantity over all rows, both all-reduced where the rows are sharded, so every rank takes the same
decisions and stops at the same iteration.

Every op call passes ``validate=False``: sinkhorn() checked the points and weights once, and the
loop checks the potentials' finiteness itself when it reads its error (readback.py), so no
half-step reads data back on the host (a host synchronisation per check on CUDA).
"""


import math

import torch

from ot_flow import distributed
from ot_flow.ops import lse, softmin, softmin_dense
from ot_flow.solvers import merge_rules

__all__ = ["LocalHalves", "ReplicatedHalves", "ShardedHalves"]


class _Reductions:
    """What the loop reads off the rows: ``total`` (a 0-dim sum over this process's rows, added
    up over all rows), ``sum`` (a per-row quantity summed over all rows, float64) and ``checksum``
    (a potential's float64 sum: finite exactly when every entry is, one reduction where
    torch.isfinite(t).all() takes five ops) stay on the device, so that the loop can read them
    when it chooses (readback.py); ``all_finite`` reads ``checksum`` at once. (A float32 sum
    cannot overflow float64; a float64 one would need entries near 1e300.)"""

    def total(self, local):
        return local

    def sum(self, per_row):
        return self.total(per_row.double().sum())

    def checksum(self, t):
        return self.total(t.sum(dtype=torch.float64))

    def all_finite(self, t):
        return math.isfinite(self.checksum(t))


class LocalHalves(_Reductions):
    """One process. With `dots` (the cached n x m dot products) each half-step is one
    ``softmin_dense`` call, given the current potential as the shift hint (lse_i = -f_i / e at
    the fixed point): a small solve's iteration is a handful of op calls, whose dispatch shows
    next to passes over a few hundred thousand entries."""

    def __init__(self, x, y, log_a, log_b, dots=None, precision="highest"):
        self.x, self.y, self.log_a, self.log_b, self.dots = x, y, log_a, log_b, dots
        self.precision = precision

    def f_update(self, g, e, f_now):
        if self.dots is not None:
            return softmin_dense(self.dots, g, e, 1, self.log_b, f_now, validate=False)
        return softmin(self.x, self.y, g, e, self.log_b, precision=self.precision, validate=False)

    def g_update(self, f, e, g_now):
        if self.dots is not None:
            return softmin_dense(self.dots, f, e, 0, self.log_a, g_now, validate=False)
        return softmin(self.y, self.x, f, e, self.log_a, precision=self.precision, validate=False)


class ReplicatedHalves(LocalHalves):
    """Every rank: the full x, y; it computes rows rows[rank] of f and columns cols[rank] of g."""

    def __init__(self, x, y, log_a, log_b, process_group, precision="highest"):
        super().__init__(x, y, log_a, log_b, precision=precision)
        self.group = process_group
        rank, world = distributed.group_info(process_group)
        self.rows = distributed.even_blocks(x.shape[0], world)
        self.cols = distributed.even_blocks(y.shape[0], world)
        self.r0, self.r1 = self.rows[rank]
        self.c0, self.c1 = self.cols[rank]

    def f_update(self, g, e, f_now):
        block = softmin(self.x[self.r0:self.r1], self.y, g, e, self.log_b, precision=self.precision, validate=False)
        return distributed.all_gather_uneven(block, [b - a for a, b in self.rows], self.group)

    def g_update(self, f, e, g_now):
        block = softmin(self.y[self.c0:self.c1], self.x, f, e, self.log_a, precision=self.precision, validate=False)
        return distributed.all_gather_uneven(block, [b - a for a, b in self.cols], self.group)


class ShardedHalves(_Reductions):
    """Every rank: its shard x (n_r rows) with log_a, and its shard y (m_r rows) with log_b."""

    def __init__(self, x, y, log_a, log_b, process_group, precision="highest"):
        self.x, self.y, self.log_a, self.log_b, self.group = x, y, log_a, log_b, process_group
        self.precision = precision
        self.x_sizes = distributed.shard_sizes(x.shape[0], x.device, process_group)
        self.y_sizes = distributed.shard_sizes(y.shape[0], y.device, process_group)

    def _softmin(self, rows, other, other_potential, other_log_w, other_sizes, e):
        """-e log sum over every rank's shard of `other` of exp((pot_j + <r_i, o_j>) / e + log w_j)."""
        payload = torch.cat([other, (other_potential / e + other_log_w)[:, None]], dim=1)
        parts = (lse(rows, shard[:, :-1], shard[:, -1], 1.0 / e, precision=self.precision, validate=False)
                 for _, shard in distributed.ring(payload, other_sizes, self.group))
        return -e * merge_rules.lse_of(parts, rows)

    def f_update(self, g, e, f_now):
        return self._softmin(self.x, self.y, g, self.log_b, self.y_sizes, e)

    def g_update(self, f, e, g_now):
        return self._softmin(self.y, self.x, f, self.log_a, self.x_sizes, e)

    def total(self, local):
        return distributed.all_sum(local.reshape(1), self.group)[0]

