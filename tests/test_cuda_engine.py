"""The CUDA tensor-core engine (csrc/ops/cuda/engine/, opt-in OT_FLOW_CUDA_ENGINE=tensor_cores)
against float64 references, in every precision mode, on awkward sizes.

Error bounds (|error| of a logit scale * <x_i, y_j> + h_j, which is what lse and the weights
see): "highest" (split TF32) is float32-accurate, within ~2e-6 of the row's largest |logit|;
"tf32" rounds each operand to 11 significant bits, so |error| <= 2^-10 scale |x_i| |y_j|;
"bf16" to 8 bits, |error| <= 2^-7 scale |x_i| |y_j|. The tests check lse against these bounds
and the barycentric means against the float64 means within the same relative error of the
values' scale.
"""

import pytest
import torch

import ot_flow
from problems import random_problem

pytestmark = pytest.mark.cuda

SIZES = [(1, 1, 1), (7, 13, 3), (64, 64, 16), (65, 129, 17), (300, 1000, 64), (97, 4099, 100), (5, 20_011, 8),
         (130, 300, 1000)]
MODES = ["highest", "tf32", "bf16"]
# Relative to scale * max|x_i| * max|y_j| (tf32, bf16) or to the largest |logit| (highest).
BOUND = {"highest": 2e-6, "tf32": 2.0**-10, "bf16": 2.0**-7}


@pytest.fixture(autouse=True)
def tensor_cores(monkeypatch):
    monkeypatch.setenv("OT_FLOW_CUDA_ENGINE", "tensor_cores")


def logit_scale(x, y, h, scale, precision):
    """The size an error in row i's logits is measured against (see the module docstring)."""
    x64, y64 = x.double().cpu(), y.double().cpu()
    if precision == "highest":
        return (scale * x64 @ y64.T + h.double().cpu()).abs().amax(1).clamp_min(1.0)
    return scale * x64.norm(dim=1) * y64.norm(dim=1).max()


def reference(x, y, h, scale, values):
    logits = scale * (x.double().cpu() @ y.double().cpu().T) + h.double().cpu()
    return torch.logsumexp(logits, 1), torch.softmax(logits, 1) @ values.double().cpu()


@pytest.mark.parametrize("precision", MODES)
@pytest.mark.parametrize("n,m,d", SIZES)
def test_lse_within_the_modes_bound(n, m, d, precision):
    x, y, h = random_problem(n, m, d, torch.float32, device="cuda")
    scale = 1.0 / d**0.5
    out = ot_flow.ops.lse(x, y, h, scale, precision=precision)
    assert out.shape == (n,) and out.dtype == torch.float32 and out.device.type == "cuda"
    lse, _ = reference(x, y, h, scale, y)
    err = (out.double().cpu() - lse).abs()
    assert (err <= BOUND[precision] * logit_scale(x, y, h, scale, precision) + 1e-6).all(), err.max()


@pytest.mark.parametrize("precision", MODES)
@pytest.mark.parametrize("n,m,d", SIZES)
def test_barycentric_in_one_pass_within_the_modes_bound(n, m, d, precision):
    x, y, h = random_problem(n, m, d, torch.float32, device="cuda")
    values = torch.randn(m, d + 5, device="cuda")  # k = d + 5: value blocks of 16 and 64, partial ones
    scale = 1.0 / d**0.5
    mean, lse = ot_flow.ops.barycentric(x, y, h, scale, values, precision=precision)
    ref_lse, ref_mean = reference(x, y, h, scale, values)
    rows = logit_scale(x, y, h, scale, precision)
    assert (lse.double().cpu() - ref_lse).abs().le(BOUND[precision] * rows + 1e-6).all()
    # A logit error e moves a weight by about e relative: the mean moves by <= 2 e max|v|.
    vmax = values.abs().max().item()
    err = (mean.double().cpu() - ref_mean).abs().amax(1)
    assert (err <= 4 * BOUND[precision] * rows * vmax + 1e-5 * vmax).all(), err.max()


