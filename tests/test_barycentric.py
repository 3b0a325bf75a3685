import pytest
import torch

import ot_flow
from test_lse import random_problem


def dense_barycentric(x, y, h, scale, values=None):
    logits = scale * (x.double() @ y.double().T) + h.double()
    weights = torch.softmax(logits, dim=1)
    v = (y if values is None else values).double()
    return weights @ v, torch.logsumexp(logits, dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m,d,k", [(1, 1, 1, None), (7, 1000, 3, 5), (129, 4099, 64, None), (5000, 13, 2, 1), (300, 517, 300, 2)])
def test_matches_dense_reference(n, m, d, k, dtype):
    x, y, h = random_problem(n, m, d, dtype)
    values = None if k is None else torch.randn(m, k, dtype=dtype)
    out, lse = ot_flow.ops.barycentric(x, y, h, 1.0 / d**0.5, values)
    ref_out, ref_lse = dense_barycentric(x, y, h, 1.0 / d**0.5, values)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.double(), ref_out, **tol)
    torch.testing.assert_close(lse.double(), ref_lse, **tol)


def test_rows_without_mass_and_dropped_columns():
    x, y, h = random_problem(40, 1200, 3, torch.float64)
    h[::2] = float("-inf")
    out, lse = ot_flow.ops.barycentric(x, y, h, 0.5)
    ref_out, ref_lse = dense_barycentric(x, y, h, 0.5)
    torch.testing.assert_close(out, ref_out)
    h[:] = float("-inf")
    out, lse = ot_flow.ops.barycentric(x, y, h, 0.5)
    assert torch.isneginf(lse).all() and (out == 0).all()


def test_non_contiguous_and_opcheck():
    x, y, h = random_problem(70, 300, 6, torch.float64)
    values = torch.randn(3, 300, dtype=torch.float64).T
    out, _ = ot_flow.ops.barycentric(x.T.contiguous().T, y, h, 0.3, values)
    torch.testing.assert_close(out, dense_barycentric(x, y, h, 0.3, values)[0])
    torch.library.opcheck(torch.ops.ot_flow.barycentric.default, (x.float(), y.float(), h.float(), 0.3, None))
    torch.library.opcheck(torch.ops.ot_flow.barycentric.default, (x, y, None, 1.0, values.contiguous()))


def test_bad_values_raise():
    x, y, h = random_problem(4, 6, 3, torch.float32)
    with pytest.raises(ValueError, match="argument 'values' must be a 2-D tensor"):
        ot_flow.ops.barycentric(x, y, h, 1.0, torch.randn(5, 2))
    with pytest.raises(ValueError, match="argument 'values' contains NaN"):
        ot_flow.ops.barycentric(x, y, h, 1.0, torch.full((6, 2), float("nan")))
    with pytest.raises(ValueError, match="ot_flow.barycentric: argument 'x' contains NaN"):
        ot_flow.ops.barycentric(torch.full((4, 3), float("nan")), y, h, 1.0)


def test_lse_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(23, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(37, 4, dtype=torch.float64, generator=g, requires_grad=True)
    h = torch.randn(37, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, h: ot_flow.ops.lse(x, y, h, 0.7), (x, y, h))
    assert torch.autograd.gradcheck(lambda x, y: ot_flow.ops.lse(x, y, None, 1.3), (x, y))
    hm = h.detach().clone()
    hm[::4] = float("-inf")  # dropped columns get zero gradient, never NaN
    hm.requires_grad_(True)
    out = ot_flow.ops.lse(x, y, hm, 0.7).sum()
    gx, gy, gh = torch.autograd.grad(out, (x, y, hm))
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all() and (gh[::4] == 0).all()


def test_lse_opcheck_with_grad():
    x, y, h = random_problem(9, 40, 3, torch.float64)
    args = (x.requires_grad_(), y.requires_grad_(), h.requires_grad_(), 0.5)
    torch.library.opcheck(torch.ops.ot_flow.lse.default, args)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m,d,k", [(1, 1, 1, None), (7, 100_003, 3, 5), (129, 4099, 64, None), (5000, 13, 2, 70), (300, 517, 300, 2)])
def test_cuda_matches_cpu(n, m, d, k, dtype):
    x, y, h = random_problem(n, m, d, dtype)
    h[::7] = float("-inf")
    values = None if k is None else torch.randn(m, k, dtype=dtype)
    ref_out, ref_lse = ot_flow.ops.barycentric(x.double(), y.double(), h.double(), 0.5, None if values is None else values.double())
    out, lse = ot_flow.ops.barycentric(x.cuda(), y.cuda(), h.cuda(), 0.5, None if values is None else values.cuda())
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.cpu().double(), ref_out, **tol)
    torch.testing.assert_close(lse.cpu().double(), ref_lse, **tol)


@pytest.mark.cuda
def test_cuda_lse_gradients_match_cpu():
    x, y, h = random_problem(300, 500, 8, torch.float64)
    grads = []
    for device in ("cpu", "cuda"):
        # Leaf copies: after the CPU pass x, y, h require grad themselves, and a plain .to()
        # would make the CUDA copies non-leaves whose .grad stays None.
        xs, ys, hs = (t.detach().to(device).requires_grad_() for t in (x, y, h))
        ot_flow.ops.lse(xs, ys, hs, 0.4).square().sum().backward()
        grads.append([t.grad.cpu() for t in (xs, ys, hs)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_lse_backward_on_a_problem_split_over_threads():
    # Large enough that the tiles run on several worker threads, inputs requiring grad.
    x, y, h = random_problem(2000, 3000, 5, torch.float32)
    x.requires_grad_()
    ot_flow.ops.lse(x, y, h, 0.5).sum().backward()
    expected = 0.5 * ot_flow.ops.barycentric(x.detach(), y, h, 0.5)[0]
    torch.testing.assert_close(x.grad, expected)
