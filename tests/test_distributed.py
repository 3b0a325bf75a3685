"""The solvers across processes, with Gloo on the CPU: spawned ranks (2 and 3, uneven shards)
must give what one process gives, and a rank that fails must not leave the others hanging."""

import os
import time

import pytest
import torch
import torch.multiprocessing as mp

import ot_flow
from distributed_jobs import problem

SPAWN_TIMEOUT_S = 240


def run_ranks(job, world, tmp_path, timeout_s=60, backend="gloo"):
    """Spawns `world` ranks (Gloo, or NCCL) running distributed_jobs.JOBS[job]; returns their results."""
    from distributed_jobs import run

    tmp_path.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    init_file = tmp_path / f"init-{job}-{world}"
    procs = [ctx.Process(target=run, args=(r, world, job, str(init_file), str(tmp_path), timeout_s, backend))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, f"{len(hung)} rank(s) still running after {SPAWN_TIMEOUT_S} s"
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module", params=[2, 3])
def solved(request, tmp_path_factory):
    world = request.param
    results = run_ranks("solve", world, tmp_path_factory.mktemp(f"solve{world}"))
    for r in results:
        assert "error" not in r, r.get("traceback")
    x, y = problem()
    single = ot_flow.sinkhorn(x, y, eps=0.05)
    return world, results, single


def close(a, b):
    # float64 problem: agreement far inside the 1e-5 (float32) tolerance
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()))


def test_replicated_equals_one_process(solved):
    world, results, single = solved
    for r in results:
        rep = r["replicated"]
        assert rep["n_iter"] == single.n_iter
        close(rep["f"], single.f)
        close(rep["g"], single.g)
        assert rep["errors"] == pytest.approx(single.errors, rel=1e-6)
        assert rep["cost"] == pytest.approx(single.transport_cost(), rel=1e-9)
        assert rep["entropy"] == pytest.approx(single.renormalized_entropy(), abs=1e-9)
    # Every rank took the same decisions from the same bits.
    assert all(torch.equal(r["replicated"]["f"], results[0]["replicated"]["f"]) for r in results)


def test_sharded_equals_one_process(solved):
    world, results, single = solved
    sizes = [r["sharded"]["rows"][1] - r["sharded"]["rows"][0] for r in results]
    assert len(set(sizes)) == world  # the shards are uneven
    f = torch.cat([r["sharded"]["f"] for r in results])
    g = torch.cat([r["sharded"]["g"] for r in results])
    assert all(r["sharded"]["n_iter"] == single.n_iter for r in results)
    close(f, single.f)
    close(g, single.g)
    for r in results:
        assert r["sharded"]["errors"] == pytest.approx(single.errors, rel=1e-6)
        assert r["sharded"]["cost"] == pytest.approx(single.transport_cost(), rel=1e-9)
        assert r["sharded"]["entropy"] == pytest.approx(single.renormalized_entropy(), abs=1e-9)
    close(torch.cat([r["sharded"]["map"] for r in results]), single.barycentric_map())


def test_samples_equal_one_process(solved):
    world, results, single = solved
    expected = single.sample(torch.Generator().manual_seed(3))
    for r in results:
        assert torch.equal(r["replicated"]["sample"], expected)
    assert torch.equal(torch.cat([r["sharded"]["sample"] for r in results]), expected)


def test_unbalanced_replicated_and_sharded_equal_one_process(tmp_path):
    from distributed_jobs import UNBALANCED

    results = run_ranks("unbalanced", 3, tmp_path)
    for r in results:
        assert "error" not in r, r.get("traceback")
    x, y = problem()
    for cost, tau_a, tau_b in UNBALANCED:
        single = ot_flow.sinkhorn(x, y, eps=0.05, cost=cost, tau_a=tau_a, tau_b=tau_b)
        balanced = ot_flow.sinkhorn(x, y, eps=0.05, cost=cost)
        assert abs(single.transport_cost() - balanced.transport_cost()) > 1e-3  # the relaxation is live
        rep = results[0][cost]["replicated"]
        close(rep["f"], single.f)
        close(rep["g"], single.g)
        close(torch.cat([r[cost]["sharded"]["f"] for r in results]), single.f)
        close(torch.cat([r[cost]["sharded"]["g"] for r in results]), single.g)
        for r in results:
            for placement in ("replicated", "sharded"):
                got = r[cost][placement]
                assert got["n_iter"] == single.n_iter
                assert got["mass"] == pytest.approx(single.mass(), rel=1e-9)
                assert got["cost"] == pytest.approx(single.transport_cost(), rel=1e-9)
                assert got["entropy"] == pytest.approx(single.renormalized_entropy(), abs=1e-9)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_semidiscrete_equals_one_process(world, tmp_path):
    from distributed_jobs import SEMIDISCRETE_FITS, semidiscrete_data

    results = run_ranks("semidiscrete", world, tmp_path)
    for r in results:
        assert "error" not in r, r.get("traceback")
    data, queries = semidiscrete_data()
    for eps, fit in SEMIDISCRETE_FITS:
        single = ot_flow.SemidiscreteSampler(data, eps=eps, seed=4).fit(**fit)
        key = eps, fit["optimizer"]
        potential = torch.cat([r[key]["potential"] for r in results])
        torch.testing.assert_close(potential, single.potential, rtol=1e-9, atol=1e-9)
        expected = single.assign(queries, generator=torch.Generator().manual_seed(2))
        for r in results:  # every rank gets the global answer
            assert torch.equal(r[key]["assign"], expected)
            assert torch.equal(r[key]["pair"], data[expected])
            if eps == 0:
                chi2 = [h["chi2"] for h in r[key]["history"]]
                assert chi2 == pytest.approx([h["chi2"] for h in single.history], rel=1e-9, abs=1e-12)


