import pytest
import torch

import ot_flow
from test_lse import SIZES, TOL

DENSE_SIZES = [(n, m) for n in SIZES for m in SIZES if n * m <= 4099 * 1000]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m", DENSE_SIZES)
@pytest.mark.parametrize("dim", [0, 1])
def test_matches_dense_reference(n, m, dim, dtype):
    g = torch.Generator().manual_seed(n * 31 + m + dim)
    dots = 3 * torch.randn(n, m, generator=g, dtype=dtype)
    h = torch.randn(dots.shape[dim], generator=g, dtype=dtype)
    out = ot_flow.ops.lse_dense(dots, h, 0.7, dim)
    logits = 0.7 * dots.double() + (h.double() if dim == 1 else h.double()[:, None])
    torch.testing.assert_close(out.double(), torch.logsumexp(logits, dim=dim), **TOL[dtype])


def test_negative_infinity_bias_and_non_contiguous():
    dots = torch.randn(300, 700, dtype=torch.float64).T  # (700, 300), column-major
    h0 = torch.randn(700, dtype=torch.float64)
    h0[::3] = float("-inf")
    h0[:40] = float("-inf")  # the first row blocks carry no mass at all
    out = ot_flow.ops.lse_dense(dots, h0, 2.0, 0)
    torch.testing.assert_close(out, torch.logsumexp(2.0 * dots + h0[:, None], dim=0))
    h0[:] = float("-inf")
    assert torch.isneginf(ot_flow.ops.lse_dense(dots, h0, 2.0, 0)).all()


def test_same_as_streaming_lse_and_opcheck():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(500, 20, generator=g), torch.randn(800, 20, generator=g)
    h = torch.randn(800, generator=g)
    torch.testing.assert_close(ot_flow.ops.lse_dense(x @ y.T, h, 0.3, 1), ot_flow.ops.lse(x, y, h, 0.3))
    torch.library.opcheck(torch.ops.ot_flow.lse_dense.default, (x @ y.T, h, 0.3, 1))
    torch.library.opcheck(torch.ops.ot_flow.lse_dense.default, (x @ y.T, torch.randn(500), 0.3, 0))


def test_bad_input():
    dots, h = torch.randn(4, 6), torch.randn(6)
    with pytest.raises(ValueError, match="argument 'dim' must be 0 or 1"):
        ot_flow.ops.lse_dense(dots, h, 1.0, 2)
    with pytest.raises(ValueError, match="argument 'h' must be a 1-D tensor of length 4"):
        ot_flow.ops.lse_dense(dots, h, 1.0, 0)
    with pytest.raises(ValueError, match="argument 'dots' must be float32 or float64"):
        ot_flow.ops.lse_dense(dots.long(), h.long(), 1.0, 1)
    with pytest.raises(ValueError, match="argument 'dots' contains NaN"):
        ot_flow.ops.lse_dense(dots.index_fill(1, torch.tensor([2]), float("nan")), h, 1.0, 1)
    with pytest.raises(ValueError, match="argument 'dots' is empty"):
        ot_flow.ops.lse_dense(dots[:0], h, 1.0, 1)