def test_barycentric_over_one_long_chunk_of_columns():
    # 65,536 rows fill the GPU with row blocks alone, so every block streams all 65,536 columns
    # (1,024 tiles) into one weighted sum; values of mean 1 make an error that grows with the
    # tiles show: MMAs into the running sum would truncate an ulp of it about 24 times a tile
    # (1e-3 and more in all), where each tile summed from zero and added round-to-nearest stays
    # within a few ulps (a model of the rounding: tests/cpp/test_engine_error_bound.cpp).
    g = torch.Generator(device="cuda").manual_seed(5)
    n = m = 65_536
    x, y = torch.randn(n, 4, device="cuda", generator=g), torch.randn(m, 4, device="cuda", generator=g)
    h = torch.randn(m, device="cuda", generator=g)
    values = 1.0 + 0.1 * torch.randn(m, 8, device="cuda", generator=g)
    mean, lse = ot_flow.ops.barycentric(x, y, h, 0.5, values, precision="highest")
    checked = 64
    ref_lse, ref_mean = reference(x[:checked], y, h, 0.5, values)
    torch.testing.assert_close(mean[:checked].double().cpu(), ref_mean, rtol=2e-5, atol=0)
    torch.testing.assert_close(lse[:checked].double().cpu(), ref_lse, rtol=2e-6, atol=1e-6)


def test_large_scale_dropped_columns_and_empty_rows():
    x, y, h = random_problem(70, 3001, 5, torch.float32, device="cuda")
    h[::3] = float("-inf")
    out = ot_flow.ops.lse(x, y, h, 40.0)
    lse, _ = reference(x, y, h, 40.0, y)
    torch.testing.assert_close(out.double().cpu(), lse, rtol=2e-6, atol=2e-5)
    h[:] = float("-inf")
    assert torch.isneginf(ot_flow.ops.lse(x, y, h, 1.0)).all()
    mean, lse = ot_flow.ops.barycentric(x, y, h, 1.0)
    assert torch.isneginf(lse).all() and (mean == 0).all()


def test_non_contiguous_half_inputs_and_side_stream():
    x, y, h = random_problem(300, 700, 20, torch.float32, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = ot_flow.ops.lse(x.T.contiguous().T, y[:, :], h, 0.5)
        half = ot_flow.ops.lse(x.half(), y.half(), h.half(), 0.5)
    stream.synchronize()
    lse, _ = reference(x, y, h, 0.5, y)
    torch.testing.assert_close(out.double().cpu(), lse, rtol=2e-6, atol=2e-6)
    assert half.dtype == torch.float32
    ref_half, _ = reference(x.half(), y.half(), h.half(), 0.5, y)
    torch.testing.assert_close(half.double().cpu(), ref_half, rtol=2e-6, atol=2e-6)


def test_agrees_with_the_fma_kernels_and_float64_is_exact(monkeypatch):
    x, y, h = random_problem(513, 2049, 33, torch.float32, device="cuda")
    engine = ot_flow.ops.lse(x, y, h, 0.3)
    monkeypatch.setenv("OT_FLOW_CUDA_ENGINE", "fma")
    fma = ot_flow.ops.lse(x, y, h, 0.3)
    torch.testing.assert_close(engine, fma, rtol=2e-6, atol=2e-6)
    monkeypatch.setenv("OT_FLOW_CUDA_ENGINE", "tensor_cores")
    x64, y64, h64 = x.double(), y.double(), h.double()
    lse, _ = reference(x64, y64, h64, 0.3, y64)
    torch.testing.assert_close(ot_flow.ops.lse(x64, y64, h64, 0.3, precision="bf16").cpu(), lse,
                               rtol=1e-12, atol=1e-12)


def test_sinkhorn_on_the_engine_matches_the_cpu(d=8):
    x, y, _ = random_problem(1000, 1200, d, torch.float32)
    cpu = ot_flow.sinkhorn(x, y, eps=0.1, cost_cache=False)
    gpu = ot_flow.sinkhorn(x.cuda(), y.cuda(), eps=0.1, cost_cache=False)
    assert gpu.path == "streamed" and gpu.converged
    assert abs(gpu.n_iter - cpu.n_iter) <= 10  # the GPU reads its error back every few iterations
    torch.testing.assert_close(gpu.transport_cost().cpu(), cpu.transport_cost(), rtol=1e-4, atol=1e-5)


def test_opcheck_and_bad_switch(monkeypatch):
    x, y, h = random_problem(9, 70, 5, torch.float32, device="cuda")
    for precision in MODES:
        torch.library.opcheck(torch.ops.ot_flow.lse.default, (x, y, h, 0.5, None, precision))
        torch.library.opcheck(torch.ops.ot_flow.barycentric.default, (x, y, h, 0.5, None, None, precision))
    monkeypatch.setenv("OT_FLOW_CUDA_ENGINE", "tensorcores")
    with pytest.raises(ValueError, match="OT_FLOW_CUDA_ENGINE"):
        ot_flow.ops.lse(x, y, h, 0.5)


@pytest.mark.parametrize("precision", MODES)
def test_gumbel_draws_match_the_cpu_on_exact_inputs(precision):
    # Small integers: every mode forms the dot products exactly (bf16 holds integers up to 256),
    # so the draws are the CPU's bit for bit (same counter-based noise), across split columns.
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-4, 5, (67, 5), generator=g).float()
    y = torch.randint(-4, 5, (20_011, 5), generator=g).float()
    h = torch.randint(-3, 4, (20_011,), generator=g).float()
    cpu_index, cpu_value = ot_flow.ops.gumbel_argmax(x, y, h, 0.5, seed=11, offset=2, row_offset=5,
                                                     return_value=True)
    index, value = ot_flow.ops.gumbel_argmax(x.cuda(), y.cuda(), h.cuda(), 0.5, seed=11, offset=2, row_offset=5,
                                             return_value=True, precision=precision)
    assert torch.equal(index.cpu(), cpu_index)
    torch.testing.assert_close(value.cpu(), cpu_value, rtol=0, atol=1e-12)


