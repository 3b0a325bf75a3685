"""Jobs run by the spawned ranks of test_distributed.py (a module of its own, importable by the
spawned processes). Each job returns a dict that the rank saves for the test to compare."""

import datetime
import os
import traceback

import torch
import torch.distributed as dist

import ot_flow


def problem(dtype=torch.float64):
    g = torch.Generator().manual_seed(5)
    return torch.randn(301, 5, generator=g, dtype=dtype), torch.randn(257, 5, generator=g, dtype=dtype) + 0.5


def uneven(n, world, rank, reverse=False):
    """Rank r's rows, in rank order, when the shares are 1 : 2 : 3 ... (or ... 3 : 2 : 1)."""
    weights = [world - r if reverse else r + 1 for r in range(world)]
    bounds = [round(n * sum(weights[:r]) / sum(weights)) for r in range(world + 1)]
    return bounds[rank], bounds[rank + 1]


def solve(rank, world, device="cpu"):
    x, y = (t.to(device) for t in problem())
    group = dist.group.WORLD
    out = {}
    rep = ot_flow.sinkhorn(x, y, eps=0.05, process_group=group)
    out["replicated"] = dict(f=rep.f, g=rep.g, n_iter=rep.n_iter, errors=rep.errors,
                             sample=rep.sample(torch.Generator().manual_seed(3)),
                             cost=rep.transport_cost(), entropy=rep.renormalized_entropy())
    r0, r1 = uneven(x.shape[0], world, rank)
    c0, c1 = uneven(y.shape[0], world, rank, reverse=True)  # another split for the columns
    sh = ot_flow.sinkhorn(x[r0:r1], y[c0:c1], eps=0.05, process_group=group, sharded=True)
    out["sharded"] = dict(rows=(r0, r1), cols=(c0, c1), f=sh.f, g=sh.g, n_iter=sh.n_iter, errors=sh.errors,
                          sample=sh.sample(torch.Generator().manual_seed(3)), cost=sh.transport_cost(),
                          entropy=sh.renormalized_entropy(), map=sh.barycentric_map())
    return out


def semidiscrete_data():
    g = torch.Generator().manual_seed(6)
    return torch.randn(203, 3, generator=g, dtype=torch.float64) + 1, torch.randn(500, 3, generator=g, dtype=torch.float64)


# (eps, fit arguments): Adam and the diagonal Newton steps, hard and soft.
SEMIDISCRETE_FITS = [(eps, dict(num_steps=40, batch_size=256, progress=False, log_every=10, optimizer=optimizer,
                                warm_start=None))
                     for eps in (0.0, 0.5) for optimizer in ("adam", "newton")]


def semidiscrete_multiscale(rank, world):
    """A sharded fit with a multiscale start (each rank subsamples its own shard)."""
    data, _ = semidiscrete_data()
    r0, r1 = uneven(data.shape[0], world, rank)
    sampler = ot_flow.SemidiscreteSampler(data[r0:r1], seed=4, process_group=dist.group.WORLD)
    sampler.fit(300, batch_size=64, progress=False, log_every=300)
    return {"potential": sampler.potential, "chi2": sampler.marginal_error(50_000),
            "warm_started": sampler.warm_started}


def semidiscrete(rank, world, device="cpu"):
    data, queries = (t.to(device) for t in semidiscrete_data())
    r0, r1 = uneven(data.shape[0], world, rank)
    out = {"rows": (r0, r1)}
    for eps, fit in SEMIDISCRETE_FITS:
        sampler = ot_flow.SemidiscreteSampler(data[r0:r1], eps=eps, seed=4, process_group=dist.group.WORLD)
        sampler.fit(**fit)
        out[eps, fit["optimizer"]] = dict(potential=sampler.potential, history=sampler.history,
                        assign=sampler.assign(queries, generator=torch.Generator().manual_seed(2)),
                        pair=sampler.pair(queries, generator=torch.Generator().manual_seed(2))[1])
    return out


def bad_shard(rank, world):
    x, y = problem()
    if rank == 1:
        x = x.clone()
        x[0, 0] = float("nan")
    ot_flow.sinkhorn(x, y, process_group=dist.group.WORLD, sharded=True)
    return {}


def mismatched_dim(rank, world):
    x, y = problem()
    if rank == 1:
        x, y = x[:, :4], y[:, :4]
    ot_flow.sinkhorn(x, y, process_group=dist.group.WORLD, sharded=True)
    return {}


def missing_rank(rank, world):
    group = dist.new_group([0])  # every rank must call new_group; rank 1 is not in it
    x, y = problem()
    ot_flow.sinkhorn(x, y, process_group=group)
    return {}


