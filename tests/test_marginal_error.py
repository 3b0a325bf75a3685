"""ot_flow.ops.marginal_error: the solvers' stopping rule, against a float64 reference."""

import pytest
import torch

import ot_flow


def reference(current, updated, weights, scale):
    step = (current.double() - updated.double()) * scale
    return (weights.double() * torch.expm1(step).abs()).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 1031, 100_003])
def test_matches_float64_reference(n, dtype):
    gen = torch.Generator().manual_seed(n)
    current, updated = torch.randn(n, generator=gen, dtype=dtype), torch.randn(n, generator=gen, dtype=dtype)
    weights = torch.rand(n, generator=gen, dtype=torch.float64)
    for scale in (1e-3, 0.5, 20.0):
        out = ot_flow.ops.marginal_error(current, updated, weights, scale)
        assert out.dtype == torch.float64 and out.shape == ()
        # float64 sums of up to 1e5 terms in two orders (a loop, torch's pairwise sum)
        torch.testing.assert_close(out, reference(current, updated, weights, scale), rtol=1e-10, atol=0)


def test_is_the_plans_marginal_error():
    """With f_new = softmin(g), the error of (f, g) is |P 1 - a|_1 of the plan P they define."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    a, b = torch.full((40,), 1 / 40, dtype=torch.float64), torch.full((30,), 1 / 30, dtype=torch.float64)
    f = torch.randn(40, generator=gen, dtype=torch.float64)
    g, eps = torch.randn(30, generator=gen, dtype=torch.float64), 0.5
    dots = x @ y.T  # cost -<x, y>
    plan = a[:, None] * b[None, :] * torch.exp((f[:, None] + g[None, :] + dots) / eps)
    f_new = ot_flow.ops.softmin_dense(dots, g, eps, 1, b.log())
    torch.testing.assert_close(ot_flow.ops.marginal_error(f, f_new, a, 1 / eps), (plan.sum(1) - a).abs().sum())


def test_batched_per_problem_scales_non_contiguous_and_non_finite():
    gen = torch.Generator().manual_seed(2)
    current = torch.randn(6, 50, generator=gen)[::2]  # (3, 50), rows strided
    updated = torch.randn(50, 3, generator=gen).T  # (3, 50), column-major
    weights = torch.rand(3, 50, generator=gen, dtype=torch.float64)
    out = ot_flow.ops.marginal_error(current, updated, weights, [0.5, 2.0, 7.0])
    assert out.shape == (3,)
    for k, s in enumerate([0.5, 2.0, 7.0]):
        assert torch.equal(out[k], ot_flow.ops.marginal_error(current[k], updated[k], weights[k], s))
        torch.testing.assert_close(out[k], reference(current[k], updated[k], weights[k], s), rtol=1e-12, atol=0)
    bad = updated.clone()
    bad[1, 4] = float("nan")
    assert torch.isnan(ot_flow.ops.marginal_error(current, bad, weights, 1.0)[1])
    for value in (float("-inf"), float("inf")):  # expm1(-inf) = -1 must not hide a +inf potential
        bad[1, 4] = value
        out = ot_flow.ops.marginal_error(current, bad, weights, 1.0)
        assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
        assert torch.isnan(ot_flow.ops.marginal_error(bad, current, weights, 1.0)[1])


def test_bad_input_and_opcheck():
    c, u, w = torch.randn(5), torch.randn(5), torch.rand(5)
    with pytest.raises(ValueError, match="arguments 'updated' and 'weights' must have the shape of 'current'"):
        ot_flow.ops.marginal_error(c, u[:4], w, 1.0)
    with pytest.raises(ValueError, match="argument 'updated' must have the dtype of 'current'"):
        ot_flow.ops.marginal_error(c, u.double(), w, 1.0)
    with pytest.raises(ValueError, match="argument 'current' must be a 1-D tensor"):
        ot_flow.ops.marginal_error(c[None, None], u[None, None], w[None, None], 1.0)
    with pytest.raises(ValueError, match="argument 'scale' holds 2 values"):
        ot_flow.ops.marginal_error(c, u, w, [1.0, 2.0])
    with pytest.raises(ValueError, match="argument 'scales' must hold one value per problem"):
        ot_flow.ops.marginal_error(c[None], u[None], w[None], [1.0, 2.0])
    with pytest.raises(ValueError, match="argument 'weights' must be float32 or float64"):
        ot_flow.ops.marginal_error(c, u, w.long(), 1.0)
    with pytest.raises(ValueError, match="argument 'scale' must be finite"):
        ot_flow.ops.marginal_error(c, u, w, float("inf"))
    assert not ot_flow.ops.marginal_error(c.requires_grad_(), u, w, 1.0).requires_grad  # not differentiable
    c = c.detach()
    torch.library.opcheck(torch.ops.ot_flow.marginal_error.default, (c, u, w, 0.5))
    torch.library.opcheck(torch.ops.ot_flow.marginal_error.default, (c[None], u[None], w[None].double(), 1.0),
                          dict(scales=[0.5]))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(4)
    current, updated = torch.randn(3, 70_001, generator=gen), torch.randn(3, 70_001, generator=gen)
    weights = torch.rand(3, 70_001, generator=gen, dtype=torch.float64)
    cpu = ot_flow.ops.marginal_error(current, updated, weights, [0.5, 2.0, 7.0])
    gpu = ot_flow.ops.marginal_error(current.cuda(), updated.cuda(), weights.cuda(), [0.5, 2.0, 7.0])
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=0)
    one = ot_flow.ops.marginal_error(current[0].cuda(), updated[0].cuda(), weights[0].cuda(), 0.5)
    torch.testing.assert_close(one.cpu(), cpu[0], rtol=1e-10, atol=0)
