"""OTSampler: minibatch (or large-batch) OT pairing for flow matching, on the streaming solver.

For a batch of source points x0 (noise) and target points x1 (data), solve the entropic
coupling P between them and draw, for every x0[i], one partner j_i ~ P(. | i) (Gumbel-max,
no n x m matrix). Every source point is used exactly once, and with uniform weights the pairs
(x0[i], x1[j_i]) are distributed as P: seed paper 002's batch-OT flow matching at any coupling
size, from a minibatch of 256 to millions of points.
"""

import warnings

import torch

from ot_flow.distributed import derived_seed
from ot_flow.ops import precision as op_precision, seed_from
from ot_flow.solvers import costs, validation
from ot_flow.solvers.assignment import assignment
from ot_flow.solvers.cost_cache import batch_fits, caches_costs
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
        tau_a, tau_b: unbalanced couplings, passed to :func:`ot_flow.sinkhorn` (tau = rho / (rho +
            eps) in (0, 1], 1 = that marginal exact); every x0 still gets one partner from P(. | i).
        precision: of the dot products in the solves and draws, passed to :func:`ot_flow.sinkhorn`
            ("highest", "tf32" or "bf16"; see ot_flow.ops.precision).

    Points of any shape are flattened to vectors for the cost (images included), after a check
    that x0 and x1 have the same shape per point; bf16 and fp16 points are solved in float32 and
    returned in their own dtype, also inside an autocast region. ``last_plan`` keeps the
    latest :class:`ot_flow.SinkhornResult` (its entropy, iterations and error) for logging.
    """

    def __init__(self, eps=0.05, relative_eps=True, cost="sqeuclidean", tol=1e-3, max_iter=10_000,
                 target_entropy=None, entropy_tol=0.01, momentum=True, cost_cache="auto", process_group=None, progress="auto",
                 tau_a=1.0, tau_b=1.0, precision="highest"):
        exact = eps == 0 and not isinstance(eps, bool) and target_entropy is None
        self.eps = 0.0 if exact else validation.positive("eps", eps)
        self.relative_eps = bool(relative_eps)
        costs.check_cost(cost)
        self.cost = cost
        self.tol = validation.positive("tol", tol)
        validation.integer("max_iter", max_iter, 1)
        self.max_iter = max_iter
        if target_entropy is not None:
            target_entropy = validation.in_open_interval("target_entropy", target_entropy, 0.0, 1.0)
        self.target_entropy = target_entropy
        self.entropy_tol = validation.positive("entropy_tol", entropy_tol)
        self.momentum = momentum
        self.cost_cache = cost_cache if process_group is None else "auto"
        self.process_group = process_group
        self.progress = progress
        self.tau_a, self.tau_b = validation.tau("tau_a", tau_a), validation.tau("tau_b", tau_b)
        if exact and (self.tau_a < 1 or self.tau_b < 1):
            raise ValueError("arguments 'tau_a' / 'tau_b': eps=0.0 pairs by the exact (balanced) assignment, "
                             "which has no relaxed marginals; pass eps > 0 for an unbalanced coupling")
        self.precision = op_precision.checked("OTSampler", precision)
        self.last_plan = None
        self._entropy_eps = None

    def __repr__(self):
        what = f"target_entropy={self.target_entropy}" if self.target_entropy is not None else f"eps={self.eps}"
        return f"OTSampler({what}, relative_eps={self.relative_eps}, cost={self.cost!r}, tol={self.tol})"

    @torch.compiler.disable
    def plan(self, x0, x1):
        """The Sinkhorn coupling between the flattened batches x0 (n, ...) and x1 (m, ...)."""
        flat0, flat1 = validation.flat_points("x0", x0), validation.flat_points("x1", x1)
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
                          process_group=self.process_group, progress=self.progress,
                          tau_a=self.tau_a, tau_b=self.tau_b, precision=self.precision)
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
            return assignment(validation.flat_points("x0", x0), validation.flat_points("x1", x1), cost=self.cost)
        return self.plan(x0, x1).sample(generator)

    def pair(self, x0, x1, *aligned, classes=None, generator=None):
        """``(x0, x1[j], *(t[j] for t in aligned))`` with j = :meth:`sample_indices`.

        ``aligned`` are tensors indexed like x1 (class labels, conditions) that travel with it.
        x0 keeps its order, so tensors indexed like x0 need no pairing: torchcfm's
        ``sample_plan_with_labels(x0, x1, y0, y1)`` order would permute y0 here, and a call of
        that shape (two 1-D integer tensors as long as both batches) warns.

        ``classes=(c0, c1)``: integer labels of x0 (n,) and x1 (m,); one coupling per class,
        pairs only where c0[i] == c1[j]. Every class must have as many points in x0 as in x1
        (else a ``ValueError`` naming the class). Class k's pairing is that class solved alone
        (``pair(x0[c0 == k], x1[c1 == k], generator=class_generator(seed, k))``) with ``seed``
        one draw from ``generator``: :func:`class_generator` derives the class's generator
        from (seed, k), so a class's pairs depend neither on the other classes nor on the
        order they are solved in. ``last_plan`` is then the dict {label: SinkhornResult}. Classes
        of equal sizes are solved together in one batched call where that runs the steps of
        the separate solves exactly (see ``_batches``): the pairs are the same either way.
        """
        for k, t in enumerate(aligned):
            if not isinstance(t, torch.Tensor) or t.shape[:1] != x1.shape[:1]:
                raise ValueError(f"argument 'aligned[{k}]' must be a tensor with x1's {x1.shape[0]} rows")
        if (len(aligned) == 2 and x0.shape[0] == x1.shape[0]
                and all(t.dim() == 1 and not t.is_floating_point() for t in aligned)):
            warnings.warn("OTSampler.pair(x0, x1, *aligned): every aligned tensor travels with x1, and x0 keeps "
                          "its order. If these are (y0, y1) in torchcfm's sample_plan_with_labels order, y0 is "
                          "being permuted: pass only x1's labels and keep y0 as it is.", UserWarning, stacklevel=2)
        if classes is None:
            j = self.sample_indices(x0, x1, generator)
        else:
            j = self.class_indices(x0, x1, classes, generator)
        return (x0, x1[j], *(t[j.to(t.device)] for t in aligned))

    def class_indices(self, x0, x1, classes, generator=None):
        """LongTensor (n,): for each x0[i] the index j_i of its partner in x1, drawn from the
        coupling of x0[i]'s class (see :meth:`pair`)."""
        groups = class_groups(classes, x0.shape[0], x1.shape[0])
        seed = seed_from(generator)
        problems = [(x0[rows.to(x0.device)], x1[cols.to(x1.device)]) for _, rows, cols in groups]
        plans, draws = [None] * len(groups), [None] * len(groups)
        for members, cached in self._batches(problems):
            if len(members) == 1:
                (k,) = members
                plans[k] = self.plan(*problems[k])
                draws[k] = plans[k].sample(class_generator(seed, groups[k][0]))
                continue
            batch = self._batched_plan([problems[k] for k in members], cached)
            local = batch.sample([class_generator(seed, groups[k][0]) for k in members])
            for p, k in enumerate(members):
                plans[k], draws[k] = batch[p], local[p]
        j = torch.empty(x0.shape[0], dtype=torch.long, device=x0.device)
        for (label, rows, cols), local in zip(groups, draws):
            j[rows.to(j.device)] = cols.to(j.device)[local.to(j.device)]
        self.last_plan = {label: plan for (label, _, _), plan in zip(groups, plans)}
        return j

    def _batched_plan(self, problems, cached):
        """The couplings of problems [(x0_k, x1_k)] of equal shapes, in one batched sinkhorn call
        on the path (``cached``) that each one's separate solve takes."""
        flat0 = torch.stack([validation.flat_points("x0", a) for a, _ in problems])
        flat1 = torch.stack([validation.flat_points("x1", b) for _, b in problems])
        return sinkhorn(flat0, flat1, eps=self.eps, relative_eps=self.relative_eps, cost=self.cost, tol=self.tol,
                        max_iter=self.max_iter, momentum=self.momentum, cost_cache=cached,
                        progress=self.progress, tau_a=self.tau_a, tau_b=self.tau_b, precision=self.precision)

    def _batches(self, problems):
        """[(members, cached)]: the classes solved together, as one batched solve (ot_flow.sinkhorn
        on (B, n, d)) where it runs the very steps of the separate solves: classes of equal sizes
        (n, m), shape and dtype whose separate solves take the same path (streamed, or cached
        where ``cost_cache`` holds the n x m matrix; a cached batch holds at most the matrices
        that fit the cache budget together), one process, a fixed eps (a ``target_entropy``
        search starts each class from the eps the previous class found). Others one by one,
        in order (``cached`` None: the solve's own choice)."""
        can = self.target_entropy is None and self.process_group is None and self.eps > 0
        groups = {}
        for k, (a, b) in enumerate(problems):
            if not can:
                groups[("alone", k)] = [k]
                continue
            flat0, flat1 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
            if flat0.dtype not in (torch.float32, torch.float64):
                flat0 = flat0.float()  # what sinkhorn solves half points in
            cached = self.cost_cache is True or (self.cost_cache == "auto" and caches_costs(flat0, flat1))
            key = (tuple(a.shape), tuple(b.shape), a.dtype, b.dtype, flat0.element_size(), cached)
            groups.setdefault(key, []).append(k)
        batches = []
        for key, members in groups.items():
            if key[0] == "alone":
                batches.append((members, None))
                continue
            (n, m), item, cached = (key[0][0], key[1][0]), key[-2], key[-1]
            per = len(members)
            while cached and per > 1 and not batch_fits(per, n, m, item):
                per = (per + 1) // 2
            batches += [(members[i:i + per], cached) for i in range(0, len(members), per)]
        return batches