def test_gumbel_frequencies_follow_the_softmax():
    # One row, 5 columns, 20,000 rows of the same point: each draw is an independent sample.
    x = torch.full((20_000, 2), 0.5, device="cuda")
    y = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [-1.0, 1.0], [3.0, -1.0]], device="cuda")
    h = torch.tensor([0.0, -0.5, 0.2, 1.0, -2.0], device="cuda")
    index = ot_flow.ops.gumbel_argmax(x, y, h, 1.3, seed=5)
    counts = torch.bincount(index.cpu(), minlength=5).double()
    p = torch.softmax(1.3 * (x[0] @ y.T) + h, 0).double().cpu()
    chi2 = ((counts - 20_000 * p) ** 2 / (20_000 * p)).sum().item()
    assert chi2 < 25.0  # 4 degrees of freedom: P(chi2 > 25) ~ 5e-5


# Batched problems (B, n, m, d): one launch with the batch as grid z. B = 1; B = 3 with prime n and
# m, m beyond a 64-column tile; few rows and many columns (split columns, chunk plans that differ
# from the 2-D calls'); one row, one column.
BATCHED_SIZES = [(1, 67, 4099, 3), (3, 67, 131, 5), (3, 131, 20_011, 17), (3, 5, 1031, 64), (3, 1, 1, 1)]
# How far a batched barycentric may move from the 2-D calls: their column chunks differ, and each
# chunk's weights are rounded to the mode's operand format relative to its own running max.
WEIGHT_ROUNDING = {"highest": 1e-5, "tf32": 2.0**-9, "bf16": 2.0**-6}


def batched_problem(batch, n, m, d, seed, integers=False):
    g = torch.Generator().manual_seed(seed)
    if integers:  # every mode forms these dot products exactly
        x = torch.randint(-4, 5, (batch, n, d), generator=g).float()
        y = torch.randint(-4, 5, (batch, m, d), generator=g).float()
        h = torch.randint(-3, 4, (batch, m), generator=g).float()
    else:
        x = torch.randn(batch, n, d, generator=g)
        y = torch.randn(batch, m, d, generator=g)
        h = torch.randn(batch, m, generator=g)
    h[0, ::5] = float("-inf")
    return x, y, h


