"""OTSampler: minibatch (or large-batch) OT pairing for flow matching, on the streaming solver.

For a batch of source points x0 (noise) and target points x1 (data), solve the entropic
coupling P between them and draw, for every x0[i], one partner j_i ~ P(. | i) (Gumbel-max,
no n x m matrix). Every source point is used exactly once, and with uniform weights the pairs
(x0[i], x1[j_i]) are distributed as P: seed paper 002's batch-OT flow matching at any coupling
size, from a minibatch of 256 to millions of points.
"""

import warnings

import torch

from ot_flow.solvers import costs, validation
from ot_flow.solvers.assignment import assignment
from ot_flow.solvers.sinkhorn import sinkhorn

__all__ = ["OTSampler"]


class OTSampler:
    """Pairs source and target points through a Sinkhorn coupling.

    Args:
        eps: entropic regularisation, relative to the spread std(C) of the costs when
            ``relative_eps`` (seed paper 002: small values such as 0.01-0.1). ``eps=0.0`` pairs
            by the exact optimal permutation (:func:`ot_flow.assignment`; needs n == m).
        relative_eps: see ``eps``.
        cost: "sqeuclidean" or "dot".
        tol, max_iter, momentum, cost_cache: passed to :func:`ot_flow.sinkhorn`.
        target_entropy: choose eps per coupling so that its renormalized entropy is this value
            (seed paper 002 recommends about 0.1-0.2); ``eps`` is then the first guess, and
            later couplings start from the eps that met the target last time.
        entropy_tol: how close to ``target_entropy`` a coupling must come; a looser tolerance
            lets most couplings of a stream take the previous eps with a single solve.
        process_group: solve every coupling across the ranks of this torch.distributed group
            (every rank passes the same x0, x1; the rows and columns are split between them)
            and draw the same pairs on every rank, equal to one process's draw.
        progress: passed to :func:`ot_flow.sinkhorn` ("auto": a bar only for solves that
            last over 2 seconds).

    Points of any shape are flattened to vectors for the cost (images included), after a check
    that x0 and x1 have the same shape per point; bf16 and fp16 points are solved in float32 and
    returned in their own dtype, also inside an autocast region. ``last_plan`` keeps the
    latest :class:`ot_flow.SinkhornResult` (its entropy, iterations and error) for logging.
    """

    def __init__(self, eps=0.05, relative_eps=True, cost="sqeuclidean", tol=1e-3, max_iter=10_000,
                 target_entropy=None, entropy_tol=0.01, momentum=True, cost_cache="auto", process_group=None, progress="auto"):
        exact = eps == 0 and not isinstance(eps, bool) and target_entropy is None
        self.eps = 0.0 if exact else validation.positive("eps", eps)
        self.relative_eps = bool(relative_eps)
        costs.check_cost(cost)
        self.cost = cost
        self.tol = validation.positive("tol", tol)
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"argument 'max_iter' must be an int >= 1, got {max_iter!r}")
        self.max_iter = max_iter
        if target_entropy is not None:
            target_entropy = validation.in_open_interval("target_entropy", target_entropy, 0.0, 1.0)
        self.target_entropy = target_entropy
        self.entropy_tol = validation.positive("entropy_tol", entropy_tol)
        self.momentum = momentum
        self.cost_cache = cost_cache if process_group is None else "auto"
        self.process_group = process_group
        self.progress = progress
        self.last_plan = None
        self._entropy_eps = None

    def __repr__(self):
        what = f"target_entropy={self.target_entropy}" if self.target_entropy is not None else f"eps={self.eps}"
        return f"OTSampler({what}, relative_eps={self.relative_eps}, cost={self.cost!r}, tol={self.tol})"

    @torch.compiler.disable
    def plan(self, x0, x1):
        """The Sinkhorn coupling between the flattened batches x0 (n, ...) and x1 (m, ...)."""
        flat0, flat1 = _flatten("x0", x0), _flatten("x1", x1)
        if x0.shape[1:] != x1.shape[1:]:  # (3, 32, 32) and (1, 64, 48) flatten alike, yet do not pair
            raise ValueError(f"arguments 'x0' and 'x1' must have the same shape per point (the same number of "
                             f"features, laid out alike), "
                             f"got shapes {tuple(x0.shape)} and {tuple(x1.shape)}")
        # With a target entropy, the eps that met it last time is the first guess: successive
        # couplings of one stream are alike, so the bracket search usually ends at its first solve.
        first = self._entropy_eps if self._entropy_eps is not None else self.eps
        result = sinkhorn(flat0, flat1, eps=first, relative_eps=self.relative_eps, cost=self.cost,
                          tol=self.tol, max_iter=self.max_iter, momentum=self.momentum,
                          target_entropy=self.target_entropy, entropy_tol=self.entropy_tol,
                          cost_cache=self.cost_cache,
                          process_group=self.process_group, progress=self.progress)
        self.last_plan = result
        if self.target_entropy is not None:
            self._entropy_eps = result.eps / result.spread if self.relative_eps else result.eps
        return result

    def sample_indices(self, x0, x1, generator=None):
        """LongTensor (n,): for each x0[i] the index j_i of its partner in x1, j_i ~ P(. | i)."""
        if self.eps == 0.0:  # the exact coupling: an optimal permutation
            if x0.shape != x1.shape:
                raise ValueError(f"arguments 'x0' and 'x1' must have the same number of points and shape per point "
                                 f"for OTSampler(eps=0.0) (an exact assignment), got shapes {tuple(x0.shape)} "
                                 f"and {tuple(x1.shape)}")
            return assignment(_flatten("x0", x0), _flatten("x1", x1), cost=self.cost)
        return self.plan(x0, x1).sample(generator)

    def pair(self, x0, x1, *aligned, generator=None):
        """``(x0, x1[j], *(t[j] for t in aligned))`` with j = :meth:`sample_indices`.

        ``aligned`` are tensors indexed like x1 (class labels, conditions) that travel with it.
        x0 keeps its order, so tensors indexed like x0 need no pairing: torchcfm's
        ``sample_plan_with_labels(x0, x1, y0, y1)`` order would permute y0 here, and a call of
        that shape (two 1-D integer tensors as long as both batches) warns.
        """
        for k, t in enumerate(aligned):
            if not isinstance(t, torch.Tensor) or t.shape[:1] != x1.shape[:1]:
                raise ValueError(f"argument 'aligned[{k}]' must be a tensor with x1's {x1.shape[0]} rows")
        if (len(aligned) == 2 and x0.shape[0] == x1.shape[0]
                and all(t.dim() == 1 and not t.is_floating_point() for t in aligned)):
            warnings.warn("OTSampler.pair(x0, x1, *aligned): every aligned tensor travels with x1, and x0 keeps "
                          "its order. If these are (y0, y1) in torchcfm's sample_plan_with_labels order, y0 is "
                          "being permuted: pass only x1's labels and keep y0 as it is.", UserWarning, stacklevel=2)
        j = self.sample_indices(x0, x1, generator)
        return (x0, x1[j], *(t[j.to(t.device)] for t in aligned))


def _flatten(name, points):
    if not isinstance(points, torch.Tensor):
        raise ValueError(f"argument '{name}' must be a torch.Tensor, got {type(points).__name__}")
    if points.dim() < 1 or points.shape[0] == 0:
        raise ValueError(f"argument '{name}' must hold at least one point along dim 0, got shape {tuple(points.shape)}")
    flat = points.detach().reshape(points.shape[0], -1)
    validation.check_points(name, flat)
    return flat
