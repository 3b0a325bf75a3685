import pytest
import torch
from scipy import stats

import ot_flow
from problems import random_problem
from reference import gumbel_argmax_reference, philox4x32_10

SIZES = [1, 7, 513, 2053]  # 513 and 2053: past one 512-column tile, primes or tile + 1
DIMS = [1, 3, 64]


def assert_same_draw(index, ref_index, perturbed, min_gap=1e-4):
    """Equal indices, except on rows where the reference's top two values are closer than the
    rounding of the logits could decide (min_gap: 1e-4 for float32, 1e-12 for float64, whose
    kernel and reference still sum the dot products in different orders)."""
    top2 = perturbed.topk(min(2, perturbed.shape[1]), dim=1).values
    gap = top2[:, 0] - top2[:, -1] if perturbed.shape[1] > 1 else torch.full_like(top2[:, 0], float("inf"))
    decided = gap > min_gap * (1 + top2[:, 0].abs())
    assert torch.equal(index.cpu()[decided], ref_index[decided])
    assert (~decided).sum() <= max(1, 0.01 * decided.numel())  # a near-tie is rare: one row of 7 is 14%


def test_reference_philox_matches_the_published_known_answers():
    # Random123's known-answer vectors for Philox4x32-10 (its kat_vectors file).
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, want in cases:
        assert tuple(int(w) for w in philox4x32_10(counter, key)) == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("n", SIZES)
def test_matches_dense_reference(n, m, d, dtype):
    x, y, h = random_problem(n, m, d, dtype)
    seed = int(torch.randint(0, 2**62, ()))
    index, value = ot_flow.ops.gumbel_argmax(x, y, h, 0.7, seed=seed, offset=3, return_value=True)
    assert index.shape == value.shape == (n,) and index.dtype == torch.long and value.dtype == torch.float64
    ref_index, perturbed = gumbel_argmax_reference(x, y, h, 0.7, seed, offset=3)
    if dtype == torch.float64:
        assert_same_draw(index, ref_index, perturbed, min_gap=1e-12)
        torch.testing.assert_close(value, perturbed.max(1).values, rtol=1e-12, atol=1e-12)
    else:
        assert_same_draw(index, ref_index, perturbed)
        torch.testing.assert_close(value, perturbed.max(1).values, rtol=1e-5, atol=1e-5)


def test_large_scale_prunes_but_stays_exact():
    # Logits spread over thousands: almost every element is pruned without drawing noise.
    x, y, h = random_problem(300, 3000, 8, torch.float64, spread=50.0)
    index = ot_flow.ops.gumbel_argmax(x, y, h, 40.0, seed=11)
    assert_same_draw(index, *gumbel_argmax_reference(x, y, h, 40.0, 11), min_gap=1e-12)


def test_non_contiguous_inputs():
    x, y, h = random_problem(200, 700, 33, torch.float64)
    xt = x.T.contiguous().T
    y2 = torch.stack([y, y], dim=2)[:, :, 0]
    hs = torch.stack([h, h], dim=1)[:, 0]
    assert not (xt.is_contiguous() or y2.is_contiguous() or hs.is_contiguous())
    assert torch.equal(ot_flow.ops.gumbel_argmax(xt, y2, hs, 0.3, seed=5),
                       ot_flow.ops.gumbel_argmax(x, y, h, 0.3, seed=5))


def test_shards_of_rows_and_columns_draw_what_the_whole_draws():
    x, y, h = random_problem(1000, 2500, 16, torch.float32)
    whole, whole_value = ot_flow.ops.gumbel_argmax(x, y, h, 1.0, seed=21, return_value=True)
    # Rows: uneven shards with their row offsets.
    parts = [ot_flow.ops.gumbel_argmax(x[a:b], y, h, 1.0, seed=21, row_offset=a) for a, b in [(0, 1), (1, 389), (389, 1000)]]
    assert torch.equal(torch.cat(parts), whole)
    # Columns: each shard's winner with its value; the larger value wins, the lower index on ties.
    best_value = torch.full((1000,), float("-inf"), dtype=torch.float64)
    best_index = torch.full((1000,), -1)
    for a, b in [(0, 700), (700, 701), (701, 2500)]:
        j, v = ot_flow.ops.gumbel_argmax(x, y[a:b], h[a:b], 1.0, seed=21, col_offset=a, return_value=True)
        better = v > best_value
        best_value = torch.where(better, v, best_value)
        best_index = torch.where(better, j + a, best_index)
    # A column shard's dot products come from other GEMM tiles than the whole's, so a float32 score
    # can round one step differently (3 runs in 30 here, by 1.9e-6 at scores ~ 20): the values agree
    # to that rounding, and the winner is the same unless two candidates are within it.
    assert torch.allclose(best_value, whole_value, rtol=0, atol=1e-5)
    assert int((best_index != whole).sum()) <= 1