@pytest.mark.parametrize("precision", MODES)
@pytest.mark.parametrize("batch,n,m,d", BATCHED_SIZES)
def test_batched_barycentric_is_the_2d_calls(batch, n, m, d, precision):
    x, y, h = (t.cuda() for t in batched_problem(batch, n, m, d, seed=n + m))
    values = torch.randn(batch, m, d + 17, device="cuda")  # k = d + 17: value blocks of 16 and 64
    scales = [0.3 + 0.4 * b for b in range(batch)]
    mean, lse = ot_flow.ops.barycentric(x, y, h, scales, values, precision=precision)
    assert mean.shape == (batch, n, d + 17) and lse.shape == (batch, n)
    tol = WEIGHT_ROUNDING[precision]
    for b in range(batch):
        mean_b, lse_b = ot_flow.ops.barycentric(x[b], y[b], h[b], scales[b], values[b], precision=precision)
        vmax = values[b].abs().max().item()
        torch.testing.assert_close(mean[b], mean_b, rtol=0, atol=4 * tol * vmax)
        torch.testing.assert_close(lse[b], lse_b, rtol=1e-6, atol=2 * tol)


def test_batched_barycentric_past_one_launch():
    # 300 problems > 256 per launch, and k = 20,000 (313 value blocks) leaves room for 209 problems
    # in grid z: three launches, each problem still the 2-D call's.
    x, y, h = (t.cuda() for t in batched_problem(300, 3, 5, 2, seed=1))
    values = torch.randn(300, 5, 20_000, device="cuda")
    scales = [0.5 + 0.01 * b for b in range(300)]
    mean, lse = ot_flow.ops.barycentric(x, y, h, scales, values)
    for b in (0, 208, 209, 255, 256, 299):
        mean_b, lse_b = ot_flow.ops.barycentric(x[b], y[b], h[b], scales[b], values[b])
        torch.testing.assert_close(mean[b], mean_b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lse[b], lse_b, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("precision", MODES)
@pytest.mark.parametrize("batch,n,m,d", BATCHED_SIZES)
def test_batched_gumbel_draws_are_the_2d_draws(batch, n, m, d, precision):
    # Problem b with seed 7 + 3b draws exactly what the 2-D call with that seed draws, whatever
    # the column chunks; on integer inputs also exactly what the CPU draws.
    x, y, h = batched_problem(batch, n, m, d, seed=n * m, integers=True)
    scales = [0.5 + 0.25 * b for b in range(batch)]
    seeds = [7 + 3 * b for b in range(batch)]
    kw = dict(offset=2, row_offset=5, col_offset=3, return_value=True)
    index, value = ot_flow.ops.gumbel_argmax(x.cuda(), y.cuda(), h.cuda(), scales, seed=seeds, precision=precision,
                                             **kw)
    cpu_index, cpu_value = ot_flow.ops.gumbel_argmax(x, y, h, scales, seed=seeds, **kw)
    assert torch.equal(index.cpu(), cpu_index)
    torch.testing.assert_close(value.cpu(), cpu_value, rtol=0, atol=1e-12)
    for b in range(batch):
        index_b, value_b = ot_flow.ops.gumbel_argmax(x[b].cuda(), y[b].cuda(), h[b].cuda(), scales[b], seed=seeds[b],
                                                     precision=precision, **kw)
        assert torch.equal(index[b], index_b) and torch.equal(value[b], value_b)


def test_batched_gumbel_past_one_launch():
    x, y, h = (t.cuda() for t in batched_problem(300, 7, 70, 3, seed=2))
    seeds = list(range(300))
    index, value = ot_flow.ops.gumbel_argmax(x, y, h, 0.7, seed=seeds, return_value=True)
    for b in (0, 255, 256, 299):
        index_b, value_b = ot_flow.ops.gumbel_argmax(x[b], y[b], h[b], 0.7, seed=seeds[b], return_value=True)
        assert torch.equal(index[b], index_b) and torch.equal(value[b], value_b)


def float64_scores(x, y, bias):
    """<x_i, y_j> + bias_j in float64, summed over the coordinates in one order for every (i, j)
    (elementwise products, then additions; no BLAS, whose blocking may sum two duplicated columns
    in different orders and so break their tie)."""
    x, y = x.double().cpu(), y.double().cpu()
    scores = torch.zeros(x.shape[0], y.shape[0], dtype=torch.float64)
    for k in range(x.shape[1]):
        scores += x[:, k, None] * y[None, :, k]
    return scores + (0 if bias is None else bias.double().cpu())


def float64_top_k(x, y, bias, k):
    """The float64 answer: the k best scores per row, ties to the lowest index (a stable
    descending sort keeps tied columns in index order), dropped columns as empty slots (-inf, -1)."""
    values, index = torch.sort(float64_scores(x, y, bias), dim=1, descending=True, stable=True)
    values, index = values[:, :k], index[:, :k]
    return values, torch.where(values == float("-inf"), -1, index)


def adversarial_points(kind, n, m, d, g):
    if kind == "integers":  # exact ties everywhere
        return torch.randint(-3, 4, (n, d), generator=g).float(), torch.randint(-3, 4, (m, d), generator=g).float()
    if kind == "duplicates":  # every column appears three times
        y = torch.randn(m // 3 + 1, d, generator=g).repeat(3, 1)[:m]
        return torch.randn(n, d, generator=g), y
    if kind == "near_ties":  # columns 1e-6 apart along the rows' direction
        base = torch.randn(1, d, generator=g)
        y = base + 1e-6 * torch.randn(m, d, generator=g)
        return base.repeat(n, 1) + 1e-3 * torch.randn(n, d, generator=g), y
    scale = 1e3 if kind == "large" else 1.0
    return scale * torch.randn(n, d, generator=g), scale * torch.randn(m, d, generator=g)


@pytest.mark.parametrize("precision", MODES)
@pytest.mark.parametrize("kind", ["random", "integers", "duplicates", "near_ties", "large"])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (2, 2, 1), (67, 4099, 3), (130, 20_011, 64), (33, 1000, 1000),
                                   (5, 2003, 3072)])