UNBALANCED = [("sqeuclidean", 0.6, 1.0), ("dot", 0.7, 0.9)]  # (cost, tau_a, tau_b)


def unbalanced(rank, world):
    x, y = problem()
    group, out = dist.group.WORLD, {}
    r0, r1 = uneven(x.shape[0], world, rank)
    c0, c1 = uneven(y.shape[0], world, rank, reverse=True)
    for cost, tau_a, tau_b in UNBALANCED:
        kw = dict(eps=0.05, cost=cost, tau_a=tau_a, tau_b=tau_b, process_group=group)
        rep = ot_flow.sinkhorn(x, y, **kw)
        sh = ot_flow.sinkhorn(x[r0:r1], y[c0:c1], sharded=True, **kw)
        out[cost] = {name: dict(f=r.f, g=r.g, n_iter=r.n_iter, mass=r.mass(), cost=r.transport_cost(),
                                entropy=r.renormalized_entropy())
                     for name, r in (("replicated", rep), ("sharded", sh))}
    return out


def pair_dataset(rank, world):
    x, y = problem(torch.float32)
    sampler = ot_flow.OTSampler(eps=0.05, process_group=dist.group.WORLD)
    dataset = ot_flow.data.OTPairDataset(None, y, sampler, coupling_size=200, batch_size=20, rounds=2, seed=3)
    return {"batches": [torch.cat(b, 1) for b in dataset]}


def crash(rank, world):
    if rank == 1:
        raise RuntimeError("rank 1 fails before the solve")
    x, y = problem()
    ot_flow.sinkhorn(x, y, process_group=dist.group.WORLD)
    return {}


def batched_problem(dtype=torch.float64):
    """B = 3 problems (x (3, 61, 3), y (3, 47, 3)) of their own scales, one far from the origin, and
    non-uniform weights a (3, 61), b (3, 47)."""
    g = torch.Generator().manual_seed(7)
    spread = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)[:, None, None]
    shift = torch.tensor([0.0, 40.0, -3.0], dtype=torch.float64)[:, None, None]
    x = torch.randn(3, 61, 3, generator=g, dtype=torch.float64) * spread + shift
    y = torch.randn(3, 47, 3, generator=g, dtype=torch.float64) * spread * 1.3 + shift + 0.5
    a = torch.rand(3, 61, generator=g, dtype=torch.float64) + 0.2
    b = torch.rand(3, 47, generator=g, dtype=torch.float64) + 0.2
    return x.to(dtype), y.to(dtype), a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)


# (name, solve arguments) of the batched solves run replicated and sharded; each converges in
# under 50 iterations, and max_iter keeps a broken solve from running for minutes
BATCHED = [("balanced", dict(eps=0.05, max_iter=100)),
           ("unbalanced", dict(eps=0.05, cost="dot", tau_a=0.7, tau_b=0.9, max_iter=100)),
           ("entropy", dict(target_entropy=0.3, max_iter=100))]


def _batched_outputs(res):
    out = dict(f=res.f, g=res.g, n_iter=res.n_iter, converged=res.converged, eps=res.eps, errors=res.errors,
               cost=res.transport_cost(), entropy=res.renormalized_entropy(), mass=res.mass(),
               map=res.barycentric_map(), sample=res.sample(torch.Generator().manual_seed(3)),
               samples=res.sample([torch.Generator().manual_seed(4 + k) for k in range(len(res))]),
               cost_0=res[0].transport_cost(), sample_0=res[0].sample(torch.Generator().manual_seed(3)))
    try:
        out["plan"] = res.plan()
    except ValueError as err:
        out["plan"] = str(err)
    return out


