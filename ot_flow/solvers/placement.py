"""Where a solved coupling's rows and columns live, and how a pass over it runs there:

* ``Local``: one process holds every row and column;
* ``Replicated``: every rank holds all of x and y (the replicated solve); a draw splits the rows
  between the ranks and gathers them, so every rank gets the whole, identical answer;
* ``Sharded``: every rank holds its shard of the rows and of the columns; a pass sends the
  column shards round the ranks (ring) and merges the parts (merge_rules.py).

The result's methods (sinkhorn_result.py) are written once against these three operations:
``total`` (a sum over all rows), ``row_means`` (softmax-weighted means over all columns, with
the row log-sum-exps) and ``sample`` (one Gumbel-max column per row). The iteration's own
placement classes are the half-steps of sinkhorn_halves.py.
"""

import torch

from ot_flow import distributed
from ot_flow.ops import barycentric, gumbel_argmax
from ot_flow.solvers import merge_rules

__all__ = ["Local", "Replicated", "Sharded", "placement_of"]


class Local:
    """One process holds every row and column. ``precision`` goes to every op call (the dot
    products' precision, see ot_flow.ops.precision)."""

    sharded = False

    def __init__(self, process_group=None, precision="highest"):
        self.group, self.precision = process_group, precision

    def total(self, t):
        """Sum over all rows, a float64 0-d tensor."""
        return t.double().sum()

    def row_means(self, x, y, bias, scale, columns=None):
        """(means over j of columns_j (y_j by default) under the softmax of scale <x_i, y_j> + bias_j,
        row log-sum-exps)."""
        return barycentric(x, y, bias, scale, columns, precision=self.precision)

    def sample(self, x, y, bias, scale, seed):
        """For each row, the Gumbel-max column under the logits scale <x_i, y_j> + bias_j."""
        return gumbel_argmax(x, y, bias, scale, seed=seed, precision=self.precision)


class Replicated(Local):
    """Every rank holds all rows and columns; a draw is split by rows and gathered."""

    def sample(self, x, y, bias, scale, seed):
        rank, world = distributed.group_info(self.group)
        rows = distributed.even_blocks(x.shape[0], world)
        r0, r1 = rows[rank]
        block = gumbel_argmax(x[r0:r1], y, bias, scale, seed=seed, row_offset=r0, precision=self.precision)
        return distributed.all_gather_uneven(block, [b - a for a, b in rows], self.group)


class Sharded(Local):
    """Every rank holds its rows and its columns; column shards travel round the ranks."""

    sharded = True

    def total(self, t):
        return distributed.all_sum(t.double().sum().reshape(1), self.group)[0]

    def row_means(self, x, y, bias, scale, columns=None):
        # the bias and the points (or the averaged columns, which start with the points) travel once
        d = y.shape[1]
        payload = torch.cat([bias[:, None], y if columns is None else columns], dim=1)
        sizes = distributed.shard_sizes(y.shape[0], y.device, self.group)
        parts = (barycentric(x, shard[:, 1:d + 1], shard[:, 0], scale, None if columns is None else shard[:, 1:],
                             precision=self.precision)
                 for _, shard in distributed.ring(payload, sizes, self.group))
        width = d if columns is None else columns.shape[1]
        return merge_rules.means_of(parts, x.new_zeros(x.shape[0], width))

    def sample(self, x, y, bias, scale, seed):
        rank, world = distributed.group_info(self.group)
        x_sizes = distributed.shard_sizes(x.shape[0], x.device, self.group)
        y_sizes = distributed.shard_sizes(y.shape[0], y.device, self.group)
        row_offset, col_offsets = sum(x_sizes[:rank]), [sum(y_sizes[:r]) for r in range(world)]

        def shards():
            payload = torch.cat([y, bias[:, None]], dim=1)
            for owner, shard in distributed.ring(payload, y_sizes, self.group):
                j, value = gumbel_argmax(x, shard[:, :-1], shard[:, -1], scale, seed=seed,
                                         row_offset=row_offset, col_offset=col_offsets[owner], return_value=True,
                                         precision=self.precision)
                yield value, j + col_offsets[owner]

        return merge_rules.best_of(shards(), x.shape[0], x.device)[1]


def placement_of(process_group, sharded, precision="highest"):
    """The placement of a solve over ``process_group`` (None: one process)."""
    if process_group is None:
        return Local(precision=precision)
    return (Sharded if sharded else Replicated)(process_group, precision)