def test_mips_one_pass_is_the_float64_answer(n, m, d, k, kind, precision):
    """k <= 2, one streaming pass against a running bound of each row's k-th score: the float64
    answer in every mode, on data whose lists overflow (integers, duplicates, near ties) or not."""
    k = min(k, m)
    g = torch.Generator().manual_seed(n + m + d)
    x, y = adversarial_points(kind, n, m, d, g)
    bias = torch.randn(m, generator=g) if kind == "random" else None
    if bias is not None:
        bias[::7] = float("-inf")
    values, indices = ot_flow.ops.mips(x.cuda(), y.cuda(), None if bias is None else bias.cuda(), k,
                                       precision=precision)
    best, index = float64_top_k(x, y, bias, k)
    assert torch.equal(indices.cpu(), index)  # the contract: the float64 answer's index
    # Values: the float64 score in float32; the reference sums in another order (1 ulp).
    torch.testing.assert_close(values.cpu().double(), best.float().double(), rtol=2**-23, atol=0)


@pytest.mark.parametrize("k", [1, 2])
def test_mips_one_pass_row_slices_and_overflowing_lists(k):
    """More rows than one slice of the one pass's candidate lists (2^17 / k), rows of zeros (every
    column left ties, so their lists overflow: top-1's row blocks stream a second time, top-2
    rescores all their columns) beside random rows whose lists hold, and a bias that drops
    columns."""
    g = torch.Generator().manual_seed(17)
    x = torch.randn(131_200, 7, generator=g)
    x[:100] = 0
    x[131_090:131_150] = 0  # in the second slice
    y = torch.randn(333, 7, generator=g)
    bias = torch.zeros(333)
    bias[::9] = float("-inf")  # the zero rows' answer: columns 1 (and 2)
    values, indices = ot_flow.ops.mips(x.cuda(), y.cuda(), bias.cuda(), k)
    best, index = float64_top_k(x, y, bias, k)
    assert torch.equal(indices.cpu(), index)
    assert (index[:100] == torch.arange(1, k + 1)).all()
    torch.testing.assert_close(values.cpu().double(), best.float().double(), rtol=2**-23, atol=0)


@pytest.mark.parametrize("precision", MODES)
@pytest.mark.parametrize("kind", ["random", "integers", "duplicates", "near_ties", "large"])
@pytest.mark.parametrize("n,m,d,k", [(3, 3, 1, 3), (67, 4099, 3, 5), (130, 20_011, 64, 64), (33, 1000, 1000, 17),
                                     (9, 3001, 3072, 64)])