def batched(rank, world):
    """The batched solves of BATCHED, replicated and sharded (uneven shards), problem 1 of the
    batch solved alone (2-D) on the same ranks, the same shards, and the bad arguments of
    ``batched_bad_inputs`` (one job: starting the ranks takes longer than all of it)."""
    x, y, a, b = batched_problem()
    group, out = dist.group.WORLD, {}
    r0, r1 = uneven(x.shape[1], world, rank)
    c0, c1 = uneven(y.shape[1], world, rank, reverse=True)
    out["rows"], out["cols"] = (r0, r1), (c0, c1)
    for name, kw in BATCHED:
        rep = ot_flow.sinkhorn(x, y, a, b, process_group=group, progress=False, **kw)
        sh = ot_flow.sinkhorn(x[:, r0:r1], y[:, c0:c1], a[:, r0:r1], b[:, c0:c1], process_group=group, sharded=True,
                              progress=False, **kw)
        out[name] = dict(replicated=_batched_outputs(rep), sharded=_batched_outputs(sh))
    # warm starts from the balanced solves (sharded: the constant moved from f to g is a global one)
    start = {placement: (out["balanced"][placement]["f"], out["balanced"][placement]["g"])
             for placement in ("replicated", "sharded")}
    rep = ot_flow.sinkhorn(x, y, a, b, init=start["replicated"], process_group=group, progress=False, **BATCHED[0][1])
    sh = ot_flow.sinkhorn(x[:, r0:r1], y[:, c0:c1], a[:, r0:r1], b[:, c0:c1], init=start["sharded"],
                          process_group=group, sharded=True, progress=False, **BATCHED[0][1])
    out["warm"] = dict(replicated=dict(f=rep.f, n_iter=rep.n_iter), sharded=dict(f=sh.f, n_iter=sh.n_iter))
    kw = dict(BATCHED[0][1], cost_cache=False, progress=False, process_group=group)
    rep = ot_flow.sinkhorn(x[1], y[1], a[1], b[1], **kw)
    sh = ot_flow.sinkhorn(x[1, r0:r1], y[1, c0:c1], a[1, r0:r1], b[1, c0:c1], sharded=True, **kw)
    out["two_d"] = {name: dict(f=r.f, g=r.g, n_iter=r.n_iter, errors=r.errors) for name, r in
                    (("replicated", rep), ("sharded", sh))}
    # fewer rows than ranks: some ranks compute no block of f, but join the gather
    few = ot_flow.sinkhorn(x[:2, :1], y[:2, :5], eps=0.05, max_iter=100, process_group=group, progress=False)
    out["few_rows"] = dict(f=few.f, g=few.g, n_iter=few.n_iter, sample=few.sample(torch.Generator().manual_seed(3)))
    out["bad"] = batched_bad_inputs(rank, world)
    return out


def batched_bad_inputs(rank, world):
    """Bad arguments on rank 1 only: every rank must raise (the messages are returned), none hang."""
    x, y, a, b = batched_problem()
    group = dist.group.WORLD
    r0, r1 = uneven(x.shape[1], world, rank)
    c0, c1 = uneven(y.shape[1], world, rank, reverse=True)
    nan = x[:, r0:r1].clone()
    nan[1, 0, 0] = float("nan")
    cases = {  # name: (replicated or sharded solve arguments on rank 1, on the others)
        "nan_x": (dict(x=nan, sharded=True), dict(x=x[:, r0:r1], sharded=True)),
        "empty_shard": (dict(x=x[:, :0], sharded=True), dict(x=x[:, r0:r1], sharded=True)),
        "count": (dict(x=x[:2, r0:r1], y=y[:2, c0:c1], sharded=True), dict(x=x[:, r0:r1], sharded=True)),
        "weights": (dict(x=x, y=y, a=a * 2), dict(x=x, y=y, a=a)),
        "shard_weights": (dict(x=x[:, r0:r1], a=a[:, r0:r1] * 3, sharded=True),
                          dict(x=x[:, r0:r1], a=a[:, r0:r1], sharded=True)),
        "init": (dict(x=x, y=y, init=(torch.zeros(3, 61), torch.full((3, 47), float("nan")))),
                 dict(x=x, y=y, init=(torch.zeros(3, 61), torch.zeros(3, 47)))),
    }
    out = {}
    for name, (bad, good) in cases.items():
        kw = dict(bad if rank == 1 else good)
        kw.setdefault("y", y[:, c0:c1])
        try:
            ot_flow.sinkhorn(kw.pop("x"), kw.pop("y"), process_group=group, progress=False, **kw)
            out[name] = "no error"
        except ValueError as err:
            out[name] = str(err)
    return out


JOBS = {"solve": solve, "semidiscrete": semidiscrete, "semidiscrete_multiscale": semidiscrete_multiscale, "bad_shard": bad_shard, "crash": crash,
        "mismatched_dim": mismatched_dim, "missing_rank": missing_rank, "pair_dataset": pair_dataset,
        "unbalanced": unbalanced, "batched": batched}


def on_cuda(job):
    """`job` with its data on the GPU, its results brought back to the CPU for the test."""
    def run_on_cuda(rank, world):
        return _to_cpu(job(rank, world, device="cuda"))
    return run_on_cuda


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


JOBS.update({"solve_cuda": on_cuda(solve), "semidiscrete_cuda": on_cuda(semidiscrete)})


def run(rank, world, job, init_file, out_dir, timeout_s, backend="gloo"):
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        result = JOBS[job](rank, world)
    except Exception as err:  # noqa: BLE001  (the test inspects what each rank raised)
        result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001  (a peer may be gone already)
        pass
