"""The result of a Sinkhorn solve: the coupling P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps), kept
implicit, and every quantity read off it in one streaming pass (barycentric map, cost, entropy,
mass, samples) or, for small problems, the dense matrix. Where the rows and columns live (one
process, replicated on every rank, sharded) is the placement's business (placement.py)."""

import math
from dataclasses import dataclass, field

import torch

from ot_flow import distributed
from ot_flow.ops import gumbel_argmax, seed_from
from ot_flow.solvers import validation
from ot_flow.solvers.placement import placement_of
from ot_flow.solvers.working_problem import WorkingProblem

__all__ = ["SinkhornResult"]

# SinkhornResult.plan(): the dense matrix is for small problems; above this it asks first.
_PLAN_MAX_BYTES = 1 << 30

@dataclass
class SinkhornResult:
    """A solved entropic coupling P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps), kept implicit.

    ``f``, ``g``, ``eps``, ``x``, ``y`` are in the user's units; every pass over the coupling
    runs in the working frame of the solve (frame.py), where no cancellation can happen.
    """

    f: torch.Tensor
    g: torch.Tensor
    eps: float
    n_iter: int
    error: float
    converged: bool
    errors: list = field(repr=False)
    x: torch.Tensor = field(repr=False)
    y: torch.Tensor = field(repr=False)
    a: torch.Tensor = field(repr=False)
    b: torch.Tensor = field(repr=False)
    cost: str = "sqeuclidean"
    path: str = "streamed"  # or "cached": whether the n x m dot products were held in memory
    process_group: object = field(default=None, repr=False)  # the ranks that solved it together
    sharded: bool = False  # whether x, y, f, g (and a, b) are this rank's shards
    spread: float = 1.0  # std(C), the unit of relative eps: eps / spread is the relative eps used
    tau_a: float = 1.0  # marginal relaxations rho / (rho + eps); 1 = that marginal is exact
    tau_b: float = 1.0
    precision: str = "highest"  # of the dot products in the solve and in every pass below (ot_flow.ops.precision)
    working: "WorkingProblem" = field(default=None, repr=False, compare=False)
    _passes: dict = field(default_factory=dict, repr=False, compare=False)  # float64 row pass, once

    @property
    def placement(self):
        """Where the rows and columns live (placement.py): every pass below runs through it."""
        return placement_of(self.process_group, self.sharded, self.precision)

    def _row_pass(self, dtype=None, values=None):
        """(row masses r_i, softmax-weighted means over j of [y'_j, *values_j], row lse) in one
        streaming pass, in ``dtype`` (default the points')."""
        w = self.working
        xw, yw = (w.x, w.y) if dtype is None else (w.x.to(dtype), w.y.to(dtype))
        bias = w.column_bias(self.b, xw.dtype)
        columns = None if values is None else torch.cat([yw, values.to(yw.dtype)], dim=1)
        means, row_lse = self.placement.row_means(xw, yw, bias, 1.0 / w.eps, columns)
        log_r = self.a.log() + w.f.double() / w.eps + row_lse.double()
        return log_r.exp(), means, row_lse

    def _exact_row_pass(self):
        """Per row, in float64 and computed once: the mass r_i, the barycentre T'_i and the
        conditional means of h_j (the column bias) and of beta'_j. The entropy and the cost are
        sums of terms of size 1 / eps that cancel to O(1): float32 barycentres cannot resolve
        them at small eps, nor may the column marginals be assumed exact."""
        if "exact" not in self._passes:
            w = self.working
            bias = w.column_bias(self.b, torch.float64)
            r, means, row_lse = self._row_pass(torch.float64, torch.stack([bias, w.beta.double()], dim=1))
            d = w.x.shape[1]
            self._passes["exact"] = (r, means[:, :d], means[:, d], means[:, d + 1], row_lse)
        return self._passes["exact"]

    def _sum(self, t):
        """Sum over all points: over the ranks' shards when sharded."""
        return self.placement.total(t)

    def barycentric_map(self):
        """(n, d): the entropic map T(x_i) = sum_j P_ij y_j / sum_j P_ij (this rank's rows when sharded)."""
        return self.working.frame.point_out(self._row_pass()[1])

    def transport_cost(self):
        """<P, C>: the transport cost of the coupling (without the entropy term), a float.

        Not differentiable (the solver holds its inputs fixed): for gradients in the points use
        :func:`ot_flow.sinkhorn_divergence`."""
        w = self.working
        r, mean_y, _, mean_beta, _ = self._exact_row_pass()
        # C = s^2 (alpha'_i + beta'_j - <x'_i, y'_j>) + k, summed against P row by row.
        row_cost = r * (w.alpha - (w.x.double() * mean_y).sum(1) + mean_beta)
        return float(w.frame.unit * self._sum(row_cost) + w.frame.constant * self._sum(r))

    @property
    def unbalanced(self):
        return self.tau_a < 1.0 or self.tau_b < 1.0

    def mass(self):
        """sum_ij P_ij, a float: 1 up to the tolerance for a balanced coupling; for an unbalanced one
        the mass the relaxed marginals settle on (a float64 streaming pass, shared with the cost and
        the entropy)."""
        return float(self._sum(self._exact_row_pass()[0]))

    def renormalized_entropy(self):
        """E(P) = 2 H(P) / (H(a) + H(b)) - 1 in [0, 1]: 0 a permutation, 1 the independent coupling.

        Unbalanced (mass m != 1): E of the normalised plan P / m, H(P / m) = H(P) / m + log m, against
        the entropies of the given a and b; ``mass()`` gives m."""
        if "entropy" not in self._passes:
            self._passes["entropy"] = self._renormalized_entropy()
        return self._passes["entropy"]

    def _renormalized_entropy(self):
        w = self.working
        r, mean_y, mean_h, _, row_lse = self._exact_row_pass()
        # P_ij = r_i p_ij with p_ij the row softmax of z_ij = <x'_i, y'_j> / eps' + h_j, so
        # H(P) = sum_i r_i (H(p_i.) - log r_i) and H(p_i.) = lse_i - <x'_i, T'_i> / eps' - E_p[h].
        conditional = row_lse.double() - (w.x.double() * mean_y).sum(1) / w.eps - mean_h
        live = r > 0
        row_terms = torch.zeros_like(r)
        row_terms[live] = r[live] * (conditional[live] - r[live].log())
        h_p = float(self._sum(row_terms))
        if self.unbalanced:
            mass = float(self._sum(r))
            if not mass > 0:
                return 0.0
            h_p = h_p / mass + math.log(mass)
        h_ab = -float(self._sum(_xlogx(self.a)) + self._sum(_xlogx(self.b)))
        if h_ab <= 0:
            return 0.0  # one point on each side: the only coupling is a permutation
        return min(1.0, max(0.0, 2 * h_p / h_ab - 1))

    def plan(self, dtype=torch.float64, max_bytes=_PLAN_MAX_BYTES):
        """The dense n x m coupling P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps), for small problems.

        Computed in float64 in the working frame of the solve (no cancellation for clouds far
        from the origin) and returned in ``dtype`` (default float64; pass ``self.x.dtype`` for
        the points' dtype), on the points' device. ``max_bytes`` (default 1 GiB, None for no
        limit) guards the float64 matrix: a larger one raises a ``ValueError`` naming the memory
        it would take -- everything else (``sample``, ``barycentric_map``, the entropy) streams.
        A sharded result refuses (each rank holds only its rows and columns; gathering them
        would defeat sharding): solve replicated, or on one process, to look at the matrix.
        """
        if self.sharded:
            raise ValueError("SinkhornResult.plan(): the coupling is sharded across ranks (sharded=True): each rank "
                             "holds only its own rows and columns, so no rank can form the dense matrix; solve with "
                             "sharded=False (or on one process) for plan()")
        n, m = self.x.shape[0], self.y.shape[0]
        need = n * m * max(8, torch.empty((), dtype=dtype).element_size())
        if max_bytes is not None and need > max_bytes:
            raise ValueError(f"SinkhornResult.plan(): the dense {n} x {m} coupling would take {validation.byte_count(need)} "
                             f"(limit max_bytes={validation.byte_count(max_bytes)}); pass a larger max_bytes (or None) to build it "
                             "anyway, or use sample() / barycentric_map(), which never build it")
        w = self.working
        xw, yw = w.x.double(), w.y.double()
        # log P_ij = log a_i + f'_i / eps' + <x'_i, y'_j> / eps' + g'_j / eps' + log b_j (dot cost, frame units)
        log_p = (xw @ yw.T) / w.eps
        log_p += (self.a.double().log() + w.f.double() / w.eps)[:, None]
        log_p += w.column_bias(self.b, torch.float64)[None, :]
        return log_p.exp_().to(dtype)

    def row_marginal(self):
        """(n,) float64: the row masses P 1 of the coupling (a up to ``tol`` for a balanced solve;
        what the marginal penalty left of a for an unbalanced one), streamed, computed once."""
        return self._exact_row_pass()[0]

    def sample(self, generator=None, rows=None):
        """LongTensor (n,): for each row i one column j drawn from P(. | i), streamed (Gumbel-max).

        The pairs (i, j_i) are distributed as P when ``a`` is uniform. The noise is keyed on a
        seed drawn from ``generator`` (default: torch's global CPU generator) and on (i, j), so
        the draw is reproducible and the same on every device. Solved across ranks, every rank
        draws the rows it owns with the seed of rank 0, which gives the draw of one process:
        replicated, the rows are gathered (every rank gets all n); sharded, a rank gets its
        rows' columns (global indices) and the column shards pass round the ranks.

        ``rows`` (a LongTensor (k,) of row indices, repeats allowed) draws one column for each
        of its entries instead, independently (the noise is keyed on the entry's position k,
        so a row listed twice gets two independent draws): with rows drawn from the row
        marginal this is a joint draw of k pairs from P, with replacement. Not for sharded
        results.
        """
        seed = seed_from(generator)
        if self.process_group is not None:
            seed = int(distributed.broadcast_int(seed, self.x.device, self.process_group))
        w = self.working
        bias, scale = w.column_bias(self.b, w.x.dtype), 1.0 / w.eps
        if rows is not None:
            if self.sharded:
                raise ValueError("SinkhornResult.sample(rows=...): not for a sharded coupling (each rank holds "
                                 "only its own rows); draw the rows on their owners with sample()")
            if not isinstance(rows, torch.Tensor) or rows.dim() != 1 or rows.is_floating_point():
                raise ValueError("argument 'rows' must be a 1-D integer tensor of row indices")
            n = w.x.shape[0]
            if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
                raise ValueError(f"argument 'rows' must hold row indices in [0, {n}), "
                                 f"got values in [{int(rows.min())}, {int(rows.max())}]")
            if rows.numel() == 0:
                return torch.empty(0, dtype=torch.long, device=w.x.device)
            return gumbel_argmax(w.x[rows.to(w.x.device)], w.y, bias, scale, seed=seed, precision=self.precision)
        return self.placement.sample(w.x, w.y, bias, scale, seed)


def _xlogx(w):
    """w log w elementwise, 0 where w = 0."""
    return torch.where(w > 0, w * w.clamp_min(1e-300).log(), torch.zeros_like(w))
