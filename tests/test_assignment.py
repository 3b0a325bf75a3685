"""ot_flow.assignment and the op under it: exact optimal permutations, checked against scipy's
linear_sum_assignment on the float64 cost matrix, with ties, float32 inputs, both costs, dual
certificates, bad inputs, and OTSampler(eps=0.0) pairing by it."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import ot_flow
from ot_flow.ops import assignment_dense


def reference_cost(x, y, cost):
    x, y = x.double(), y.double()
    if cost == "sqeuclidean":
        return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) / 2
    return -(x @ y.T)


def check_optimal(x, y, cost, perm, exact=False):
    n = x.shape[0]
    assert perm.dtype == torch.long and perm.shape == (n,) and perm.device == x.device
    assert torch.equal(perm.cpu().sort().values, torch.arange(n)), "not a permutation"
    c = reference_cost(x.cpu(), y.cpu(), cost).numpy()
    rows, cols = linear_sum_assignment(c)
    best = c[rows, cols].sum()
    ours = c[np.arange(n), perm.cpu().numpy()].sum()
    if exact:  # integer costs: float64 sums are exact, so the optimum must be hit exactly
        assert ours == best
    else:
        assert ours <= best + 1e-12 * n * max(1.0, float(np.abs(c).max()))
    return ours, best


def clouds(n, d, dtype=torch.float64, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5
    return (x + shift).to(dtype), (y + shift).to(dtype)


@pytest.mark.parametrize("n", [1, 2, 3, 37, 101, 300])
@pytest.mark.parametrize("d", [1, 2, 16])
@pytest.mark.parametrize("cost", ["sqeuclidean", "dot"])
def test_matches_scipy_random(n, d, cost):
    x, y = clouds(n, d, seed=n * 10 + d)
    check_optimal(x, y, cost, ot_flow.assignment(x, y, cost=cost))


@pytest.mark.parametrize("n", [37, 101, 256])
def test_float32_inputs(n):
    x, y = clouds(n, 8, torch.float32, seed=n)
    perm = ot_flow.assignment(x, y)
    check_optimal(x, y, "sqeuclidean", perm)  # the optimum of the float32 points, in float64


@pytest.mark.parametrize("n", [2, 37, 101, 400])
@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("cost", ["sqeuclidean", "dot"])
def test_integer_points_with_many_ties(n, d, cost):
    g = torch.Generator().manual_seed(n + d)
    x = torch.randint(-2, 3, (n, d), generator=g).double()
    y = torch.randint(-2, 3, (n, d), generator=g).double()
    check_optimal(x, y, cost, ot_flow.assignment(x, y, cost=cost), exact=True)


@pytest.mark.parametrize("n", [37, 101])
def test_duplicated_points(n):
    x, y = clouds(n // 3 + 1, 3, seed=n)
    x = x.repeat(3, 1)[:n]
    y = torch.cat([y, y, y, y])[:n]
    check_optimal(x, y, "sqeuclidean", ot_flow.assignment(x, y))
    same = ot_flow.assignment(x, x)  # a cloud against itself: cost 0 exactly
    assert float(reference_cost(x, x, "sqeuclidean")[torch.arange(n), same].sum()) == 0.0
    one = torch.ones(n, 2)  # every pairing is optimal
    assert torch.equal(ot_flow.assignment(one, one).sort().values, torch.arange(n))


def test_far_from_the_origin():
    """Moved or scaled, the clouds still get an optimal permutation: checked against scipy on the
    same (rounded) points brought back to the origin, where the dense reference has no cancellation
    (a bitwise compare with the unmoved solve would hold only up to near-ties of rounding)."""
    x, y = clouds(101, 4, seed=5)
    xs, ys = x + 1e6, y + 1e6
    check_optimal(xs - 1e6, ys - 1e6, "sqeuclidean", ot_flow.assignment(xs, ys))
    check_optimal(x * 1e-5, y * 1e-5, "sqeuclidean", ot_flow.assignment(x * 1e-5, y * 1e-5))


def test_dot_and_sqeuclidean_give_the_same_problem():
    x, y = clouds(64, 3, seed=9)
    for cost in ("sqeuclidean", "dot"):
        ours, best = check_optimal(x, y, cost, ot_flow.assignment(x, y, cost="dot" if cost == "sqeuclidean" else "sqeuclidean"))


def random_matrix(n, kind, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        return torch.rand(n, n, generator=g, dtype=torch.float64)
    if kind == "ties":
        return torch.randint(0, 3, (n, n), generator=g).double()
    if kind == "constant":
        return torch.full((n, n), 7.0, dtype=torch.float64)
    return torch.randint(0, 1000, (n, n), generator=g).double() * 1e-3 - 5.0  # "wide"


@pytest.mark.parametrize("n", [1, 2, 5, 50, 203])
@pytest.mark.parametrize("kind", ["uniform", "ties", "constant", "wide"])
@pytest.mark.parametrize("warm", [False, True])
def test_op_is_optimal_with_a_dual_certificate(n, kind, warm):
    c = random_matrix(n, kind, seed=n)
    v0 = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) if warm else None
    perm, u, v = assignment_dense(c, v0)
    assert torch.equal(perm.sort().values, torch.arange(n))
    tol = 1e-12 * max(1.0, float(c.abs().max()))
    assert float((c - u[:, None] - v[None, :]).min()) >= -tol
    assert torch.allclose(c[torch.arange(n), perm], u + v[perm], rtol=0, atol=tol)
    rows, cols = linear_sum_assignment(c.numpy())
    assert float(c[torch.arange(n), perm].sum()) == pytest.approx(float(c.numpy()[rows, cols].sum()), abs=tol * n)


def test_op_float32_and_non_contiguous():
    c = random_matrix(60, "uniform", 3)
    perm, u, v = assignment_dense(c.float().T)
    assert u.dtype == torch.float32
    rows, cols = linear_sum_assignment(c.float().double().T.numpy())
    assert torch.equal(perm, torch.from_numpy(cols)) or float(c.T[torch.arange(60), perm].sum()) <= float(
        c.T.numpy()[rows, cols].sum()) + 1e-9


def test_opcheck_fake_and_compile():
    c = random_matrix(20, "uniform", 4)
    torch.library.opcheck(torch.ops.ot_flow.assignment_dense.default, (c, None),
                          test_utils=("test_schema", "test_faketensor"))
    fn = torch.compile(lambda c: assignment_dense(c)[0], fullgraph=True)
    assert torch.equal(fn(c), assignment_dense(c)[0])


def test_bad_inputs():
    x, y = clouds(5, 2)
    with pytest.raises(ValueError, match="'x' and 'y'.*same number of points"):
        ot_flow.assignment(x, y[:4])
    with pytest.raises(ValueError, match="'x'.*NaN"):
        ot_flow.assignment(torch.full_like(x, float("nan")), y)
    with pytest.raises(ValueError, match="'y'.*NaN or Inf"):
        ot_flow.assignment(x, torch.full_like(y, float("inf")))
    with pytest.raises(ValueError, match="'x'.*floating-point"):
        ot_flow.assignment(x.long(), y)
    with pytest.raises(ValueError, match="same dimension"):
        ot_flow.assignment(x, y[:, :1])
    with pytest.raises(ValueError, match="'x'.*empty"):
        ot_flow.assignment(x[:0], y[:0])
    with pytest.raises(ValueError, match="cost"):
        ot_flow.assignment(x, y, cost="l1")
    with pytest.raises(ValueError, match="'cost'.*square"):
        assignment_dense(torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="'cost'.*NaN"):
        assignment_dense(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="'cost'.*float32 or float64"):
        assignment_dense(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="'col_potential'"):
        assignment_dense(torch.zeros(3, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))


def test_ot_sampler_eps_zero_pairs_by_the_assignment():
    x0, x1 = clouds(50, 3, torch.float32, seed=11)
    labels = torch.arange(50)
    sampler = ot_flow.OTSampler(eps=0.0)
    p0, p1, l1 = sampler.pair(x0, x1, labels)
    perm = ot_flow.assignment(x0, x1)
    assert torch.equal(p0, x0) and torch.equal(p1, x1[perm]) and torch.equal(l1, perm)
    check_optimal(x0, x1, "sqeuclidean", sampler.sample_indices(x0, x1))
    images0, images1 = x0.reshape(50, 3, 1, 1), x1.reshape(50, 3, 1, 1)  # flattened like the Sinkhorn path
    assert torch.equal(sampler.pair(images0, images1)[1], images1[perm])
    with pytest.raises(ValueError, match="'x0' and 'x1'.*same number"):
        sampler.pair(x0, x1[:40])
    with pytest.raises(ValueError, match="'eps'"):
        ot_flow.OTSampler(eps=-1.0)


@pytest.mark.cuda
def test_cuda_inputs_return_on_the_device():
    x, y = clouds(257, 8, torch.float32, seed=2)
    perm = ot_flow.assignment(x.cuda(), y.cuda())
    assert perm.device.type == "cuda"
    check_optimal(x, y, "sqeuclidean", perm.cpu())
    c = random_matrix(40, "ties", 1).cuda()
    p, u, v = assignment_dense(c)
    assert p.device.type == u.device.type == "cuda"
    assert torch.equal(p.cpu(), assignment_dense(c.cpu())[0])
