"""ot_flow.ops.softmin_dense: the cached Sinkhorn half-step, against float64 references."""

import pytest
import torch

import ot_flow
from test_lse import TOL

SIZES = [(1, 1), (7, 1000), (1031, 37), (300, 301)]


def reference(dots, g, eps, dim, log_weights=None):
    """-eps logsumexp((g + dots) / eps + log_w) along the other axis of dots, in float64."""
    d, pot = dots.double(), g.double()
    lw = torch.zeros_like(pot) if log_weights is None else log_weights.double()
    if dim == 1:
        return -eps * torch.logsumexp((d + pot) / eps + lw, dim=1)
    return -eps * torch.logsumexp((d + pot[:, None]) / eps + lw[:, None], dim=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m", SIZES)
@pytest.mark.parametrize("dim", [0, 1])
def test_matches_float64_reference(n, m, dim, dtype):
    gen = torch.Generator().manual_seed(n * 7 + m + dim)
    dots = torch.randn(n, m, generator=gen, dtype=dtype)
    length = dots.shape[dim]  # g runs along the reduced axis
    g = torch.randn(length, generator=gen, dtype=dtype)
    log_w = torch.log_softmax(torch.randn(length, generator=gen, dtype=dtype), 0)
    if length > 2:
        log_w[1] = float("-inf")  # a point without mass drops out
    current = torch.randn(dots.shape[1 - dim], generator=gen, dtype=dtype)  # any guess: only a hint
    for eps in (0.05, 1.0, 40.0):
        out = ot_flow.ops.softmin_dense(dots, g, eps, dim, log_w, current)
        assert out.dtype == dtype and out.shape == (dots.shape[1 - dim],)
        want = reference(dots, g, eps, dim, log_w)
        torch.testing.assert_close(out.double(), want, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * (1 + eps))
        unhinted = ot_flow.ops.softmin_dense(dots, g, eps, dim, log_w)  # the hint changes only the rounding
        torch.testing.assert_close(out, unhinted, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * (1 + eps))


def test_non_contiguous_and_without_weights():
    gen = torch.Generator().manual_seed(3)
    dots = torch.randn(50, 90, generator=gen, dtype=torch.float64).T  # (90, 50), column-major
    g = torch.randn(180, generator=gen, dtype=torch.float64)[::2]  # strided, length 90
    out = ot_flow.ops.softmin_dense(dots, g, 0.3, 0)
    torch.testing.assert_close(out, reference(dots, g, 0.3, 0))


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_each_problem_bitwise_equals_the_2d_call(dim, dtype):
    gen = torch.Generator().manual_seed(11 + dim)
    dots = torch.randn(3, 37, 1031, generator=gen, dtype=dtype)
    length, out_len = dots.shape[1 + dim], dots.shape[2 - dim]
    g = torch.randn(3, length, generator=gen, dtype=dtype)
    log_w = torch.log_softmax(torch.randn(3, length, generator=gen, dtype=dtype), 1)
    current = torch.randn(3, out_len, generator=gen, dtype=dtype)
    eps = [0.1, 0.7, 3.0]
    out = ot_flow.ops.softmin_dense(dots, g, eps, dim, log_w, current)
    for k in range(3):
        assert torch.equal(out[k], ot_flow.ops.softmin_dense(dots[k], g[k], eps[k], dim, log_w[k], current[k]))
    one = ot_flow.ops.softmin_dense(dots, g, 0.5, dim, log_w)  # one eps for every problem
    assert torch.equal(one[2], ot_flow.ops.softmin_dense(dots[2], g[2], 0.5, dim, log_w[2]))


@pytest.mark.parametrize("dim", [0, 1])
def test_gradients_and_opcheck(dim):
    gen = torch.Generator().manual_seed(5)
    dots = torch.randn(6, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    length = dots.shape[dim]
    g = torch.randn(length, generator=gen, dtype=torch.float64, requires_grad=True)
    log_w = torch.log_softmax(torch.randn(length, generator=gen, dtype=torch.float64), 0).requires_grad_()
    torch.autograd.gradcheck(lambda d, p, w: ot_flow.ops.softmin_dense(d, p, 0.7, dim, w), (dots, g, log_w))
    torch.autograd.gradgradcheck(lambda d, p: ot_flow.ops.softmin_dense(d, p, 0.7, dim), (dots, g))
    batched = torch.randn(2, 6, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    pots = torch.randn(2, length, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda d, p: ot_flow.ops.softmin_dense(d, p, [0.4, 2.0], dim), (batched, pots))
    current = torch.randn(dots.shape[1 - dim], dtype=torch.float64)
    op = torch.ops.ot_flow.softmin_dense.default
    torch.library.opcheck(op, (dots.detach(), g.detach(), 0.7, dim, log_w.detach(), current))
    torch.library.opcheck(op, (batched.detach(), pots.detach(), 1.0, dim), dict(epsilons=[0.4, 2.0]))


def test_bad_input_names_the_argument():
    dots, g = torch.randn(4, 6), torch.randn(6)
    with pytest.raises(ValueError, match="argument 'g' must be a 1-D tensor of length 4"):
        ot_flow.ops.softmin_dense(dots, g, 1.0, 0)
    with pytest.raises(ValueError, match="argument 'log_weights' must have the points' dtype"):
        ot_flow.ops.softmin_dense(dots, g, 1.0, 1, torch.zeros(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="argument 'current' must be a 1-D tensor of length 4"):
        ot_flow.ops.softmin_dense(dots, g, 1.0, 1, current=torch.zeros(6))
    with pytest.raises(ValueError, match="argument 'current' contains NaN or Inf"):
        ot_flow.ops.softmin_dense(dots, g, 1.0, 1, current=torch.full((4,), float("nan")))
    with pytest.raises(ValueError, match="argument 'g' contains NaN"):
        ot_flow.ops.softmin_dense(dots, g.index_fill(0, torch.tensor([1]), float("nan")), 1.0, 1)
    with pytest.raises(ValueError, match="argument 'eps' must be finite and > 0"):
        ot_flow.ops.softmin_dense(dots, g, 0.0, 1)
    with pytest.raises(ValueError, match="argument 'dim' must be 0 or 1"):
        ot_flow.ops.softmin_dense(dots, g, 1.0, 2)
    with pytest.raises(ValueError, match="argument 'eps' holds 2 values"):
        ot_flow.ops.softmin_dense(dots, g, [1.0, 2.0], 1)
    with pytest.raises(ValueError, match="argument 'epsilons' must hold one value per problem"):
        ot_flow.ops.softmin_dense(dots[None].expand(2, 4, 6), g[None].expand(2, 6), [1.0, 2.0, 3.0], 1)
    with pytest.raises(ValueError, match="argument 'dots' must be float32 or float64"):
        ot_flow.ops.softmin_dense(dots.half(), g.half(), 1.0, 1)
    with pytest.raises(ValueError, match="argument 'g' is on meta"):
        ot_flow.ops.softmin_dense(dots, g.to("meta"), 1.0, 1)


@pytest.mark.cuda
@pytest.mark.parametrize("dim", [0, 1])
def test_cuda_matches_cpu(dim):
    gen = torch.Generator().manual_seed(9)
    dots = torch.randn(3, 301, 1031, generator=gen)
    g = torch.randn(3, dots.shape[1 + dim], generator=gen)
    log_w = torch.log_softmax(torch.randn(3, dots.shape[1 + dim], generator=gen), 1)
    current = torch.randn(3, dots.shape[2 - dim], generator=gen)
    eps = [0.1, 0.7, 3.0]
    cpu = ot_flow.ops.softmin_dense(dots, g, eps, dim, log_w, current)
    gpu = ot_flow.ops.softmin_dense(dots.cuda(), g.cuda(), eps, dim, log_w.cuda(), current.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=2e-5, atol=2e-5)
    one = ot_flow.ops.softmin_dense(dots[1].cuda(), g[1].cuda(), 0.7, dim, log_w[1].cuda())
    torch.testing.assert_close(one.cpu(), cpu[1], rtol=2e-5, atol=2e-5)