def test_mips_top_k_is_the_float64_answer(n, m, d, k, kind, precision):
    """k > 2, three passes (group maxima, candidate lists, float64 rescoring): the float64 answer in every
    mode, on data whose lists overflow (integers, duplicates: the rescoring scans the row) or not."""
    g = torch.Generator().manual_seed(n + m + d + k)
    x, y = adversarial_points(kind, n, m, d, g)
    bias = torch.randn(m, generator=g) if kind == "random" else None
    if bias is not None:
        bias[1::7] = float("-inf")
    values, indices = ot_flow.ops.mips(x.cuda(), y.cuda(), None if bias is None else bias.cuda(), k,
                                       precision=precision)
    best, index = float64_top_k(x, y, bias, k)
    assert torch.equal(indices.cpu(), index)
    torch.testing.assert_close(values.cpu().double(), best.float().double(), rtol=2**-23, atol=0)


def test_mips_top_k_row_slices_and_half_inputs():
    """More rows than one slice of candidate lists (2^24 / (16 k + 256) = 13,107 rows at k = 64),
    bfloat16 inputs (searched in float32) and non-contiguous keys."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(14_000, 5, generator=g).bfloat16()
    y = torch.randn(5, 1300, generator=g).bfloat16().T  # non-contiguous
    bias = torch.randn(1300, generator=g).bfloat16()
    values, indices = ot_flow.ops.mips(x.cuda(), y.cuda(), bias.cuda(), 64)
    assert values.dtype == torch.float32
    best, index = float64_top_k(x, y, bias, 64)
    assert torch.equal(indices.cpu(), index)
    torch.testing.assert_close(values.cpu().double(), best.float().double(), rtol=2**-23, atol=0)


def test_mips_top_k_rows_with_fewer_than_k_columns_left():
    """Three columns left for k = 6: the threshold is -inf, every column a candidate, and the
    tail holds empty slots (-inf, -1)."""
    x, y, bias = random_problem(70, 90, 7, torch.float32, device="cuda", seed=11)
    bias[3:] = float("-inf")
    values, indices = ot_flow.ops.mips(x, y, bias, 6)
    best, index = float64_top_k(x, y, bias, 6)
    assert torch.equal(indices.cpu(), index)
    assert (indices[:, 3:] == -1).all() and torch.isneginf(values[:, 3:]).all()
    torch.testing.assert_close(values.cpu().double(), best.float().double(), rtol=2**-23, atol=0)


def test_mips_top_k_agrees_with_the_fma_kernel_and_opcheck(monkeypatch):
    x, y, bias = random_problem(300, 5000, 32, torch.float32, device="cuda", seed=3)
    engine = ot_flow.ops.mips(x, y, bias, 10)
    torch.library.opcheck(torch.ops.ot_flow.mips.default, (x, y, bias, 10))
    monkeypatch.setenv("OT_FLOW_CUDA_ENGINE", "fma")
    fma = ot_flow.ops.mips(x, y, bias, 10)
    # The engine returns the float64 answer, the FMA kernel the float32 one: on random data they
    # may swap a near-tie in a few rows, no more; the values agree to rounding either way.
    assert (engine[1] == fma[1]).all(1).double().mean() >= 0.99
    torch.testing.assert_close(engine[0], fma[0], rtol=1e-6, atol=1e-6)


# "highest" as split float16 (opt-in, OT_FLOW_ENGINE_HIGHEST=split_f16; kernel_traits.cuh): the
# same bounds as split TF32.
@pytest.fixture
def split_f16(monkeypatch):
    monkeypatch.setenv("OT_FLOW_ENGINE_HIGHEST", "split_f16")


@pytest.mark.parametrize("n,m,d", SIZES)
def test_split_f16_within_the_highest_bound(n, m, d, split_f16):
    test_lse_within_the_modes_bound(n, m, d, "highest")
    test_barycentric_in_one_pass_within_the_modes_bound(n, m, d, "highest")


def test_split_f16_scales_each_problem(split_f16):
    # Problems of magnitudes 1e-3 to 1e18 in one batch, rows whose norms span nine orders (their
    # small coordinates fall in float16's subnormal range).
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(3, 300, 24, generator=g), torch.randn(3, 500, 24, generator=g)
    x[0] *= 1e-3
    y[0] *= 1e-2
    x[1] *= 10.0 ** (torch.rand(300, 1, generator=g) * 9 - 6)
    x[2] *= 1e18
    y[2] *= 1e17
    h = torch.randn(3, 500, generator=g)
    scales = [30.0, 0.5, 1e-35]
    out = torch.stack([ot_flow.ops.lse(x[b].cuda(), y[b].cuda(), h[b].cuda(), scales[b]) for b in range(3)])
    for b in range(3):
        ref, _ = reference(x[b], y[b], h[b], scales[b], y[b])
        torch.testing.assert_close(out[b].double().cpu(), ref, rtol=2e-6, atol=2e-6)


def test_split_f16_sinkhorn_gumbel_and_batches(split_f16):
    test_sinkhorn_on_the_engine_matches_the_cpu()
    test_gumbel_draws_match_the_cpu_on_exact_inputs("highest")
    test_batched_barycentric_past_one_launch()
    test_batched_gumbel_past_one_launch()


# lse in 128-row blocks of 8 warps (opt-in, OT_FLOW_ENGINE_BLOCK_ROWS=128; kernel_traits.cuh): the
# same bounds, and the Sinkhorn loop on them.
@pytest.mark.parametrize("precision", MODES)
@pytest.mark.parametrize("n,m,d", SIZES + [(129, 257, 64), (4099, 300, 33)])
def test_lse_in_128_row_blocks_within_the_modes_bound(n, m, d, precision, monkeypatch):
    monkeypatch.setenv("OT_FLOW_ENGINE_BLOCK_ROWS", "128")
    test_lse_within_the_modes_bound(n, m, d, precision)


@pytest.mark.parametrize("n,m,d", [(129, 257, 64), (300, 1000, 17), (4099, 300, 33)])
def test_split_f16_lse_in_128_row_blocks(n, m, d, split_f16, monkeypatch):
    monkeypatch.setenv("OT_FLOW_ENGINE_BLOCK_ROWS", "128")  # 16-value slices where d > 16
    test_lse_within_the_modes_bound(n, m, d, "highest")


def test_sinkhorn_in_128_row_blocks(monkeypatch):
    monkeypatch.setenv("OT_FLOW_ENGINE_BLOCK_ROWS", "128")
    test_sinkhorn_on_the_engine_matches_the_cpu(d=24)  # d > 8: the 16-wide slices, which take 8 warps
    monkeypatch.setenv("OT_FLOW_ENGINE_BLOCK_ROWS", "96")
    x, y, h = random_problem(9, 70, 16, torch.float32, device="cuda")
    with pytest.raises(ValueError, match="OT_FLOW_ENGINE_BLOCK_ROWS"):
        ot_flow.ops.lse(x, y, h, 0.5)


# mips's one pass (k <= 2) in 128-row blocks (the same switch): the float64 answer on the
# adversarial data, and over row slices with overflowing lists.
@pytest.mark.parametrize("precision", MODES)
@pytest.mark.parametrize("kind", ["random", "integers", "near_ties"])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("n,m,d", [(67, 4099, 3), (130, 20_011, 64), (33, 1000, 1000)])
def test_mips_one_pass_in_128_row_blocks(n, m, d, k, kind, precision, monkeypatch):
    monkeypatch.setenv("OT_FLOW_ENGINE_BLOCK_ROWS", "128")
    test_mips_one_pass_is_the_float64_answer(n, m, d, k, kind, precision)


@pytest.mark.parametrize("k", [1, 2])
def test_mips_one_pass_row_slices_in_128_row_blocks(k, monkeypatch):
    monkeypatch.setenv("OT_FLOW_ENGINE_BLOCK_ROWS", "128")
    test_mips_one_pass_row_slices_and_overflowing_lists(k)


def test_bad_highest_switch(monkeypatch):
    x, y, h = random_problem(9, 70, 5, torch.float32, device="cuda")
    monkeypatch.setenv("OT_FLOW_ENGINE_HIGHEST", "split_fp16")
    with pytest.raises(ValueError, match="OT_FLOW_ENGINE_HIGHEST"):
        ot_flow.ops.lse(x, y, h, 0.5)