def class_groups(classes, n, m):
    """[(label, rows of x0, columns of x1)] per class, labels ascending, each with as many rows
    as columns; a ``ValueError`` names the first class whose counts differ."""
    if not isinstance(classes, (tuple, list)) or len(classes) != 2:
        raise ValueError("argument 'classes' must be a pair (c0, c1) of label tensors for x0 and x1")
    c0, c1 = classes
    for name, c, size in (("classes[0]", c0, n), ("classes[1]", c1, m)):
        if not isinstance(c, torch.Tensor) or c.dim() != 1 or c.shape[0] != size:
            raise ValueError(f"argument '{name}' must be a 1-D tensor of {size} labels, got "
                             f"{tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__}")
        if c.is_floating_point() or c.is_complex():
            raise ValueError(f"argument '{name}' must hold integer class labels, got {c.dtype}")
    c0, c1 = c0.detach().cpu().long(), c1.detach().cpu().long()
    labels0, counts0 = torch.unique(c0, return_counts=True)
    labels1, counts1 = torch.unique(c1, return_counts=True)
    have0 = dict(zip(labels0.tolist(), counts0.tolist()))
    have1 = dict(zip(labels1.tolist(), counts1.tolist()))
    for label in sorted(set(have0) | set(have1)):
        if have0.get(label, 0) != have1.get(label, 0):
            raise ValueError(f"argument 'classes': class {label} has {have0.get(label, 0)} points in x0 but "
                             f"{have1.get(label, 0)} in x1; every class needs equal counts on both sides")
    return [(label, (c0 == label).nonzero()[:, 0], (c1 == label).nonzero()[:, 0]) for label in sorted(have0)]


def class_generator(seed, label):
    """The CPU generator of class ``label`` in a class-conditional pairing keyed on ``seed``
    (SeedSequence of (seed, label), labels of any sign)."""
    key = 2 * label if label >= 0 else -2 * label - 1
    return torch.Generator().manual_seed(derived_seed(seed, key))
