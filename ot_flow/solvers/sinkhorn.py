"""Log-domain Sinkhorn on the streaming ops: memory O((n + m) d), any n and m.

Two paths, chosen per solve (``cost_cache``): "streamed" recomputes the dot products tile by
tile in every half-iteration (``softmin`` on ``lse``), never holding an n x m matrix;
"cached" holds the n x m dot products when they fit a budget and then makes one fused pass
per half-iteration (``lse_dense``), which is faster on a CPU where the GEMM dominates.

Potentials are iterated for the dot cost C_ij = -<x_i, y_j> and shifted by the cost offsets
(costs.py) on the way out, so "sqeuclidean" and "dot" share every kernel call:

    f_i <- -eps lse_i(X, Y, g / eps + log b, 1 / eps)
    g_j <- -eps lse_j(Y, X, f / eps + log a, 1 / eps)

After a g-update the column marginals are exact; the row marginals of (f, g) are
a_i exp((f_i - f_new_i) / eps), so the 1-norm marginal error is a by-product of the next
f-update and costs no extra pass.

Unbalanced (KL-relaxed marginals, OTT's convention tau = rho / (rho + eps) in (0, 1], 1 =
balanced, each side on its own): the same half-steps scaled by tau,

    f <- tau_a softmin_eps(g - C),   g <- tau_b softmin_eps(f - C),

the fixed point of min <P, C> + eps KL(P | a x b) + rho_a KL(P 1 | a) + rho_b KL(P^T 1 | b).
The plan keeps its form P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps), whose row sums at the
fixed point are a_i exp(-f_i / rho_a). A constant added to C no longer cancels (it changes the
mass), so the frame's constant k (frame.py; k != 0 for "dot" far from the origin) is folded
into the working cost, k / (2 s^2) on each side, rather than added to f and g on the way out.
Convergence is measured on the row marginal: the 1-norm of P 1 - a exp(-f / rho_a), which for
f_new = tau_a softmin(g - C) is sum_i a_i exp(-f_i / rho_a) |exp((f_i - f_new_i) / (tau_a eps)) - 1|
(after a g-update the column condition holds exactly), relative to the mass of a exp(-f / rho_a)
(an unbalanced plan may weigh 1e-6 or 1e12); with tau_a = 1 that is the balanced marginal error.
tau_a = tau_b = 1 runs exactly the balanced code. Momentum stays on: the linearised iteration is
the same 2-cyclic block scheme with its Jacobi eigenvalues scaled by sqrt(tau_a tau_b), so the
over-relaxation theory (and the measured-ratio rule) carries over; a translation step
(``_MassBalance``) keeps the mass mode from converging at the slow rate tau_a tau_b.
"""

import dataclasses
import math
import warnings
from dataclasses import dataclass, field

import torch

from ot_flow import distributed
from ot_flow.ops import barycentric, gumbel_argmax, seed_from
from ot_flow.solvers import costs, merge_rules, validation
from ot_flow.solvers.frame import Frame
from ot_flow.solvers.full_precision import autocast_off
from ot_flow.solvers.progress import progress_bar
from ot_flow.solvers.sinkhorn_halves import LocalHalves, ReplicatedHalves, ShardedHalves

__all__ = ["SinkhornResult", "sinkhorn", "row_barycentres"]

