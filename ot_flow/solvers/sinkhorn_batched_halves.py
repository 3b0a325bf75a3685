"""The half-steps of a batched solve across the ranks of a process group, for the loop of
sinkhorn_batched_iterations.py (which runs BatchedHalves on one process): the batched
counterparts of sinkhorn_halves.ReplicatedHalves and ShardedHalves.

* ``ReplicatedBatchedHalves``: every rank holds all B problems, updates its block of rows (of
  columns for g) of every running problem in one batched ``lse`` call and all-gathers the
  blocks, so every rank ends each half-step with the full, bitwise identical potentials; the
  loop's sums and finiteness checks then stay local (BatchedHalves'), every rank reading the
  same bits.
* ``ShardedBatchedHalves``: every rank holds its rows of every problem (x (B, n_r, d), y (B, m_r,
  d)) and updates its slices of f (and of g) against the other side's shards, which pass round
  the ranks (ring) with their part of the bias, one batched ``lse`` call per shard, merged by
  merge_rules.lse_of. The per-problem sums and finiteness flags the loop decides on are
  all-reduced: one all-reduce of the running problems' values per call, not one per problem.
"""

import functools

import torch

from ot_flow import distributed
from ot_flow.ops import lse
from ot_flow.solvers import merge_rules
from ot_flow.solvers.sinkhorn_batched_iterations import BatchedHalves, _per_problem, _take

__all__ = ["ReplicatedBatchedHalves", "ShardedBatchedHalves", "halves_of"]


def halves_of(process_group, sharded, dots=None):
    """The half-steps of a batched solve over ``process_group`` (None: one process, streamed, or
    cached over ``dots``, the (B, n, m) working dot products), as the constructor
    ``(x, y, log_a, log_b, precision=...)`` that solve_batched_at calls."""
    if process_group is None:
        return functools.partial(BatchedHalves, dots=dots)
    if dots is not None:
        raise ValueError("argument 'cost_cache': the distributed solver streams; pass 'auto' or False")
    return functools.partial(ShardedBatchedHalves if sharded else ReplicatedBatchedHalves,
                             process_group=process_group)


class ReplicatedBatchedHalves(BatchedHalves):
    """Every rank: all of x (B, n, d), y (B, m, d); it computes rows rows[rank] of every running
    problem's f and columns cols[rank] of its g."""

    def __init__(self, x, y, log_a, log_b, precision="highest", *, process_group):
        super().__init__(x, y, log_a, log_b, precision=precision)
        self.group = process_group
        rank, world = distributed.group_info(process_group)
        self.rows = distributed.even_blocks(x.shape[1], world)
        self.cols = distributed.even_blocks(y.shape[1], world)
        self.rank = rank

    def _block(self, rows, blocks, cols, other, log_w, es):
        """This rank's block of the softmin of every running problem, all-gathered: (k, rows)."""
        r0, r1 = blocks[self.rank]
        if r1 > r0:
            part = self._softmin(rows[:, r0:r1], cols, other, log_w, es)
        else:  # fewer rows than ranks: nothing to compute here, but the gather needs every rank
            part = other.new_empty((other.shape[0], 0))
        return distributed.all_gather_uneven(part, [b - a for a, b in blocks], self.group, dim=1).contiguous()

    def f_update(self, idx, g, es, f_now):
        x, y = self._selected(idx)
        return self._block(x, self.rows, y, g, _take(self.log_b, idx), es)

    def g_update(self, idx, f, es, g_now):
        x, y = self._selected(idx)
        return self._block(y, self.cols, x, f, _take(self.log_a, idx), es)


class ShardedBatchedHalves(BatchedHalves):
    """Every rank: its shard x (B, n_r, d) with log_a, and its shard y (B, m_r, d) with log_b (the
    same n_r, m_r for every problem of a rank; they may differ between ranks)."""

    def __init__(self, x, y, log_a, log_b, precision="highest", *, process_group):
        super().__init__(x, y, log_a, log_b, precision=precision)
        self.group = process_group
        self.x_sizes = distributed.shard_sizes(x.shape[1], x.device, process_group)
        self.y_sizes = distributed.shard_sizes(y.shape[1], y.device, process_group)

    def _ring_softmin(self, rows, other, other_potential, other_log_w, other_sizes, es):
        """-e log sum over every rank's shard of `other` of exp((pot_j + <r_i, o_j>) / e + log w_j),
        per running problem (each at its own e)."""
        e = _per_problem(es, other_potential)
        payload = torch.cat([other, (other_potential / e + other_log_w)[:, :, None]], dim=2)
        scales = [1.0 / v for v in es]
        parts = (lse(rows, shard[:, :, :-1], shard[:, :, -1], scales, precision=self.precision,
                     validate=False).reshape(-1)
                 for _, shard in distributed.ring(payload, other_sizes, self.group, dim=1))
        # the merge is per row: the problems' rows merge as one list of k * n_r rows
        merged = merge_rules.lse_of(parts, rows.new_empty(rows.shape[0] * rows.shape[1]))
        return -e * merged.reshape(rows.shape[:2])

    def f_update(self, idx, g, es, f_now):
        x, y = self._selected(idx)
        return self._ring_softmin(x, y, g, _take(self.log_b, idx), self.y_sizes, es)

    def g_update(self, idx, f, es, g_now):
        x, y = self._selected(idx)
        return self._ring_softmin(y, x, f, _take(self.log_a, idx), self.x_sizes, es)

    def totals(self, *local):
        return distributed.all_sum(torch.cat(local), self.group).split([t.shape[0] for t in local])