def test_softmin_is_the_sinkhorn_update():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(50, 3, generator=g, dtype=torch.float64), torch.randn(70, 3, generator=g, dtype=torch.float64)
    pot = torch.randn(70, generator=g, dtype=torch.float64)
    log_w = torch.log_softmax(torch.randn(70, generator=g, dtype=torch.float64), 0)
    out = ot_flow.ops.softmin(x, y, pot, 0.4, log_w)
    cost = -(x @ y.T)
    expected = -0.4 * torch.logsumexp((pot[None, :] - cost) / 0.4 + log_w[None, :], dim=1)
    torch.testing.assert_close(out, expected)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ot_flow.ops.softmin(x, y, pot, 0.4, log_w), (x,))
    compiled = torch.compile(lambda x: ot_flow.ops.softmin(x, y, pot, 0.4), fullgraph=True)
    torch.testing.assert_close(compiled(x.detach()), ot_flow.ops.softmin(x.detach(), y, pot, 0.4))
    with pytest.raises(ValueError, match="ot_flow.softmin: argument 'eps'"):
        ot_flow.ops.softmin(x, y, pot, 0.0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m", [(1, 1), (7, 100_003), (4099, 1000), (100_003, 7)])
@pytest.mark.parametrize("dim", [0, 1])
def test_cuda_matches_cpu(n, m, dim, dtype):
    g = torch.Generator().manual_seed(n + m)
    dots = 3 * torch.randn(n, m, generator=g, dtype=dtype)
    h = torch.randn(dots.shape[dim], generator=g, dtype=dtype)
    h[1::4] = float("-inf")
    cpu = ot_flow.ops.lse_dense(dots, h, 0.7, dim)
    gpu = ot_flow.ops.lse_dense(dots.cuda(), h.cuda(), 0.7, dim)
    torch.testing.assert_close(gpu.cpu(), cpu, **TOL[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("dim", [0, 1])
def test_cuda_batched_matches_cpu_and_its_2d_calls(dim):
    g = torch.Generator().manual_seed(11 + dim)
    dots = 3 * torch.randn(3, 257, 1031, generator=g)
    h = torch.randn(3, dots.shape[1 + dim], generator=g)
    h[1, 1::4] = float("-inf")
    scales = [0.3, 0.7, 1.9]
    gpu = ot_flow.ops.lse_dense(dots.cuda(), h.cuda(), scales, dim, shift=torch.zeros(3, dots.shape[2 - dim]).cuda())
    torch.testing.assert_close(gpu.cpu(), ot_flow.ops.lse_dense(dots, h, scales, dim), **TOL[torch.float32])
    for k in range(3):  # the batch is a loop of the 2-D launches: the same kernels per problem
        assert torch.equal(gpu[k], ot_flow.ops.lse_dense(dots[k].cuda(), h[k].cuda(), scales[k], dim))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [0, 1])
def test_shift_hint_changes_nothing(dim, dtype):
    g = torch.Generator().manual_seed(dim + 5)
    dots = 4 * torch.randn(900, 2500, generator=g, dtype=dtype)
    h = torch.randn(dots.shape[dim], generator=g, dtype=dtype)
    h[3::7] = float("-inf")
    exact = ot_flow.ops.lse_dense(dots, h, 0.8, dim)
    # Good guesses take the one-pass route, bad ones (overflow, underflow) fall back.
    for offset in (0.0, 0.5, -30.0, 45.0, 500.0, -500.0):
        hinted = ot_flow.ops.lse_dense(dots, h, 0.8, dim, shift=exact + offset)
        torch.testing.assert_close(hinted, exact, **TOL[dtype])
    mixed = exact + torch.where(torch.rand(exact.shape, generator=g) < 0.5, 0.0, 300.0).to(dtype)
    torch.testing.assert_close(ot_flow.ops.lse_dense(dots, h, 0.8, dim, shift=mixed), exact, **TOL[dtype])
    with pytest.raises(ValueError, match="argument 'shift' must be a 1-D tensor"):
        ot_flow.ops.lse_dense(dots, h, 0.8, dim, shift=exact[:-1])
    with pytest.raises(ValueError, match="argument 'shift' contains NaN"):
        ot_flow.ops.lse_dense(dots, h, 0.8, dim, shift=torch.full_like(exact, float("nan")))


def test_columns_same_bits_for_any_thread_count():
    g = torch.Generator().manual_seed(9)
    dots = torch.randn(700, 5000, generator=g)
    h = torch.randn(700, generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):  # strip widths 2048, 2048 and 1728 columns
            torch.set_num_threads(t)
            results.append(ot_flow.ops.lse_dense(dots, h, 0.5, 0))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


# --- batched: dots (B, n, m), one scale per problem (the batched Sinkhorn's cached path) --------

@pytest.mark.parametrize("batch,n,m", [(1, 1, 1), (3, 37, 1031), (2, 301, 5), (4, 64, 2500)])
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_each_problem_bitwise_equals_the_2d_call(batch, n, m, dim, dtype):
    """Same bits as the 2-D call per problem, with and without the shift hint (a good hint takes
    the one-pass route, a bad one falls back), against float64 logsumexp within tolerance."""
    g = torch.Generator().manual_seed(batch * 7 + n + dim)
    dots = 4 * torch.randn(batch, n, m, generator=g, dtype=dtype)
    h = torch.randn(batch, dots.shape[1 + dim], generator=g, dtype=dtype)
    h[0, 1::3] = float("-inf")  # keeps every line some mass, so the hint is finite
    scales = [0.4 + 0.3 * k for k in range(batch)]
    out = ot_flow.ops.lse_dense(dots, h, scales, dim)
    assert out.shape == (batch, dots.shape[2 - dim])
    hint = out + torch.where(torch.rand(out.shape, generator=g) < 0.5, 0.25, 400.0).to(dtype)
    hinted = ot_flow.ops.lse_dense(dots, h, scales, dim, shift=hint)
    for k in range(batch):
        dk, hk = dots[k].clone(), h[k].clone()
        assert torch.equal(out[k], ot_flow.ops.lse_dense(dk, hk, scales[k], dim))
        assert torch.equal(hinted[k], ot_flow.ops.lse_dense(dk, hk, scales[k], dim, shift=hint[k].clone()))
        bias = h[k].double()[:, None] if dim == 0 else h[k].double()
        reference = torch.logsumexp(scales[k] * dots[k].double() + bias, dim=dim)
        torch.testing.assert_close(out[k].double(), reference, **TOL[dtype])


def test_batched_one_scale_non_contiguous_gradients_and_opcheck():
    g = torch.Generator().manual_seed(3)
    dots = torch.randn(3, 40, 30, generator=g, dtype=torch.float64).transpose(1, 2)  # (3, 30, 40), strided
    h = torch.randn(40, 3, generator=g, dtype=torch.float64).T
    out = ot_flow.ops.lse_dense(dots, h, 0.6, 1)
    for k in range(3):
        assert torch.equal(out[k], ot_flow.ops.lse_dense(dots[k].contiguous(), h[k].contiguous(), 0.6, 1))
    d = torch.randn(2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    for dim in (0, 1):
        hd = torch.randn(2, d.shape[1 + dim], generator=g, dtype=torch.float64, requires_grad=True)
        torch.autograd.gradcheck(lambda a, b: ot_flow.ops.lse_dense(a, b, [0.5, 2.0], dim), (d, hd))
        torch.autograd.gradgradcheck(lambda a, b: ot_flow.ops.lse_dense(a, b, [0.5, 2.0], dim), (d, hd))
        ds, hs = d.detach().float(), hd.detach().float()
        shift = ot_flow.ops.lse_dense(ds, hs, [0.5, 2.0], dim)
        torch.library.opcheck(torch.ops.ot_flow.lse_dense.default, (ds, hs, 1.0, dim, shift, True, [0.5, 2.0]))
        torch.library.opcheck(torch.ops.ot_flow.lse_dense.default, (ds, hs, 0.5, dim))


def test_batched_bad_input_names_the_argument():
    dots, h = torch.randn(3, 4, 6), torch.randn(3, 6)
    cases = [
        (lambda: ot_flow.ops.lse_dense(dots, h[:2], 1.0, 1), "argument 'h'"),
        (lambda: ot_flow.ops.lse_dense(dots, h[0], 1.0, 1), "argument 'h'"),
        (lambda: ot_flow.ops.lse_dense(dots, h, [1.0, 2.0], 1), "argument 'scales' must hold one value per problem"),
        (lambda: ot_flow.ops.lse_dense(dots, h, [1.0, float("inf"), 2.0], 1), "argument 'scales' must be finite"),
        (lambda: ot_flow.ops.lse_dense(dots[0], h[0], [1.0], 1), "argument 'scale' holds 1 values"),
        (lambda: torch.ops.ot_flow.lse_dense.default(dots[0], h[0], 1.0, 1, None, True, [1.0]),
         "argument 'scales' is for batched"),
        (lambda: ot_flow.ops.lse_dense(dots, h, 1.0, 1, shift=torch.zeros(3, 5)), "argument 'shift' must be a"),
        (lambda: ot_flow.ops.lse_dense(dots, h, 1.0, 1, shift=torch.zeros(4)), "argument 'shift' must be a"),
        (lambda: ot_flow.ops.lse_dense(dots[None], h, 1.0, 1), "argument 'dots' must be a 2-D tensor"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
