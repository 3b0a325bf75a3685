import pytest
import torch

import ot_flow
from problems import random_problem

SIZES = [1, 7, 513, 2053]
DIMS = [1, 3, 64]


def reference(x, y, bias, k):
    """Brute force in float64: values descending, ties to the lowest index (a stable sort)."""
    scores = x.double().cpu() @ y.double().cpu().T
    if bias is not None:
        scores = scores + bias.double().cpu()
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    return scores.gather(1, order), order, scores


def assert_matches(values, indices, x, y, bias, k, exact=False):
    """`exact`: the scores are exact in floating point (small integers), so ties are real ties and
    the indices must equal the reference's bit for bit. Otherwise our GEMM tiles and the reference's
    dense product round differently (by another BLAS path on another CPU, too): an index may differ
    from the reference's only where two scores are within that rounding, float32 or float64."""
    ref_values, ref_indices, scores = reference(x, y, bias, k)
    assert values.shape == indices.shape == (x.shape[0], k) and indices.dtype == torch.long
    tol = dict(rtol=1e-12, atol=1e-12) if values.dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    if exact:
        assert torch.equal(indices.cpu(), ref_indices)
    else:
        chosen = scores.gather(1, indices.cpu())
        torch.testing.assert_close(chosen, ref_values, **tol)
        assert (indices.cpu() == ref_indices).float().mean() > 0.99
    torch.testing.assert_close(values.double().cpu(), ref_values, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("n", SIZES)
def test_top1_matches_brute_force(n, m, d, dtype):
    x, y, bias = random_problem(n, m, d, dtype)
    values, indices = ot_flow.ops.mips(x, y, bias)
    assert values.dtype == dtype
    assert_matches(values, indices, x, y, bias, 1)


@pytest.mark.parametrize("k", [2, 5, 64])
@pytest.mark.parametrize("n,m,d", [(1, 64, 3), (130, 700, 16), (37, 2053, 5)])
def test_top_k_matches_brute_force(n, m, d, k):
    x, y, bias = random_problem(n, m, d, torch.float64)
    values, indices = ot_flow.ops.mips(x, y, bias, k)
    assert_matches(values, indices, x, y, bias, k)


def test_k_equal_to_m_sorts_every_column():
    x, y, bias = random_problem(9, 13, 4, torch.float64)
    values, indices = ot_flow.ops.mips(x, y, bias, 13)
    assert_matches(values, indices, x, y, bias, 13)


@pytest.mark.parametrize("k", [1, 4])
def test_ties_go_to_the_lowest_index(k):
    # Integer coordinates make every score exact, so ties are real ties.
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, (200, 3), generator=gen).double()
    y = torch.randint(-2, 3, (1500, 3), generator=gen).double()  # 125 distinct points, many repeats
    bias = torch.randint(-1, 2, (1500,), generator=gen).double()
    values, indices = ot_flow.ops.mips(x, y, bias, k)
    assert_matches(values, indices, x, y, bias, k, exact=True)
    values32, indices32 = ot_flow.ops.mips(x.float(), y.float(), bias.float(), k)
    assert torch.equal(indices32, indices)
    # Without a bias: the inputs of the CUDA test that crashed (issue #16), ties everywhere.
    values, indices = ot_flow.ops.mips(x.float(), y.float(), None, k)
    assert_matches(values, indices, x, y, None, k, exact=True)
    torch.library.opcheck(torch.ops.ot_flow.mips.default, (x.float(), y.float(), None, k))


def test_without_bias_non_contiguous_and_thread_count():
    x, y, bias = random_problem(300, 5000, 17, torch.float64)
    xt = x.T.contiguous().T
    ys = torch.stack([y, y], dim=2)[:, :, 0]
    values, indices = ot_flow.ops.mips(xt, ys, None, 3)
    assert_matches(values, indices, x, y, None, 3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ot_flow.ops.mips(x.float(), y.float(), bias.float(), 2)
        torch.set_num_threads(max(2, threads))
        many = ot_flow.ops.mips(x.float(), y.float(), bias.float(), 2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_columns_without_mass_are_never_returned():
    x, y, bias = random_problem(50, 40, 3, torch.float64)
    bias[1:] = float("-inf")
    values, indices = ot_flow.ops.mips(x, y, bias, 3)
    assert (indices[:, 0] == 0).all() and (indices[:, 1:] == -1).all()
    assert torch.isneginf(values[:, 1:]).all()


def test_opcheck_fake_and_compile():
    for n, m, d, k in [(1, 1, 1, 1), (7, 600, 3, 4), (130, 20, 64, 1)]:
        x, y, bias = random_problem(n, m, d, torch.float32)
        torch.library.opcheck(torch.ops.ot_flow.mips.default, (x, y, bias, k))
        torch.library.opcheck(torch.ops.ot_flow.mips.default, (x, y, None, k))

    def nearest(x, y, bias):
        return y[ot_flow.ops.mips(x, y, bias)[1][:, 0]]

    compiled = torch.compile(nearest, fullgraph=True)
    for n in (64, 200):
        x, y, bias = random_problem(n, 300, 8, torch.float32)
        torch.testing.assert_close(compiled(x, y, bias), nearest(x, y, bias))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 5, 64])
@pytest.mark.parametrize("n,m,d", [(1, 64, 1), (7, 513, 3), (1000, 2053, 64), (64, 100_003, 16)])
def test_cuda_matches_brute_force(n, m, d, k, dtype):
    x, y, bias = random_problem(n, m, d, dtype, device="cuda", seed=n + m + d)
    values, indices = ot_flow.ops.mips(x, y, bias, k)
    assert values.device.type == "cuda" and values.dtype == dtype
    assert_matches(values, indices, x, y, bias, k)


@pytest.mark.cuda
def test_cuda_ties_opcheck_and_limits():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, (200, 3), generator=gen).float().cuda()
    y = torch.randint(-2, 3, (1500, 3), generator=gen).float().cuda()
    for k in (1, 4):
        values, indices = ot_flow.ops.mips(x, y, None, k)
        assert torch.equal(indices.cpu(), ot_flow.ops.mips(x.cpu(), y.cpu(), None, k)[1])
    torch.library.opcheck(torch.ops.ot_flow.mips.default, (x, y, None, 3))
    with pytest.raises(ValueError, match="above 64"):
        ot_flow.ops.mips(x, y, None, 65)
