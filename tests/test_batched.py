"""Batched problems (issue #18): the streaming ops on x (B, n, d), y (B, m, d) with one scale per
problem, and ot_flow.sinkhorn on batched inputs, against the 2-D calls problem by problem."""

import warnings

import pytest
import torch

import ot_flow
from ot_flow.ops import barycentric, gumbel_argmax, lse, softmin
from ot_flow.ops.layout import stack_aligned


def _problems(batch, n, m, d, dtype=torch.float32, seed=0, far=True):
    """B problems with their own scales and translations (some far from the origin)."""
    g = torch.Generator().manual_seed(seed)
    spread = (0.3 + 3 * torch.rand(batch, 1, 1, generator=g, dtype=torch.float64))
    shift = torch.randn(batch, 1, d, generator=g, dtype=torch.float64) * (
        torch.tensor([0.0, 50.0, 3.0, 1e3] * batch, dtype=torch.float64)[:batch, None, None] if far else 1.0)
    x = torch.randn(batch, n, d, generator=g, dtype=torch.float64) * spread + shift
    y = torch.randn(batch, m, d, generator=g, dtype=torch.float64) * spread * 1.3 + shift + 0.5
    return x.to(dtype), y.to(dtype)


# --- ops -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,n,m,d", [(1, 5, 7, 3), (3, 1, 1, 1), (2, 131, 1031, 5), (4, 129, 513, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ops_each_problem_bitwise_equals_the_2d_call(batch, n, m, d, dtype):
    """Bitwise against the 2-D call on a fresh copy of each problem: the op lays a packed batch out
    with every problem 64-byte aligned (MKL's GEMMs round by alignment), as stack_aligned does."""
    g = torch.Generator().manual_seed(n + m)
    x = stack_aligned(list(torch.randn(batch, n, d, generator=g).to(dtype)))
    y = stack_aligned(list(torch.randn(batch, m, d, generator=g).to(dtype)))
    h = torch.randn(batch, m, generator=g).to(dtype)
    h[0, 0] = float("-inf")
    values = stack_aligned(list(torch.randn(batch, m, 2, generator=g).to(dtype)))
    packed = lse(x.contiguous(), y.contiguous(), h, [0.5 + k for k in range(batch)])
    scales = [0.5 + k for k in range(batch)]
    out = lse(x, y, h, scales)
    mean, row_lse = barycentric(x, y, h, scales, values)
    j, v = gumbel_argmax(x, y, h, scales, seed=[11 + k for k in range(batch)], return_value=True)
    eps = [1.0 / s for s in scales]
    sm = softmin(x, y, h, eps, h.exp())
    assert out.shape == (batch, n) and mean.shape == (batch, n, 2) and j.shape == (batch, n)
    for k in range(batch):
        xc, yc = x.contiguous(), y.contiguous()
        assert torch.equal(packed[k], lse(xc[k].clone(), yc[k].clone(), h[k].clone(), scales[k]))
        xk, yk, hk = x[k].clone(), y[k].clone(), h[k].clone()  # other memory than the batch's
        assert torch.equal(out[k], lse(xk, yk, hk, scales[k]))
        m2, l2 = barycentric(xk, yk, hk, scales[k], values[k].clone())
        assert torch.equal(mean[k], m2) and torch.equal(row_lse[k], l2)
        j2, v2 = gumbel_argmax(xk, yk, hk, scales[k], seed=11 + k, return_value=True)
        assert torch.equal(j[k], j2) and torch.equal(v[k], v2)
        assert torch.equal(sm[k], softmin(xk, yk, hk, eps[k], h[k].exp()))