# Momentum (over-relaxation, Lehmann et al. 2022): w = 2 / (1 + sqrt(1 - r)), r the
# per-iteration error ratio of plain Sinkhorn, measured on a probe of plain iterations and
# measured again every _MOMENTUM_REPROBE iterations, since r creeps towards 1 as a hard
# problem moves from its fast transient into its slow regime.
_MOMENTUM_PROBE = 20
_MOMENTUM_REPROBE = 300
_MOMENTUM_MAX_RATIO = 0.999  # caps w at about 1.94
# eps annealing: eps_k = max(eps, std(C) * decay^k), one iteration per level.
_ANNEAL_DECAY = 0.7
_ANNEAL_BELOW = 0.05  # auto-anneal when eps < this fraction of std(C)
# Cached-cost path, on the CPU: hold the n x m dot products when they fit the budget and
# either the GEMM is what a streamed pass pays for (d >= 16) or the matrix is small enough to
# stay near the caches. Measured (benchmarks/results/sinkhorn-cpu.txt): cached is 1.6x faster
# at n = 4096, d = 2 and 3.2x at d = 64; at n = 16384, d = 2 the 1 GiB matrix is read from
# memory twice per iteration and streaming wins (476 vs 575 ms/iter). On a GPU the streamed
# GEMM runs on the tensor cores; the cache there is opt-in until measured.
_CACHE_BUDGET_BYTES = 1 << 30
_CACHE_MIN_DIM = 16
_CACHE_SMALL_BYTES = 256 << 20
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
    working: "WorkingProblem" = field(default=None, repr=False, compare=False)
    _passes: dict = field(default_factory=dict, repr=False, compare=False)  # float64 row pass, once

    def _row_pass(self, dtype=None, values=None):
        """(row masses r_i, softmax-weighted means over j of [y'_j, *values_j], row lse) in one
        streaming pass, in ``dtype`` (default the points')."""
        w = self.working
        xw, yw = (w.x, w.y) if dtype is None else (w.x.to(dtype), w.y.to(dtype))
        bias = w.column_bias(self.b, xw.dtype)
        columns = None if values is None else torch.cat([yw, values.to(yw.dtype)], dim=1)
        if self.sharded:
            # y' travels once, as the points and as the first columns of the averaged values
            payload = torch.cat([bias[:, None], yw if columns is None else columns], dim=1)
            sizes = distributed.shard_sizes(yw.shape[0], yw.device, self.process_group)
            d = yw.shape[1]
            parts = (barycentric(xw, shard[:, 1:d + 1], shard[:, 0], 1.0 / w.eps,
                                 None if columns is None else shard[:, 1:])
                     for _, shard in distributed.ring(payload, sizes, self.process_group))
            width = d if columns is None else columns.shape[1]
            means, row_lse = merge_rules.means_of(parts, xw.new_zeros(xw.shape[0], width))
        else:
            means, row_lse = barycentric(xw, yw, bias, 1.0 / w.eps, columns)
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
        total = t.double().sum()
        return distributed.all_sum(total.reshape(1), self.process_group)[0] if self.sharded else total

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
            raise ValueError(f"SinkhornResult.plan(): the dense {n} x {m} coupling would take {_bytes(need)} "
                             f"(limit max_bytes={_bytes(max_bytes)}); pass a larger max_bytes (or None) to build it "
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
            return gumbel_argmax(w.x[rows.to(w.x.device)], w.y, bias, scale, seed=seed)
        if self.process_group is None:
            return gumbel_argmax(w.x, w.y, bias, scale, seed=seed)
        rank, world = distributed.group_info(self.process_group)
        if not self.sharded:
            rows = distributed.even_blocks(w.x.shape[0], world)
            r0, r1 = rows[rank]
            block = gumbel_argmax(w.x[r0:r1], w.y, bias, scale, seed=seed, row_offset=r0)
            return distributed.all_gather_uneven(block, [b - a for a, b in rows], self.process_group)
        x_sizes = distributed.shard_sizes(w.x.shape[0], w.x.device, self.process_group)
        y_sizes = distributed.shard_sizes(w.y.shape[0], w.y.device, self.process_group)
        row_offset, col_offsets = sum(x_sizes[:rank]), [sum(y_sizes[:r]) for r in range(world)]
        def shards():
            payload = torch.cat([w.y, bias[:, None]], dim=1)
            for owner, shard in distributed.ring(payload, y_sizes, self.process_group):
                j, value = gumbel_argmax(w.x, shard[:, :-1], shard[:, -1], scale, seed=seed,
                                         row_offset=row_offset, col_offset=col_offsets[owner], return_value=True)
                yield value, j + col_offsets[owner]

        return merge_rules.best_of(shards(), w.x.shape[0], w.x.device)[1]


@dataclass
class WorkingProblem:
    """The problem as the kernels see it: points x', y' of the frame, their offsets alpha',
    beta' (float64), eps' = eps / s^2 and the dot-cost potentials f', g' (points' dtype)."""

    frame: Frame
    x: torch.Tensor
    y: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    eps: float = None
    f: torch.Tensor = None
    g: torch.Tensor = None

    @staticmethod
    def of(x, y, a, b, cost, reduce=None):
        frame = Frame.of([(x, a), (y, b)], cost, reduce)
        xw, yw = frame.points(x), frame.points(y)
        return WorkingProblem(frame, xw, yw, frame.offsets(xw), frame.offsets(yw))

    def relaxed_offsets(self, offsets):
        """alpha'' = alpha' + k / (2 s^2) (float64): the offsets of the working cost C'' = C / s^2
        that the unbalanced update needs, the frame's constant k folded in (see the module notes)."""
        return offsets + 0.5 * self.frame.constant / self.frame.unit

    def column_bias(self, b, dtype):
        """h_j = g'_j / eps' + log b_j: the softmax over j of <x'_i, y'_j> / eps' + h_j is P(j | i)."""
        return self.g.to(dtype) / self.eps + b.log().to(dtype)

    def potentials_out(self, dtype):
        """(f, g) of the user's cost, in ``dtype``."""
        frame = self.frame
        return frame.potential_out(self.f, self.alpha).to(dtype), frame.potential_out(self.g, self.beta).to(dtype)


def row_barycentres(x, y, g, b, eps, cost):
    """T_i = sum_j P_ij y_j / sum_j P_ij for any coupling whose column potential is g (the row
    potential only scales rows), computed in the frame of x and y (no cancellation far from the
    origin)."""
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64, device=x.device)
    w = WorkingProblem.of(x, y, a, b.double(), cost)
    w.eps = eps / w.frame.unit
    w.g = w.frame.potential_in(g, w.beta)
    mean, _ = barycentric(w.x, w.y, w.column_bias(b, w.x.dtype), 1.0 / w.eps)
    return w.frame.point_out(mean)


