"""The result of a batched Sinkhorn solve: B couplings, each kept implicit in its own working
frame. Streaming passes over them (barycentric map, cost, entropy, mass, samples) are ONE batched
kernel call over all problems; what is read off each problem afterwards is the 2-D result's own
code (``result[k]`` is problem k's :class:`SinkhornResult`, sharing the batched pass), so every
number equals the separate solve's.

Solved across ranks: replicated, every rank holds all rows and columns and runs the batched
passes itself (the same bits on every rank; a draw splits the rows between the ranks and gathers
them); sharded, every rank holds its rows and columns of each problem and each pass is problem
k's own 2-D sharded pass (the column shards of one problem pass round the ranks), and the dense
plans are refused."""

from dataclasses import dataclass, field

import torch

from ot_flow import distributed
from ot_flow.ops import barycentric, gumbel_argmax, seed_from
from ot_flow.ops.layout import stack_aligned
from ot_flow.solvers import validation
from ot_flow.solvers.sinkhorn_result import _PLAN_MAX_BYTES, SinkhornResult

__all__ = ["BatchedSinkhornResult"]


@dataclass
class BatchedSinkhornResult:
    """B solved entropic couplings P^k_ij = a^k_i b^k_j exp((f^k_i + g^k_j - C^k_ij) / eps_k).

    ``f`` (B, n), ``g`` (B, m) in the user's units; ``eps``, ``spread``, ``error`` float64 (B,),
    ``n_iter`` int64 (B,), ``converged`` bool (B,), ``errors`` a list of B error histories.
    ``result[k]`` (k < ``len(result)``) is problem k as a 2-D :class:`SinkhornResult`.
    Sharded (``sharded=True``): ``f``, ``g``, ``x``, ``y``, ``a``, ``b`` and the per-row outputs
    are this rank's rows of each problem; the scalars are over all ranks.
    """

    problems: list[SinkhornResult] = field(repr=False)  # each on its own working frame
    xw: torch.Tensor = field(repr=False)  # (B, n, d) working points, stacked
    yw: torch.Tensor = field(repr=False)
    f: torch.Tensor = None
    g: torch.Tensor = None
    eps: torch.Tensor = None
    n_iter: torch.Tensor = None
    error: torch.Tensor = None
    converged: torch.Tensor = None
    spread: torch.Tensor = None
    cost: str = "sqeuclidean"
    path: str = "streamed"
    tau_a: float = 1.0
    tau_b: float = 1.0
    precision: str = "highest"  # of the dot products in the solve and in every pass (ot_flow.ops.precision)
    process_group: object = None
    sharded: bool = False

    @staticmethod
    def of(problems, xw, yw):
        p0 = problems[0]
        return BatchedSinkhornResult(
            problems, xw, yw, f=torch.stack([p.f for p in problems]), g=torch.stack([p.g for p in problems]),
            eps=_floats([p.eps for p in problems]), n_iter=torch.tensor([p.n_iter for p in problems]),
            error=_floats([p.error for p in problems]), converged=torch.tensor([p.converged for p in problems]),
            spread=_floats([p.spread for p in problems]), cost=p0.cost, path=p0.path, tau_a=p0.tau_a,
            tau_b=p0.tau_b, precision=p0.precision, process_group=p0.process_group, sharded=p0.sharded)

    def __len__(self):
        return len(self.problems)

    def __getitem__(self, k):
        return self.problems[k]

    def __iter__(self):
        return iter(self.problems)

    @property
    def errors(self):
        return [p.errors for p in self.problems]

    @property
    def x(self):
        return torch.stack([p.x for p in self.problems])

    @property
    def y(self):
        return torch.stack([p.y for p in self.problems])

    @property
    def a(self):
        return torch.stack([p.a for p in self.problems])

    @property
    def b(self):
        return torch.stack([p.b for p in self.problems])

    def _scales(self):
        return [1.0 / p.working.eps for p in self.problems]

    def _column_bias(self, dtype):
        """(B, m): each problem's WorkingProblem.column_bias (the same bits)."""
        return torch.stack([p.working.column_bias(p.b, dtype) for p in self.problems])

    def _fill_exact_passes(self):
        """SinkhornResult._exact_row_pass of every problem in one batched float64 pass, stored in
        each problem's cache, where its cost, entropy, mass and row marginal find it."""
        if all("exact" in p._passes for p in self.problems):
            return
        if self.sharded:  # each problem's columns are spread over the ranks: its own ring pass
            for p in self.problems:
                p._exact_row_pass()
            return
        # the 2-D pass's operands per problem, each problem 64-byte aligned (ops/layout.py)
        ws = [p.working for p in self.problems]
        xw, yw = stack_aligned([w.x.double() for w in ws]), stack_aligned([w.y.double() for w in ws])
        bias = self._column_bias(torch.float64)
        values = stack_aligned([torch.cat([yw[k], torch.stack([bias[k], w.beta.double()], dim=1)], dim=1)
                                for k, w in enumerate(ws)])
        means, row_lse = barycentric(xw, yw, bias, self._scales(), values, precision=self.precision)
        d = xw.shape[2]
        for k, p in enumerate(self.problems):
            w = p.working
            r = (p.a.log() + w.f.double() / w.eps + row_lse[k].double()).exp()
            p._passes["exact"] = (r, means[k, :, :d], means[k, :, d], means[k, :, d + 1], row_lse[k])

    def barycentric_map(self):
        """(B, n, d): problem k's entropic map T(x^k_i) = sum_j P^k_ij y^k_j / sum_j P^k_ij (this
        rank's rows when sharded)."""
        if self.sharded:
            return torch.stack([p.barycentric_map() for p in self.problems])
        bias = self._column_bias(self.xw.dtype)
        means, _ = barycentric(self.xw, self.yw, bias, self._scales(), precision=self.precision)
        return torch.stack([p.working.frame.point_out(means[k]) for k, p in enumerate(self.problems)])

    def transport_cost(self):
        """float64 (B,): <P^k, C^k> per problem (see SinkhornResult.transport_cost)."""
        self._fill_exact_passes()
        return _floats([p.transport_cost() for p in self.problems])

    def mass(self):
        """float64 (B,): sum_ij P^k_ij per problem."""
        self._fill_exact_passes()
        return _floats([p.mass() for p in self.problems])

    def renormalized_entropy(self):
        """float64 (B,): E(P^k) in [0, 1] per problem (see SinkhornResult.renormalized_entropy)."""
        self._fill_exact_passes()
        return _floats([p.renormalized_entropy() for p in self.problems])

    def row_marginal(self):
        """(B, n) float64: the row masses P^k 1 per problem."""
        self._fill_exact_passes()
        return torch.stack([p.row_marginal() for p in self.problems])

    def sample(self, generator=None, rows=None):
        """LongTensor (B, n): for each problem k and row i one column drawn from P^k(. | i), in one
        streaming batched pass (Gumbel-max).

        ``generator`` is one torch.Generator (or None: torch's global CPU generator), from which
        one seed is drawn and used by every problem, or a sequence of B generators, problem k's
        seed drawn from generator k. The noise is keyed on (seed, row, column) alone, so problem
        k draws exactly what the separate solve's ``sample`` draws with the same seed: with one
        generator, ``result.sample(torch.Generator().manual_seed(s))[k]`` equals
        ``separate_k.sample(torch.Generator().manual_seed(s))``. (Problems drawn with one seed
        share their noise: pass B generators for independent draws across problems.)
        ``rows`` is not supported for a batch (draw them on ``result[k].sample(rows=...)``).
        Solved across ranks, rank 0's seeds are used on every rank (as SinkhornResult.sample):
        replicated, every rank gets all rows; sharded, its own rows (global column indices).
        """
        if rows is not None:
            raise ValueError("argument 'rows': not supported by a batched result's sample(); "
                             "use result[k].sample(rows=...) for problem k")
        if isinstance(generator, (list, tuple)):
            if len(generator) != len(self):
                raise ValueError(f"argument 'generator' must be one torch.Generator or a sequence of {len(self)} "
                                 f"(one per problem), got {len(generator)}")
            seed = [seed_from(g) for g in generator]
        else:
            seed = seed_from(generator)
        if self.process_group is None:
            return gumbel_argmax(self.xw, self.yw, self._column_bias(self.xw.dtype), self._scales(), seed=seed,
                                 precision=self.precision)
        seeds = distributed.broadcast_ints(seed if isinstance(seed, list) else [seed] * len(self), self.xw.device,
                                           self.process_group)
        if self.sharded:  # each problem's own sharded draw (its column shards pass round the ranks)
            draws = []
            for p, s in zip(self.problems, seeds):
                w = p.working
                draws.append(p.placement.sample(w.x, w.y, w.column_bias(p.b, w.x.dtype), 1.0 / w.eps, s))
            return torch.stack(draws)
        return self._replicated_sample(seeds)

    def _replicated_sample(self, seeds):
        """Every rank draws its block of rows of every problem and the blocks are gathered."""
        rank, world = distributed.group_info(self.process_group)
        rows = distributed.even_blocks(self.xw.shape[1], world)
        r0, r1 = rows[rank]
        if r1 > r0:
            block = gumbel_argmax(self.xw[:, r0:r1], self.yw, self._column_bias(self.xw.dtype), self._scales(),
                                  seed=seeds, row_offset=r0, precision=self.precision)
        else:  # fewer rows than ranks: nothing to draw here, but the gather needs every rank
            block = torch.empty((len(self), 0), dtype=torch.long, device=self.xw.device)
        return distributed.all_gather_uneven(block, [b - a for a, b in rows], self.process_group, dim=1).contiguous()

    def plan(self, dtype=torch.float64, max_bytes=_PLAN_MAX_BYTES):
        """(B, n, m): the dense couplings (see SinkhornResult.plan); ``max_bytes`` guards all B."""
        if self.sharded:
            raise ValueError("BatchedSinkhornResult.plan(): the couplings are sharded across ranks (sharded=True): "
                             "each rank holds only its own rows and columns of each problem, so no rank can form "
                             "the dense matrices; solve with sharded=False (or on one process) for plan()")
        count, n, m = len(self), self.xw.shape[1], self.yw.shape[1]
        need = count * n * m * max(8, torch.empty((), dtype=dtype).element_size())
        if max_bytes is not None and need > max_bytes:
            raise ValueError(f"BatchedSinkhornResult.plan(): the dense {count} x {n} x {m} couplings would take "
                             f"{validation.byte_count(need)} (limit max_bytes={validation.byte_count(max_bytes)}); "
                             "pass a larger max_bytes (or None) to build them anyway, or use sample() / "
                             "barycentric_map(), which never build them")
        return torch.stack([p.plan(dtype, None) for p in self.problems])


def _floats(values):
    return torch.tensor(values, dtype=torch.float64)