def test_ops_one_scale_for_all_and_non_contiguous_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 6, generator=g).transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous
    y = torch.randn(6, 50, 3, generator=g).permute(2, 1, 0)
    h = torch.randn(50, 3, generator=g).T
    assert not (x.is_contiguous() or y.is_contiguous() or h.is_contiguous())
    out = lse(x, y, h, 0.7)
    for k in range(3):
        assert torch.equal(out[k], lse(x[k].contiguous(), y[k].contiguous(), h[k].contiguous(), 0.7))
    # one generator: one seed for every problem, the draw of the 2-D call with that seed
    j = gumbel_argmax(x, y, h, 0.7, generator=torch.Generator().manual_seed(4))
    for k in range(3):
        assert torch.equal(j[k], gumbel_argmax(x[k], y[k], h[k], 0.7, generator=torch.Generator().manual_seed(4)))


def test_ops_batched_gradients_and_opcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b, c: lse(a, b, c, [0.5, 2.0]), (x, y, h))
    torch.autograd.gradcheck(lambda a, b, c, w: barycentric(a, b, c, [0.5, 2.0], w), (x, y, h, v))
    torch.autograd.gradgradcheck(lambda a, b, c: lse(a, b, c, [0.5, 2.0]), (x, y, h))
    xs, ys, hs = x.detach().float(), y.detach().float(), h.detach().float()
    torch.library.opcheck(torch.ops.ot_flow.lse.default, (xs, ys, hs, 1.0, [0.5, 2.0]))
    torch.library.opcheck(torch.ops.ot_flow.lse.default, (xs, ys, None, 0.5))
    torch.library.opcheck(torch.ops.ot_flow.barycentric.default, (xs, ys, hs, 1.0, v.detach().float(), [0.5, 2.0]))
    torch.library.opcheck(torch.ops.ot_flow.gumbel_argmax.default, (xs, ys, hs, 1.0, 0, 0, 0, 0, [0.5, 2.0], [3, 4]))
    torch.library.opcheck(torch.ops.ot_flow.softmin.default, (xs, ys, hs, 1.0, None, [0.5, 2.0]))


