"""Batched Sinkhorn across processes (issue #18), with Gloo on the CPU: a batch solved by 3 ranks,
replicated and sharded (uneven shards), must give what one process gives, every rank must take
the same decisions, and a bad argument on one rank must raise on all of them. One spawn of the
ranks runs every job (distributed_jobs.batched): starting them costs more than all the solves."""

import os

import pytest
import torch

import ot_flow
from distributed_jobs import BATCHED, batched_problem
from test_distributed import run_ranks

if os.environ.get("OT_FLOW_SKIP_DISTRIBUTED"):
    pytestmark = pytest.mark.skip(reason="OT_FLOW_SKIP_DISTRIBUTED is set")


WORLD = 3


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    world = WORLD
    results = run_ranks("batched", world, tmp_path_factory.mktemp("batched"))
    for r in results:
        assert "error" not in r, r.get("traceback")
    x, y, a, b = batched_problem()
    single = {name: ot_flow.sinkhorn(x, y, a, b, progress=False, **kw) for name, kw in BATCHED}
    return world, results, single


def close(got, want):
    # float64 problems: the ranks' sums run in another order than one process's, nothing more
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))


def _draws(single):
    """The one-process draws the jobs make: one seed for all, a seed per problem, problem 0's own."""
    return dict(sample=single.sample(torch.Generator().manual_seed(3)),
                samples=single.sample([torch.Generator().manual_seed(4 + k) for k in range(3)]),
                sample_0=single[0].sample(torch.Generator().manual_seed(3)))


def _check_against_one_process(got, single, name):
    """The per-problem numbers, over all rows (the per-row outputs are checked by the callers)."""
    assert torch.equal(got["n_iter"], single.n_iter) and torch.equal(got["converged"], single.converged)
    assert single.converged.all()
    close(got["eps"], single.eps)
    for errors, expected in zip(got["errors"], single.errors):
        assert errors == pytest.approx(expected, rel=1e-6)
    close(got["cost"], single.transport_cost())
    close(got["mass"], single.mass())
    torch.testing.assert_close(got["entropy"], single.renormalized_entropy(), rtol=0, atol=1e-9)
    assert got["cost_0"] == pytest.approx(single[0].transport_cost(), rel=1e-9)
    if name == "unbalanced":
        assert (single.mass() - 1).abs().min() > 1e-3  # the relaxation is live
    if name == "entropy":
        assert ((single.renormalized_entropy() - 0.3).abs() <= 0.01).all()
        assert len(set(single.eps.tolist())) == 3  # each problem found its own eps


@pytest.mark.parametrize("name", [name for name, _ in BATCHED])
def test_replicated_batch_equals_one_process(solved, name):
    world, results, single = solved
    single = single[name]
    for r in results:
        got = r[name]["replicated"]
        _check_against_one_process(got, single, name)
        close(got["f"], single.f)
        close(got["g"], single.g)
        close(got["map"], single.barycentric_map())
        close(got["plan"], single.plan())
        for key, want in _draws(single).items():  # potentials equal to rounding: draws agree but for near-ties (one row in a hundred)
            assert (got[key] == want).double().mean() >= 0.99, key
        # every rank took the same decisions from the same bits
        for key in ("f", "g", "n_iter", "eps", "map", "cost", "entropy"):
            assert torch.equal(got[key], results[0][name]["replicated"][key]), key


@pytest.mark.parametrize("name", [name for name, _ in BATCHED])
def test_sharded_batch_equals_one_process(solved, name):
    world, results, single = solved
    single = single[name]
    sizes = [r["rows"][1] - r["rows"][0] for r in results]
    assert len(set(sizes)) == world  # the shards are uneven
    for r in results:
        got = r[name]["sharded"]
        _check_against_one_process(got, single, name)
        assert "sharded across ranks" in got["plan"]
        for key in ("n_iter", "converged", "eps", "cost", "entropy", "mass"):  # the same decisions everywhere
            assert torch.equal(got[key], results[0][name]["sharded"][key]), key
    for key, want in (("f", single.f), ("g", single.g), ("map", single.barycentric_map())):
        close(torch.cat([r[name]["sharded"][key] for r in results], dim=1), want)
    for key, want in _draws(single).items():  # each rank draws its rows; agree but for near-ties
        got = torch.cat([r[name]["sharded"][key] for r in results], dim=-1)
        assert (got == want).double().mean() >= 0.99, key
    for r in results:  # the rank's rows and columns of every problem
        assert r[name]["sharded"]["f"].shape == (3, r["rows"][1] - r["rows"][0])
        assert r[name]["sharded"]["g"].shape == (3, r["cols"][1] - r["cols"][0])


def test_a_problem_of_the_batch_equals_its_2d_distributed_solve(solved):
    """Problem 1 (far from the origin) of the batch against the 2-D solve of it on the same ranks.
    Not bitwise: the batch's elementwise passes (the sharded merge's logaddexp) see each problem
    at another offset of a longer tensor, where torch's vectorised and scalar tails round apart."""
    world, results, _ = solved
    for placement in ("replicated", "sharded"):
        for r in results:
            batch, alone = r["balanced"][placement], r["two_d"][placement]
            assert batch["n_iter"][1] == alone["n_iter"]
            assert batch["errors"][1] == pytest.approx(alone["errors"], rel=1e-9)
            close(batch["f"][1], alone["f"])
            close(batch["g"][1], alone["g"])


def test_warm_start_from_a_distributed_solve(solved):
    """Started from the balanced solution, replicated and sharded runs equal the one-process warm
    start (sharded, the constant that the start moves from f to g must be one over all ranks)."""
    world, results, single = solved
    x, y, a, b = batched_problem()
    solution = single["balanced"]
    warm = ot_flow.sinkhorn(x, y, a, b, init=(solution.f, solution.g), progress=False, **BATCHED[0][1])
    assert (warm.n_iter <= 3).all()
    for placement in ("replicated", "sharded"):
        for r in results:
            assert torch.equal(r["warm"][placement]["n_iter"], warm.n_iter)
        if placement == "replicated":
            close(results[0]["warm"][placement]["f"], warm.f)
        else:
            close(torch.cat([r["warm"][placement]["f"] for r in results], dim=1), warm.f)


def test_fewer_rows_than_ranks(solved):
    world, results, _ = solved
    x, y, _, _ = batched_problem()
    single = ot_flow.sinkhorn(x[:2, :1], y[:2, :5], eps=0.05, max_iter=100, progress=False)
    for r in results:
        got = r["few_rows"]
        assert torch.equal(got["n_iter"], single.n_iter)
        close(got["f"], single.f)
        close(got["g"], single.g)
        assert (got["sample"] == single.sample(torch.Generator().manual_seed(3))).double().mean() >= 0.99


def test_a_bad_argument_on_one_rank_raises_on_every_rank(solved):
    world, results, _ = solved
    expected = {"nan_x": r"rank 1: argument 'x[1]' contains NaN", "empty_shard": "rank 1: argument 'x[0]' is empty",
                "count": "disagree (count: ", "weights": "rank 1: argument 'a[0]' must sum to 1",
                "shard_weights": "argument 'a[0]' must sum to 1 over all ranks",
                "init": "rank 1: argument 'init' contains NaN"}
    for r in results:
        for case, message in expected.items():
            assert message in r["bad"][case], (case, r["bad"][case])


def test_sharded_needs_a_group():
    x, y, _, _ = batched_problem()
    with pytest.raises(ValueError, match="argument 'sharded' needs a 'process_group'"):
        ot_flow.sinkhorn(x, y, sharded=True)