def _bytes(size):
    """A byte count for messages: '1.5 GiB'."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.3g} {unit}"
    return f"{size} bytes"


def _xlogx(w):
    """w log w elementwise, 0 where w = 0."""
    return torch.where(w > 0, w * w.clamp_min(1e-300).log(), torch.zeros_like(w))


@torch.compiler.disable
@autocast_off
def sinkhorn(x, y, a=None, b=None, *, eps=0.05, relative_eps=True, cost="sqeuclidean", tol=1e-3,
             max_iter=10_000, momentum=True, init=None, process_group=None, sharded=False, anneal=None,
             target_entropy=None, entropy_tol=0.01, cost_cache="auto", progress="auto", tau_a=1.0, tau_b=1.0):
    """Entropic optimal transport between point clouds x (n, d) and y (m, d), streamed.

    Args:
        a, b: weights (sum to 1); uniform when None.
        eps: entropic regularisation; relative to std(C) when ``relative_eps`` (seed paper 002).
        cost: "sqeuclidean" (|x - y|^2 / 2) or "dot" (-<x, y>).
        tol: stop when the 1-norm marginal error |P 1 - a|_1 falls below it (unbalanced:
            |P 1 - a exp(-f / rho_a)|_1 / |a exp(-f / rho_a)|_1, the row condition of the relaxed
            problem relative to the mass it asks for).
        max_iter: at most this many iterations (annealing included); then a warning and
            ``converged=False``.
        momentum: over-relaxation that switches on by itself once the error decays steadily.
        init: (f, g) of an earlier solve (same cost) to warm start from; only the coupling they
            define matters (a constant moved from f to g is the same start).
        anneal: decay eps from std(C) to the target first; default: when eps < 0.05 std(C).
        target_entropy: choose eps so that the renormalized entropy lands within
            ``entropy_tol`` of this value (seed paper 002 recommends about 0.2); ``eps`` is then
            the first guess. When the entropy does not move with eps (one cloud a single point,
            say), a warning says so at once.
        process_group: solve across the ranks of this torch.distributed group (NCCL on GPUs,
            Gloo on CPUs); every rank calls with the same arguments and gets the same result.
            With ``sharded=False`` every rank passes the full x and y and the rows and columns
            are split between the ranks (only potentials travel); with ``sharded=True`` every
            rank passes only its own rows of x and y (and of a, b, which sum to 1 over all
            ranks) and gets its slices of f and g, the shards passing round the ranks.
        sharded: see ``process_group``.
        tau_a, tau_b: unbalanced OT (OTT's convention): the row (column) marginal is relaxed by
            rho KL(P 1 | a) with tau_a = rho_a / (rho_a + eps) in (0, 1]; 1 (default) keeps it
            exact. Either side alone (semi-unbalanced) or both. tau is invariant under the frame's
            change of unit (rho scales with eps). ``result.mass()`` is the plan's total mass.
        cost_cache: hold the n x m dot products in memory (one fused pass per half-iteration,
            no GEMM) -- "auto" does so on the CPU when they fit 1 GiB and either d >= 16 or
            they take at most 256 MiB; True forces it, False always streams (memory
            O((n + m) d)). ``result.path`` says which ran.
        progress: a tqdm bar (iterations, marginal error, eps; the solves of an entropy search):
            "auto" shows it once a solve has run for 2 seconds, True at once, False never
            (rank 0 only when distributed).

    The points may lie anywhere: the solve runs on the clouds moved to their common centre and
    measured in their own unit (frame.py), so translating both clouds, or scaling them, changes
    neither the coupling nor its entropy (the cost only by the scale squared). Under autocast
    the solve runs in the points' own precision. Not differentiable: the result holds the points
    detached (see :func:`ot_flow.sinkhorn_divergence` for gradients).

    Returns:
        SinkhornResult. Under ``torch.compile`` this function runs eagerly (one graph break:
        its loop stops on a data-dependent error).
    """
    if process_group is not None:  # a bad shard on one rank must not leave the others waiting
        distributed.group_info(process_group)
        distributed.checked_together(lambda: validation.check_pair(x, y), process_group)
        settings = dict(dim=x.shape[1], dtype=str(x.dtype), eps=eps, relative_eps=relative_eps, cost=cost,
                        tol=tol, max_iter=max_iter, sharded=bool(sharded), target_entropy=target_entropy,
                        tau_a=tau_a, tau_b=tau_b)
        if not sharded:
            settings.update(n=x.shape[0], m=y.shape[0])
        distributed.same_on_all_ranks(settings, "ot_flow.sinkhorn", process_group)
    validation.check_pair(x, y)
    costs.check_cost(cost)
    eps = validation.positive("eps", eps)
    tol = validation.positive("tol", tol)
    entropy_tol = validation.positive("entropy_tol", entropy_tol)
    tau_a = validation.tau("tau_a", tau_a)
    tau_b = validation.tau("tau_b", tau_b)
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"argument 'max_iter' must be an int >= 1, got {max_iter!r}")
    if target_entropy is not None:
        target_entropy = validation.in_open_interval("target_entropy", target_entropy, 0.0, 1.0)
    if process_group is None and sharded:
        raise ValueError("argument 'sharded' needs a 'process_group'")
    if cost_cache not in ("auto", True, False):
        raise ValueError(f"argument 'cost_cache' must be 'auto', True or False, got {cost_cache!r}")
    sharded = bool(sharded) and process_group is not None
    reduce = (lambda t: distributed.all_sum(t, process_group)) if sharded else None
    if sharded:
        a = validation.shard_weights("a", a, x, process_group)
        b = validation.shard_weights("b", b, y, process_group)
    else:
        a = validation.weights("a", a, x.shape[0], x)
        b = validation.weights("b", b, y.shape[0], y)
    x, y = x.detach(), y.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x, y = x.float(), y.float()  # half inputs: potentials and sums in float32
    y = y.to(x.dtype)
    work = WorkingProblem.of(x, y, a, b, cost, reduce)
    spread = costs.cost_std(x, y, a, b, cost, reduce=reduce) or work.frame.unit  # 0: any eps is fine
    _check_range(work, eps * spread if relative_eps else eps, process_group)
    if cost_cache == "auto":
        size = x.shape[0] * y.shape[0] * x.element_size()
        cost_cache = process_group is None and x.device.type == "cpu" and size <= _CACHE_BUDGET_BYTES and (
            x.shape[1] >= _CACHE_MIN_DIM or size <= _CACHE_SMALL_BYTES)
    if cost_cache and process_group is not None:
        raise ValueError("argument 'cost_cache': the distributed solver streams; pass 'auto' or False")
    dots = work.x @ work.y.T if cost_cache else None  # working points: bounded by _check_range
    init_w = None if init is None else _initial_potentials(init, work, process_group if sharded else None,
                                                           balanced=tau_a == 1.0 and tau_b == 1.0)
    solve = dict(x=x, y=y, a=a, b=b, work=work, tol=tol, max_iter=max_iter, momentum=momentum,
                 anneal=anneal, spread=spread, dots=dots, process_group=process_group, sharded=sharded,
                 progress=progress, tau_a=tau_a, tau_b=tau_b)
    if target_entropy is not None:
        first = eps if relative_eps else eps / spread
        if costs.interaction_std(x, y, a, b, reduce) == 0.0:
            result = _solve(first * spread, init_w, **solve)
            warnings.warn(f"ot_flow.sinkhorn: target_entropy={target_entropy} cannot be reached: the coupling is the "
                          "independent one whatever eps (one cloud is a single point, or the clouds lie in orthogonal "
                          f"subspaces), with entropy {result.renormalized_entropy():.3f}; returning eps={result.eps:.4g}",
                          RuntimeWarning, stacklevel=3)
            return result
        return _solve_for_entropy(target_entropy, first, entropy_tol, init_w, solve)
    return _solve(eps * spread if relative_eps else eps, init_w, **solve)


def _check_range(work, eps, process_group):
    """Refuses problems whose costs or potentials the points' dtype cannot hold, on every rank."""
    dtype = work.x.dtype
    top = torch.finfo(dtype).max / 8  # room for the potentials' log-sum-exp terms

    def check():
        frame = work.frame
        reach = (float(work.alpha.abs().max()) + float(work.beta.abs().max())
                 + float(work.x.double().norm(dim=1).max() * work.y.double().norm(dim=1).max()))
        cost_reach = frame.unit * reach + abs(frame.constant)
        if not cost_reach < top:
            raise ValueError(f"arguments 'x' and 'y': their costs reach {cost_reach:.3g}, beyond what {dtype} "
                             "potentials can hold; pass float64 points or rescale them")
        logs = math.log(work.x.shape[0]) + math.log(work.y.shape[0]) + 1.0
        working_eps = eps / frame.unit
        reach_w = reach + 1.0  # the working logits are <x', y'> / eps', with |x'|, |y'| about 1
        if not (eps * logs < top and 0 < working_eps and reach_w / working_eps < top):
            raise ValueError(f"argument 'eps': the absolute eps {eps:.3g} is out of {dtype}'s range for these "
                             f"points (their costs reach {cost_reach:.3g}); eps above about 1e6 x std(C) already "
                             "gives the independent coupling, and eps below about 1e-30 x std(C) exceeds what "
                             "float32 resolves: pass an eps in between, or float64 points")

    if process_group is None:
        check()
    else:
        distributed.checked_together(check, process_group)


def _solve_for_entropy(target, rel_eps, entropy_tol, init, solve, max_solves=12):
    """Bracket, then bisect log(eps) on the renormalized entropy (increasing in eps)."""
    spread = solve["spread"]
    lo = hi = None  # (log rel eps, result) with entropy below / above the target
    log_eps, result = math.log(rel_eps), None
    bar = progress_bar(solve["progress"], max_solves, "sinkhorn target_entropy", solve["process_group"])
    with bar:
        for _ in range(max_solves):
            result = _solve(math.exp(log_eps) * spread, init, **solve)
            entropy = result.renormalized_entropy()
            bar.set_postfix(eps=f"{math.exp(log_eps):.3g}", entropy=f"{entropy:.4f}", refresh=False)
            bar.update(1)
            if abs(entropy - target) <= entropy_tol:
                return result
            if entropy < target:
                lo = (log_eps, result)
            else:
                hi = (log_eps, result)
            init = (result.working.f, result.working.g)
            if lo is None:
                log_eps -= math.log(4.0)
            elif hi is None:
                log_eps += math.log(4.0)
            else:
                log_eps = 0.5 * (lo[0] + hi[0])
    warnings.warn(f"ot_flow.sinkhorn: target_entropy={target} not reached within {max_solves} solves; "
                  f"returning eps={result.eps:.4g} with entropy {result.renormalized_entropy():.3f}", RuntimeWarning)
    return result


@torch.no_grad()
def _solve(eps, init, *, x, y, a, b, work, tol, max_iter, momentum, anneal, spread, dots, process_group, sharded,
           progress, tau_a=1.0, tau_b=1.0):
    """One solve at absolute eps; ``init`` is a pair of working dot-cost potentials or None."""
    dtype = work.x.dtype
    unit = work.frame.unit  # the solve runs on C' = (C - k) / s^2
    eps_w, spread_w = eps / unit, spread / unit
    log_a, log_b = a.log().to(dtype), b.log().to(dtype)
    if init is not None:
        fd, gd = init
    else:
        fd = torch.zeros(work.x.shape[0], dtype=dtype, device=x.device)
        gd = torch.zeros(work.y.shape[0], dtype=dtype, device=y.device)
    if process_group is None:
        halves = LocalHalves(work.x, work.y, log_a, log_b, dots)
    elif sharded:
        halves = ShardedHalves(work.x, work.y, log_a, log_b, process_group)
    else:
        halves = ReplicatedHalves(work.x, work.y, log_a, log_b, process_group)
    f_update, g_update = halves.f_update, halves.g_update
    if tau_a < 1.0 or tau_b < 1.0:
        # Unbalanced: the working cost is C'' = C / s^2, offsets alpha'' = alpha' + k / (2 s^2),
        # and f'' = fd + alpha'' <- tau_a (alpha'' + softmin) gives fd <- tau_a softmin - (1 - tau_a) alpha''.
        alpha_u, beta_u = work.relaxed_offsets(work.alpha), work.relaxed_offsets(work.beta)
        f_update = _relaxed(f_update, tau_a, alpha_u.to(dtype))
        g_update = _relaxed(g_update, tau_b, beta_u.to(dtype))
        rho_a = validation.relaxation_rho(eps_w, tau_a)
        balance = _MassBalance(halves, a, b, alpha_u, beta_u, tau_a, tau_b)
    else:
        balance = None
    bar = progress_bar(progress, max_iter, f"sinkhorn eps={eps:.3g}", process_group)

    n_iter = 0
    if anneal is None:
        anneal = init is None and eps_w < _ANNEAL_BELOW * spread_w
    if anneal:
        level = spread_w
        while level > eps_w and n_iter < max_iter:
            fd = f_update(gd, level, fd)
            if balance is not None:
                fd = balance(fd, gd, level)
            gd = g_update(fd, level, gd)
            level *= _ANNEAL_DECAY
            n_iter += 1
        bar.update(n_iter)

    errors = []
    relaxation = _Relaxation(momentum)
    w = 1.0
    finishing = False  # the last g-update was plain, so the next error is exact
    converged = False
    error = math.inf
    measured = False  # whether (fd, gd) has an exact measurement pending
    with bar:
        while n_iter < max_iter:
            f_new = f_update(gd, eps_w, fd)
            if measured:
                if tau_a == 1.0:
                    ratio = torch.exp((fd.double() - f_new.double()) / eps_w)
                    error = halves.total(a * (ratio - 1).abs())
                else:  # |P 1 - a exp(-f / rho_a)|_1 / <a, exp(-f / rho_a)> (module notes), in float64
                    gap = torch.expm1((fd.double() - f_new.double()) / (tau_a * eps_w)).abs()
                    target = a * torch.exp(-(fd.double() + alpha_u) / rho_a)
                    error = halves.total(target * gap) / halves.total(target)
                if not math.isfinite(error):
                    if halves.all_finite(f_new) and (tau_a < 1.0 or tau_b < 1.0):
                        raise RuntimeError(f"ot_flow.sinkhorn: the unbalanced plan's mass overflows float64 at "
                                           f"iteration {n_iter} (eps={eps:.3g}, tau_a={tau_a}, tau_b={tau_b}): "
                                           "costs far below zero (a 'dot' cost far from the origin) make its "
                                           "mass explode; centre the points, or raise tau towards 1")
                    _raise_non_finite(n_iter, eps, dtype)
                errors.append(error)
                bar.set_postfix(error=f"{error:.3g}", tol=f"{tol:.3g}", refresh=False)
                if error < tol:
                    if w == 1.0 or finishing:
                        converged = True
                        break
                    finishing = True  # confirm on a plain step: column marginals exact again
                else:
                    finishing = False
                    w = relaxation.update(errors)
            elif not halves.all_finite(f_new):
                _raise_non_finite(n_iter, eps, dtype)
            step = 1.0 if finishing else w
            fd = f_new if step == 1.0 else fd + step * (f_new - fd)
            if balance is not None:
                fd = balance(fd, gd, eps_w)
            g_new = g_update(fd, eps_w, gd)
            if not halves.all_finite(g_new):  # f_new is checked through the error
                _raise_non_finite(n_iter, eps, dtype)
            gd = g_new if step == 1.0 else gd + step * (g_new - gd)
            measured = True
            n_iter += 1
            bar.update(1)
    if not converged:
        warnings.warn(f"ot_flow.sinkhorn: not converged after {n_iter} iterations (marginal error "
                      f"{error:.3g} > tol {tol:.3g}); raise max_iter or eps", RuntimeWarning)
    solved = dataclasses.replace(work, eps=eps_w, f=fd, g=gd)
    f, g = solved.potentials_out(dtype)
    return SinkhornResult(f=f, g=g, eps=float(eps), n_iter=n_iter, error=error, converged=converged,
                          errors=errors, x=x, y=y, a=a, b=b, cost=work.frame.cost,
                          path="streamed" if dots is None else "cached", process_group=process_group,
                          sharded=sharded, spread=float(spread), tau_a=tau_a, tau_b=tau_b, working=solved)


class _MassBalance:
    """The translation step of Sejourne, Vialard and Peyre (2022, "Faster unbalanced optimal
    transport"): unbalanced Sinkhorn moves the constant mode of (f, -g), which sets the plan's
    mass, only at the rate tau_a tau_b per iteration (thousands of iterations as tau -> 1).
    Before each g-update, f'' <- f'' + lam with the lam that maximises the dual along (1, -1):
    m_a e^{-lam / rho_a} = m_b e^{lam / rho_b}, m_a = <a, e^{-f'' / rho_a}>, m_b = <b, e^{-g'' / rho_b}>
    (1 for a balanced side), i.e. lam = log(m_a / m_b) / (1 / rho_a + 1 / rho_b). Two sums a step;
    lam = 0 at the fixed point (both masses are m(P) there), which it therefore keeps."""

    def __init__(self, halves, a, b, alpha, beta, tau_a, tau_b):
        self.halves, self.a, self.b, self.alpha, self.beta = halves, a, b, alpha, beta
        self.tau_a, self.tau_b = tau_a, tau_b

    def _log_mass(self, w, p, offsets, tau, rho):
        if tau == 1.0:
            return 0.0
        total = self.halves.total(w * torch.exp(-(p.double() + offsets) / rho))
        return math.log(total) if 0.0 < total < math.inf else math.nan

    def __call__(self, fd, gd, e):
        rho_a, rho_b = validation.relaxation_rho(e, self.tau_a), validation.relaxation_rho(e, self.tau_b)
        lam = (self._log_mass(self.a, fd, self.alpha, self.tau_a, rho_a)
               - self._log_mass(self.b, gd, self.beta, self.tau_b, rho_b)) / (1.0 / rho_a + 1.0 / rho_b)
        return fd + lam if math.isfinite(lam) else fd


def _relaxed(update, tau, offsets):
    """The unbalanced half-step of a dot-cost half-step (see ``_solve``); ``update`` itself when tau = 1."""
    if tau == 1.0:
        return update
    shift = (1.0 - tau) * offsets

    def step(other, e, now):  # now: the current iterate, whose softmin is (now + shift) / tau
        return tau * update(other, e, (now + shift) / tau) - shift

    return step


def _raise_non_finite(n_iter, eps, dtype):
    raise RuntimeError(f"ot_flow.sinkhorn: potentials became non-finite at iteration {n_iter} "
                       f"(eps={eps:.3g}, dtype={dtype}); use float64 inputs or a larger eps")


class _Relaxation:
    """The over-relaxation weight, updated from the error history (see the module constants)."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.w = 1.0
        self.probe_start = 0  # len(errors) when the current run of plain iterations began
        self.on_since = 0
        self.error_when_on = math.inf

    def update(self, errors):
        if not self.enabled:
            return 1.0
        k = len(errors)
        if self.w > 1.0:
            # The marginal error jumps for a few steps after relaxation starts; only a blow-up,
            # or no progress after a probe's length, means w is too large.
            blown_up = errors[-1] > 100.0 * self.error_when_on
            stalled = k - self.on_since >= _MOMENTUM_PROBE and errors[-1] > self.error_when_on
            if blown_up or stalled or k - self.on_since >= _MOMENTUM_REPROBE:
                self.w, self.probe_start = 1.0, k  # measure plain Sinkhorn again
            return self.w
        if k - self.probe_start < _MOMENTUM_PROBE:
            return 1.0
        # The second half of the probe: the first iterations after momentum are transient.
        half = _MOMENTUM_PROBE // 2
        r = (errors[-1] / errors[-half]) ** (1.0 / (half - 1))
        if not r < 1.0:
            self.probe_start = k
            return 1.0
        self.w = 2.0 / (1.0 + math.sqrt(1.0 - min(r, _MOMENTUM_MAX_RATIO)))
        self.on_since, self.error_when_on = k, errors[-1]
        return self.w


def _initial_potentials(init, work, process_group, balanced=True):
    """The working dot-cost potentials of a warm start (f, g) of the user's cost. f and g may
    trade a constant without changing the coupling: it is chosen so that max f' = 0, which a
    start such as (f + 1e300, g - 1e300) needs so as not to drown in rounding (subtracting the
    largest entry is exact for the entries near it, as a mean would not be). Unbalanced, the
    constant is no longer free (it moves mass between the KL terms, and an unbalanced solve
    undoes it only at the slow rate tau_a tau_b per iteration): the start is taken as given."""
    if not (isinstance(init, (tuple, list)) and len(init) == 2):
        raise ValueError("argument 'init' must be a pair (f, g) of potentials")
    f, g = init
    for name, p, off in (("init[0] (f)", f, work.alpha), ("init[1] (g)", g, work.beta)):
        if not isinstance(p, torch.Tensor) or p.shape != off.shape:
            raise ValueError(f"argument '{name}' must be a tensor of shape {tuple(off.shape)}")
        if not torch.isfinite(p).all():
            raise ValueError(f"argument '{name}' contains NaN or Inf")
    fw = work.frame.potential_in(f.to(work.alpha.device), work.alpha)
    gw = work.frame.potential_in(g.to(work.beta.device), work.beta)
    if not balanced:
        if not (torch.isfinite(fw).all() and torch.isfinite(gw).all()):
            raise ValueError("argument 'init': the potentials are out of float64's range in this problem's unit")
        return fw.to(work.x.dtype), gw.to(work.x.dtype)
    level = fw.max().reshape(1)
    if process_group is not None:  # the largest entry over every rank's shard
        world = distributed.group_info(process_group)[1]
        level = distributed.all_gather_uneven(level, [1] * world, process_group).max().reshape(1)
    fw, gw = fw - level, gw + level
    if not (torch.isfinite(fw).all() and torch.isfinite(gw).all()):
        raise ValueError("argument 'init': the potentials are out of float64's range in this problem's unit; "
                         "pass the potentials of an earlier solve")
    dtype = work.x.dtype
    return fw.to(dtype), gw.to(dtype)
