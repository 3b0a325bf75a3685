"""The merge rules over chunks and ranks (solvers/merge_rules.py) against the whole-row answer:
whatever the split and the order the parts arrive in."""

import itertools
import math

import pytest
import torch

from ot_flow.solvers import merge_rules


def _split(n_cols, cuts):
    bounds = [0, *cuts, n_cols]
    return [(c0, c1) for c0, c1 in zip(bounds[:-1], bounds[1:]) if c1 > c0]


def _scores(seed, n=7, m=11, ties=True):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 4, (n, m), generator=g).double() if ties else torch.randn(n, m, generator=g, dtype=torch.float64)
    s[0] = 2.0  # a row of equal scores: the answer is column 0
    s[1, :] = -math.inf  # a row that nothing reaches...
    s[1, 5] = 1.0  # ...but one column
    return s


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("cuts", [(), (1,), (3, 4), (2, 5, 9)])
def test_best_of_any_split_and_order_is_the_first_argmax(seed, cuts):
    s = _scores(seed)
    n = s.shape[0]
    expected_value, expected_index = s.max(1)  # torch: the first maximal index
    blocks = _split(s.shape[1], cuts)
    for order in itertools.permutations(blocks):
        parts = []
        for c0, c1 in order:
            v, j = s[:, c0:c1].max(1)
            parts.append((v, j + c0))
        value, index = merge_rules.best_of(parts, n, s.device)
        assert torch.equal(value, expected_value)
        assert torch.equal(index, expected_index)


def test_best_of_nothing_found_keeps_minus_one():
    value, index = merge_rules.best_of([(torch.full((3,), -math.inf), torch.tensor([0, 4, 2]))], 3, "cpu")
    assert torch.equal(index, torch.full((3,), -1))
    assert torch.isinf(value).all()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("cuts", [(1,), (3, 4), (2, 5, 9), (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)])
def test_top_two_of_any_split_and_order(seed, cuts):
    s = _scores(seed, ties=seed % 2 == 0)
    n = s.shape[0]
    expected_top = s.topk(2, dim=1).values
    expected_index = s.max(1).indices
    for order in itertools.islice(itertools.permutations(_split(s.shape[1], cuts)), 24):
        parts = []
        for c0, c1 in order:
            top = s[:, c0:c1].topk(min(2, c1 - c0), dim=1).values
            parts.append((top, s[:, c0:c1].max(1).indices + c0))
        top, index = merge_rules.top_two_of(parts, n, s.device)
        assert torch.equal(top, expected_top)
        assert torch.equal(index, expected_index)


@pytest.mark.parametrize("cuts", [(), (1,), (3, 4), (2, 5, 9)])
def test_lse_and_means_of_blocks(cuts):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 11, generator=g, dtype=torch.float64) * 5
    z[2] = -math.inf  # a row with no mass anywhere
    z[3, :4] = -math.inf  # blocks without mass in a row
    values = torch.randn(11, 3, generator=g, dtype=torch.float64)
    blocks = _split(11, cuts)
    total = merge_rules.lse_of((z[:, c0:c1].logsumexp(1) for c0, c1 in blocks), z)
    torch.testing.assert_close(total, z.logsumexp(1), rtol=1e-12, atol=0)
    parts = [(torch.softmax(z[:, c0:c1], 1).nan_to_num(0.0) @ values[c0:c1], z[:, c0:c1].logsumexp(1))
             for c0, c1 in blocks]
    mean, lse = merge_rules.means_of(parts, z.new_zeros(6, 3))
    live = torch.isfinite(z.logsumexp(1))
    torch.testing.assert_close(mean[live], (torch.softmax(z[live], 1) @ values), rtol=1e-12, atol=1e-12)
    assert torch.equal(mean[~live], torch.zeros_like(mean[~live]))
    torch.testing.assert_close(lse, z.logsumexp(1), rtol=1e-12, atol=0)