def test_same_draw_for_any_thread_count():
    x, y, h = random_problem(300, 5000, 17, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ot_flow.ops.gumbel_argmax(x, y, h, 0.5, seed=8)
        torch.set_num_threads(max(2, threads))
        many = ot_flow.ops.gumbel_argmax(x, y, h, 0.5, seed=8)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_seed_and_offset_select_independent_draws():
    x, y, h = random_problem(2000, 50, 4, torch.float64)
    h.zero_()
    y.zero_()  # every column equally likely: the draws are pure noise
    draws = [ot_flow.ops.gumbel_argmax(x, y, h, 1.0, seed=s, offset=o) for s, o in [(1, 0), (2, 0), (1, 1)]]
    for k in range(3):
        for l in range(k + 1, 3):
            agree = (draws[k] == draws[l]).float().mean().item()
            assert agree < 0.05  # independent uniform draws over 50 columns agree 2% of the time
    # Two independent uniform draws: their joint table is uniform over 50 x 50 cells.
    joint = torch.bincount(draws[0] * 50 + draws[2], minlength=2500).numpy()
    assert stats.chisquare(joint).pvalue > 1e-3


def test_generator_makes_draws_reproducible():
    x, y, h = random_problem(100, 300, 5, torch.float32)
    first = ot_flow.ops.gumbel_argmax(x, y, h, generator=torch.Generator().manual_seed(4))
    again = ot_flow.ops.gumbel_argmax(x, y, h, generator=torch.Generator().manual_seed(4))
    other = ot_flow.ops.gumbel_argmax(x, y, h, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(9)
    a = ot_flow.ops.gumbel_argmax(x, y, h)
    b = ot_flow.ops.gumbel_argmax(x, y, h)  # the global generator advanced
    torch.manual_seed(9)
    assert torch.equal(ot_flow.ops.gumbel_argmax(x, y, h), a) and not torch.equal(a, b)


def test_row_frequencies_follow_the_softmax():
    x, y, h = random_problem(1, 12, 3, torch.float64)
    rows = x.expand(60_000, 3).contiguous()  # one row, 60000 independent draws (distinct i)
    counts = torch.bincount(ot_flow.ops.gumbel_argmax(rows, y, h, 0.8, seed=13), minlength=12).numpy()
    p = torch.softmax(0.8 * (x @ y.T)[0] + h, 0).numpy()
    assert stats.chisquare(counts, p * counts.sum()).pvalue > 1e-3
    # The test can fail: the same counts are far from a wrong distribution.
    q = torch.softmax(0.7 * (x @ y.T)[0] + h, 0).numpy()
    assert stats.chisquare(counts, q * counts.sum()).pvalue < 1e-3


def test_columns_without_mass_are_never_drawn():
    x, y, h = random_problem(500, 1200, 4, torch.float32)
    h[::2] = float("-inf")
    index = ot_flow.ops.gumbel_argmax(x, y, h, 1.0, seed=2)
    assert (index % 2 == 1).all()
    h[:] = float("-inf")
    index, value = ot_flow.ops.gumbel_argmax(x, y, h, 1.0, seed=2, return_value=True)
    assert (index == -1).all() and torch.isneginf(value).all()


def test_opcheck_and_fake_kernel():
    for n, m, d in [(1, 1, 1), (7, 600, 3), (130, 20, 64)]:
        x, y, h = random_problem(n, m, d, torch.float32)
        torch.library.opcheck(torch.ops.ot_flow.gumbel_argmax.default, (x, y, h, 0.5, 3, 1, 0, 0))
        torch.library.opcheck(torch.ops.ot_flow.gumbel_argmax.default, (x, y, None, 2.0, 5, 0, 10, 7))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        index, value = torch.ops.ot_flow.gumbel_argmax.default(torch.empty(11, 5), torch.empty(13, 5), None, 1.0, 0, 0, 0, 0)
    assert index.shape == value.shape == (11,) and index.dtype == torch.long and value.dtype == torch.float64


def test_torch_compile_fullgraph():
    def pair(x, y, h):
        j = torch.ops.ot_flow.gumbel_argmax.default(x, y, h, 2.0, 17, 0, 0, 0)[0]
        return y[j] - x

    compiled = torch.compile(pair, fullgraph=True)
    for n in (64, 200):
        x, y, h = random_problem(n, 300, 8, torch.float32)
        torch.testing.assert_close(compiled(x, y, h), pair(x, y, h))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (7, 513, 3), (1000, 2053, 64), (64, 100_003, 16)])
def test_cuda_draws_what_the_cpu_draws(n, m, d, dtype):
    x, y, h = random_problem(n, m, d, dtype, seed=n + m + d)
    _, cpu_value = ot_flow.ops.gumbel_argmax(x, y, h, 0.9, seed=77, offset=2, return_value=True)
    gpu_index, gpu_value = ot_flow.ops.gumbel_argmax(x.cuda(), y.cuda(), h.cuda(), 0.9, seed=77, offset=2,
                                                     return_value=True)
    assert gpu_index.device.type == "cuda" and gpu_value.dtype == torch.float64
    # The GPU sums the dot products in another order than the CPU: the same draw up to rounding.
    assert_same_draw(gpu_index, *gumbel_argmax_reference(x, y, h, 0.9, 77, offset=2),
                     min_gap=1e-12 if dtype == torch.float64 else 1e-4)
    torch.testing.assert_close(gpu_value.cpu(), cpu_value, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_cuda_opcheck_and_shards():
    x, y, h = random_problem(300, 900, 5, torch.float32, device="cuda")
    torch.library.opcheck(torch.ops.ot_flow.gumbel_argmax.default, (x, y, h, 0.5, 3, 1, 0, 0))
    whole = ot_flow.ops.gumbel_argmax(x, y, h, 1.0, seed=21)
    parts = [ot_flow.ops.gumbel_argmax(x[a:b], y, h, 1.0, seed=21, row_offset=a) for a, b in [(0, 77), (77, 300)]]
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(ValueError, match="argument 'h' is on cpu"):
        ot_flow.ops.gumbel_argmax(x, y, h.cpu(), seed=1)