def test_ops_bad_batched_inputs_name_the_argument():
    x, y, h = torch.randn(3, 4, 2), torch.randn(3, 5, 2), torch.randn(3, 5)
    cases = [
        (lambda: lse(x, torch.randn(2, 5, 2), h, 1.0), "same number of problems"),
        (lambda: lse(x, y[0], h, 1.0), "both be batched"),
        (lambda: lse(x, y, h[:, :4], 1.0), "argument 'h'"),
        (lambda: lse(x, y, h[0], 1.0), "argument 'h'"),
        (lambda: lse(x, y, h, [1.0, 2.0]), "argument 'scales' must hold one value per problem"),
        (lambda: lse(x, y, h, [1.0, float("nan"), 2.0]), "argument 'scales' must be finite"),
        (lambda: lse(x[0], y[0], h[0], [1.0]), "argument 'scale' holds 1 values"),
        (lambda: torch.ops.ot_flow.lse.default(x[0], y[0], h[0], 1.0, [1.0]), "argument 'scales' is for batched"),
        (lambda: lse(x.index_fill(1, torch.tensor([0]), float("nan")), y, h, 1.0), "argument 'x' contains NaN"),
        (lambda: barycentric(x, y, h, 1.0, torch.randn(3, 4, 2)), "argument 'values'"),
        (lambda: gumbel_argmax(x, y, h, 1.0, seed=[1, 2]), "argument 'seeds'"),
        (lambda: softmin(x, y, h, [1.0, -1.0, 2.0]), "argument 'epsilons'"),
        (lambda: softmin(x, y, h[:, :3], 1.0), "argument 'g'"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


# --- sinkhorn ------------------------------------------------------------------------------------

def _separate(x, y, k, **kw):
    """Problem k solved alone (``cost_cache`` as given, the default "auto" otherwise: at these sizes
    both the batch and the separate solve hold their dot products on the CPU)."""
    return ot_flow.sinkhorn(x[k].clone(), y[k].clone(), progress=False, **kw)


def _check_equal_to_separate(res, x, y, **kw):
    gen_seed = 5
    draws = res.sample(torch.Generator().manual_seed(gen_seed))
    entropy, cost, mass = res.renormalized_entropy(), res.transport_cost(), res.mass()
    maps = res.barycentric_map()
    for k in range(x.shape[0]):
        s = _separate(x, y, k, **kw)
        assert res.n_iter[k] == s.n_iter and bool(res.converged[k]) == s.converged, k
        assert torch.equal(res.f[k], s.f) and torch.equal(res.g[k], s.g), k
        assert float(res.eps[k]) == s.eps and float(res.error[k]) == s.error
        assert torch.equal(draws[k], s.sample(torch.Generator().manual_seed(gen_seed)))
        assert float(entropy[k]) == s.renormalized_entropy()
        assert float(cost[k]) == s.transport_cost() and float(mass[k]) == s.mass()
        assert torch.equal(maps[k], s.barycentric_map())


@pytest.mark.parametrize("batch,n,m,d", [(1, 37, 41, 3), (4, 1, 6, 2), (3, 131, 97, 5), (2, 130, 600, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cost_cache", ["auto", False])
def test_sinkhorn_batched_equals_separate_solves(batch, n, m, d, dtype, cost_cache):
    """On either path: cached (the default here; the problems stop at different iterations, so
    the held matrices are compacted as they drop out) and streamed."""
    x, y = _problems(batch, n, m, d, dtype, seed=n + d)
    res = ot_flow.sinkhorn(x, y, eps=0.02, progress=False, cost_cache=cost_cache)
    assert res.f.shape == (batch, n) and res.g.shape == (batch, m) and len(res) == batch
    assert res.n_iter.shape == res.converged.shape == res.eps.shape == (batch,)
    assert {res[k].path for k in range(batch)} == {"cached" if cost_cache else "streamed"}
    _check_equal_to_separate(res, x, y, eps=0.02, cost_cache=cost_cache)
    assert res.plan().shape == (batch, n, m)
    assert torch.allclose(res.plan()[0], res[0].plan())


def test_sinkhorn_batched_one_problem_equals_the_2d_call_and_per_problem_eps_differ():
    x, y = _problems(3, 60, 50, 3, torch.float64, seed=3)
    res = ot_flow.sinkhorn(x, y, eps=0.05, progress=False)
    assert len(set(res.eps.tolist())) == 3  # each problem's own std(C)
    one = ot_flow.sinkhorn(x[1:2], y[1:2], eps=0.05, progress=False)
    two_d = ot_flow.sinkhorn(x[1], y[1], eps=0.05, progress=False)
    assert torch.equal(one.f[0], two_d.f) and one.n_iter[0] == two_d.n_iter


def test_sinkhorn_batched_weights_non_contiguous_unbalanced_and_options():
    x, y = _problems(3, 40, 30, 2, torch.float64, seed=4)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 40, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(3, 30, generator=g, dtype=torch.float64) + 0.1
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous
    res = ot_flow.sinkhorn(xt, y, a, b, eps=0.05, cost="dot", tau_a=0.8, tau_b=0.95, progress=False)
    for k in range(3):
        s = ot_flow.sinkhorn(x[k], y[k], a[k], b[k], eps=0.05, cost="dot", tau_a=0.8, tau_b=0.95, progress=False)
        assert torch.equal(res.f[k], s.f) and res.n_iter[k] == s.n_iter
        assert float(res.mass()[k]) == s.mass()
    # momentum off, no annealing, absolute eps, warm start
    kw = dict(eps=0.5, relative_eps=False, momentum=False, anneal=False)
    res = ot_flow.sinkhorn(x, y, progress=False, **kw)
    _check_equal_to_separate(res, x, y, **kw)
    warm = ot_flow.sinkhorn(x, y, init=(res.f, res.g), progress=False, **kw)
    for k in range(3):
        s = _separate(x, y, k, init=(res.f[k], res.g[k]), **kw)
        assert torch.equal(warm.f[k], s.f) and warm.n_iter[k] == s.n_iter


def test_sinkhorn_batched_target_entropy_and_max_iter():
    x, y = _problems(2, 50, 50, 2, torch.float64, seed=6)
    res = ot_flow.sinkhorn(x, y, target_entropy=0.3, progress=False)
    for k in range(2):
        s = _separate(x, y, k, target_entropy=0.3)
        assert float(res.eps[k]) == s.eps and torch.equal(res.f[k], s.f)
        assert abs(float(res.renormalized_entropy()[k]) - 0.3) <= 0.01
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ot_flow.sinkhorn(x, y, eps=0.001, max_iter=3, progress=False)
    assert not res.converged.any() and (res.n_iter == 3).all()
    assert any("not converged" in str(w.message) for w in caught)


def test_sinkhorn_batched_bad_inputs_name_the_argument():
    x, y = torch.randn(3, 10, 2), torch.randn(3, 12, 2)
    cases = [
        (lambda: ot_flow.sinkhorn(x, y[:2]), "same number of problems"),
        (lambda: ot_flow.sinkhorn(x, y[0]), "argument 'y' of a batched solve"),
        (lambda: ot_flow.sinkhorn(x, torch.randn(3, 12, 3)), "same dimension"),
        (lambda: ot_flow.sinkhorn(x.index_fill(1, torch.tensor([2]), float("inf")), y), r"argument 'x\[0\]'"),
        (lambda: ot_flow.sinkhorn(x, y, a=torch.full((3, 9), 1 / 9)), "argument 'a'"),
        (lambda: ot_flow.sinkhorn(x, y, b=torch.full((3, 12), 0.5)), r"argument 'b\[0\]' must sum to 1"),
        (lambda: ot_flow.sinkhorn(x, y, cost_cache="yes"), "argument 'cost_cache'"),
        (lambda: ot_flow.sinkhorn(x, y, process_group=object()), "argument 'process_group'"),
        (lambda: ot_flow.sinkhorn(x, y, init=(torch.zeros(3, 10), torch.zeros(3, 11))), "argument 'init'"),
        (lambda: ot_flow.sinkhorn(x, y).sample(rows=torch.arange(2)), "argument 'rows'"),
        (lambda: ot_flow.sinkhorn(x, y).sample([torch.Generator()] * 2), "argument 'generator'"),
        (lambda: ot_flow.sinkhorn(x, y).plan(max_bytes=100), "max_bytes"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_class_conditional_pairing_batches_equal_sized_classes():
    from ot_flow.ops import seed_from
    from ot_flow.samplers.ot_sampler import class_generator

    g = torch.Generator().manual_seed(0)
    c = torch.cat([torch.arange(3).repeat_interleave(40), torch.full((25,), 7)])
    c0, c1 = c[torch.randperm(len(c), generator=g)], c[torch.randperm(len(c), generator=g)]
    x0 = torch.randn(len(c), 2, generator=g)
    x1 = torch.randn(len(c), 2, generator=g) + 4.0 * c1[:, None].float()
    problems = [(x0[c0 == k], x1[c1 == k]) for k in (0, 1, 2, 7)]
    seed = seed_from(torch.Generator().manual_seed(9))
    for cost_cache in (False, "auto"):
        sampler = ot_flow.OTSampler(eps=0.05, cost_cache=cost_cache)
        assert sorted(sampler._batches(problems)) == [([0, 1, 2], bool(cost_cache)), ([3], bool(cost_cache))]
        _, paired = sampler.pair(x0, x1, classes=(c0, c1), generator=torch.Generator().manual_seed(9))
        for label in (0, 1, 2, 7):
            alone = ot_flow.OTSampler(eps=0.05, cost_cache=cost_cache).pair(
                x0[c0 == label], x1[c1 == label], generator=class_generator(seed, label))[1]
            assert torch.equal(paired[c0 == label], alone), label
        assert set(sampler.last_plan) == {0, 1, 2, 7}
        assert {p.path for p in sampler.last_plan.values()} == {"cached" if cost_cache else "streamed"}


def test_cached_batches_fit_the_cache_budget(monkeypatch):
    """A batch holds its B matrices only where they fit the budget together: beyond it the solve
    streams, and the sampler splits its cached classes into batches that fit."""
    from ot_flow.solvers import cost_cache

    x, y = _problems(4, 30, 20, 2, torch.float32, seed=8)
    assert {r.path for r in ot_flow.sinkhorn(x, y, progress=False)} == {"cached"}
    monkeypatch.setattr(cost_cache, "CACHE_BUDGET_BYTES", 2 * 30 * 20 * 4)  # two matrices
    assert {r.path for r in ot_flow.sinkhorn(x, y, progress=False)} == {"streamed"}
    problems = [(x[k], y[k]) for k in range(4)] + [(x[0][:10], y[0][:10])]
    sampler = ot_flow.OTSampler(eps=0.05)
    assert sampler._batches(problems) == [([0, 1], True), ([2, 3], True), ([4], True)]


@pytest.mark.parametrize("per", [1, 2])
def test_cached_batch_in_cache_sized_groups_equals_the_whole_batch(monkeypatch, per):
    """A CPU batch whose matrices overflow the last-level cache runs in groups that fit it: the
    problems are independent, so the results are the same bits (and warm starts and target
    entropy searches go to the right problems)."""
    from ot_flow.solvers import sinkhorn_batched

    x, y = _problems(5, 40, 30, 2, torch.float64, seed=12)
    whole = ot_flow.sinkhorn(x, y, eps=0.03, progress=False)
    monkeypatch.setattr(sinkhorn_batched, "cache_group_size", lambda n, m, item: per)
    grouped = ot_flow.sinkhorn(x, y, eps=0.03, progress=False)
    assert torch.equal(grouped.f, whole.f) and torch.equal(grouped.g, whole.g)
    assert torch.equal(grouped.n_iter, whole.n_iter) and {r.path for r in grouped} == {"cached"}
    _check_equal_to_separate(grouped, x, y, eps=0.03)
    warm = ot_flow.sinkhorn(x, y, eps=0.03, init=(whole.f.flip(0), whole.g.flip(0)), progress=False)
    for k in range(5):
        s = _separate(x, y, k, eps=0.03, init=(whole.f[4 - k], whole.g[4 - k]))
        assert torch.equal(warm.f[k], s.f) and warm.n_iter[k] == s.n_iter
    searched = ot_flow.sinkhorn(x[:3], y[:3], target_entropy=0.3, progress=False)
    for k in range(3):
        assert float(searched.eps[k]) == _separate(x, y, k, target_entropy=0.3).eps


@pytest.mark.parametrize("cost_cache", [False, True])
@pytest.mark.parametrize("call,bad", [(7, float("nan")), (8, float("-inf")), (9, float("inf"))])
def test_non_finite_half_step_names_the_problem(monkeypatch, cost_cache, call, bad):
    # The loop's own checks (validate=False in the ops): an odd call is an f-update (caught by its
    # marginal error), an even one a g-update (by the checksum of g); the error names the problem.
    from ot_flow.solvers import sinkhorn_batched_iterations as loop

    name = "_softmin_cached" if cost_cache else "_softmin"
    original, calls = getattr(loop.BatchedHalves, name), []

    def failing(self, *args):
        calls.append(1)
        out = original(self, *args)
        if len(calls) == call:
            out = out.clone()
            out[1, 3] = bad  # the second running problem
        return out

    monkeypatch.setattr(loop.BatchedHalves, name, failing)
    x, y = _problems(3, 40, 30, 2)[:2]
    with pytest.raises(RuntimeError, match="problem 1 of the batch"):
        ot_flow.sinkhorn(x, y, eps=0.01, cost_cache=cost_cache, tol=1e-9, max_iter=100, anneal=False)