def test_sharded_multiscale_fit(tmp_path):
    results = run_ranks("semidiscrete_multiscale", 2, tmp_path)
    for r in results:
        assert "error" not in r, r.get("traceback")
        assert r["warm_started"] and torch.isfinite(r["potential"]).all()
    assert results[0]["chi2"] == results[1]["chi2"] < 0.05  # one global marginal error


def test_a_bad_shard_raises_on_every_rank(tmp_path):
    results = run_ranks("bad_shard", 2, tmp_path)
    for r in results:
        assert r.get("error", "").startswith("ValueError") and "rank 1: argument 'x' contains NaN" in r["error"]


def test_mismatched_shards_and_missing_ranks_raise(tmp_path):
    results = run_ranks("mismatched_dim", 2, tmp_path / "dim")
    for r in results:
        assert "the ranks of 'process_group' disagree (dim:" in r.get("error", "")
    results = run_ranks("missing_rank", 2, tmp_path / "missing")
    assert "error" not in results[0], results[0].get("traceback")  # a group of one solves alone
    assert "not a member of the group" in results[1].get("error", "")


def test_pair_dataset_ranks_share_one_cooperative_coupling(tmp_path):
    results = run_ranks("pair_dataset", 2, tmp_path)
    for r in results:
        assert "error" not in r, r.get("traceback")
    _, y = problem(torch.float32)
    single = ot_flow.data.OTPairDataset(None, y, ot_flow.OTSampler(eps=0.05), coupling_size=200, batch_size=20,
                                        rounds=2, seed=3, rank=0, world_size=1)
    whole = {tuple(row) for b in single for row in torch.cat(b, 1).tolist()}
    shares = [{tuple(row) for b in r["batches"] for row in b.tolist()} for r in results]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == whole


def test_a_failing_rank_does_not_hang_the_others(tmp_path):
    start = time.monotonic()
    results = run_ranks("crash", 2, tmp_path, timeout_s=10)
    assert "rank 1 fails" in results[1]["error"]
    assert "error" in results[0]  # the collective gave up (peer gone or timeout) with an error
    assert time.monotonic() - start < 120


def test_bad_group_arguments():
    x, y = problem()
    with pytest.raises(ValueError, match="argument 'sharded' needs a 'process_group'"):
        ot_flow.sinkhorn(x, y, sharded=True)
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        ot_flow.sinkhorn(x, y, process_group=object())


if os.environ.get("OT_FLOW_SKIP_DISTRIBUTED"):
    pytestmark = pytest.mark.skip(reason="OT_FLOW_SKIP_DISTRIBUTED is set")


# --- CUDA tensors across processes: 2 ranks on one GPU over Gloo (it carries CUDA tensors), and a
# 1-rank NCCL group, against one process on the GPU. -------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("backend,world", [("gloo", 2), ("nccl", 1)])
def test_cuda_solvers_across_processes_equal_one_process(backend, world, tmp_path):
    results = run_ranks("solve_cuda", world, tmp_path, backend=backend)
    for r in results:
        assert "error" not in r, r.get("traceback")
    x, y = problem()
    single = ot_flow.sinkhorn(x.cuda(), y.cuda(), eps=0.05)
    f, g = single.f.cpu(), single.g.cpu()
    for r in results:
        assert r["replicated"]["n_iter"] == single.n_iter
        close(r["replicated"]["f"], f)
        close(r["replicated"]["g"], g)
        draws = single.sample(torch.Generator().manual_seed(3)).cpu()  # potentials equal to rounding
        assert (r["replicated"]["sample"] == draws).double().mean() >= 0.99
        assert r["sharded"]["n_iter"] == single.n_iter
    close(torch.cat([r["sharded"]["f"] for r in results]), f)
    close(torch.cat([r["sharded"]["g"] for r in results]), g)
    close(torch.cat([r["sharded"]["map"] for r in results]), single.barycentric_map().cpu())


@pytest.mark.cuda
@pytest.mark.parametrize("backend,world", [("gloo", 2), ("nccl", 1)])
def test_cuda_semidiscrete_across_processes_equals_one_process(backend, world, tmp_path):
    from distributed_jobs import SEMIDISCRETE_FITS, semidiscrete_data

    results = run_ranks("semidiscrete_cuda", world, tmp_path, backend=backend)
    for r in results:
        assert "error" not in r, r.get("traceback")
    data, queries = (t.cuda() for t in semidiscrete_data())
    for eps, fit in SEMIDISCRETE_FITS:
        single = ot_flow.SemidiscreteSampler(data, eps=eps, seed=4).fit(**fit)
        key = eps, fit["optimizer"]
        potential = torch.cat([r[key]["potential"] for r in results])
        torch.testing.assert_close(potential, single.potential.cpu(), rtol=1e-9, atol=1e-9)
        expected = single.assign(queries, generator=torch.Generator().manual_seed(2)).cpu()
        for r in results:  # potentials equal to rounding: assignments agree but for near-ties
            assert (r[key]["assign"] == expected).double().mean() >= 0.99
