"""NSGF and NSGF++: the pool of Sinkhorn-flow steps, velocity matching on it, the two-phase
sampler, and both methods through the CLI."""

import json

import pytest
import torch
import yaml

import ot_flow
from ot_flow import cli
from ot_flow.flow.networks import VelocityMLP
from ot_flow.flow.trainer import FlowMatchingTrainer
from ot_flow.nsgf.plus_plus import NSGFPlusPlus, TimePredictor
from ot_flow.nsgf.pool import SinkhornFlowPool

SHIFT = torch.tensor([3.0, -2.0])


def source(n, generator):
    return torch.randn(n, 2, generator=generator)


def data(n=2048):
    return 0.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(5)) + SHIFT


def test_pool_holds_the_simulated_steps():
    pool = SinkhornFlowPool(source, data(), num_steps=3, step_size=0.5, particles=200, trajectories=2, eps=0.1,
                            batch_size=64, seed=1)
    assert pool.x.shape == (1200, 2) and pool.v.shape == (1200, 2)
    assert sorted(set(pool.t.tolist())) == pytest.approx([0.0, 1 / 3, 2 / 3])
    first = pool.x[:200]  # trajectory 0, step 0: the starting particles
    second = pool.x[200:400]
    assert torch.allclose(second, first + pool.v[:200] / 3)  # x1 = x0 + eta u0 and v = T eta u
    # The velocity stored is the Sinkhorn-flow velocity toward the trajectory's targets.
    assert pool.v[:200].mean(0).sub(3 * 0.5 * (SHIFT - first.mean(0))).norm() < 0.5
    end = pool.endpoints[:200]
    assert (end.mean(0) - SHIFT).norm() < (first.mean(0) - SHIFT).norm() * 0.3
    again = SinkhornFlowPool(source, data(), num_steps=3, step_size=0.5, particles=200, trajectories=2, eps=0.1,
                             batch_size=64, seed=1)
    assert torch.equal(again.v, pool.v)
    b0 = next(pool.batches(5))
    assert all(torch.equal(a, b) for a, b in zip(b0, next(again.batches(5))))
    with pytest.raises(ValueError, match="'step_size'"):
        SinkhornFlowPool(source, data(), num_steps=3, step_size=0.0)


def test_velocity_matching_learns_the_flow_and_sampling_follows_it():
    torch.manual_seed(0)
    target = data()
    pool = SinkhornFlowPool(source, target, num_steps=5, step_size=0.5, particles=512, trajectories=4, eps=0.1,
                            batch_size=256, seed=0)
    trainer = FlowMatchingTrainer(VelocityMLP((2,), width=64, depth=3), pool, lr=3e-3, ema=0.0,
                                  objective="velocity_matching")
    trainer.train(400, progress=False, log_every=100)
    x0 = torch.randn(1000, 2, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        x = ot_flow.flow.odeint(trainer.velocity, x0, method="euler", steps=5).x
    before = ot_flow.sinkhorn_divergence(x0, target[:1000], eps=0.1).item()
    after = ot_flow.sinkhorn_divergence(x, target[:1000], eps=0.1).item()
    assert after < 0.05 * before
    assert trainer.history[-1]["loss"] < 0.2 * trainer.history[0]["loss"]


class Translation(torch.nn.Module):
    def __init__(self, shift):
        super().__init__()
        self.shift = shift

    def forward(self, x, t):
        return self.shift.expand_as(x)


class ConstantTime(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0],), self.value)


def test_two_phase_sampler_continues_the_straight_flow_from_the_predicted_time():
    # NSGF phase moves by SHIFT / 2; the predictor says "half way"; the straight flow's velocity
    # is SHIFT, so the remaining half of the way adds SHIFT / 2, whatever the number of steps.
    model = NSGFPlusPlus(Translation(SHIFT / 2), Translation(SHIFT), ConstantTime(0.5), nsgf_steps=3)
    x0 = torch.randn(10, 2)
    for steps in (1, 4):
        x, nfe, t0 = model.sample(x0, steps, return_time=True)
        assert torch.allclose(x, x0 + SHIFT, atol=1e-6)
        assert nfe == 3 + steps + 1 and torch.equal(t0, torch.full((10,), 0.5))
    with pytest.raises(ValueError, match="'straight_steps'"):
        model.sample(x0, 0)


def test_time_predictor_learns_where_a_point_is_on_the_straight_paths():
    torch.manual_seed(0)
    predictor = TimePredictor((2,), width=64, depth=2)
    pairs = ot_flow.flow.IndependentPairs(source, data(), 256)
    trainer = FlowMatchingTrainer(predictor, pairs, lr=3e-3, ema=0.0, objective="time_prediction")
    trainer.train(300, progress=False, log_every=100)
    x0, x1 = torch.randn(500, 2), data(500)
    with torch.no_grad():
        early, middle, late = (float(trainer.velocity((1 - t) * x0 + t * x1).mean()) for t in (0.1, 0.5, 0.9))
    # The regression gives E[t | x_t]: pulled toward 1/2 where the paths' ends overlap the noise.
    assert early < 0.3 and abs(middle - 0.5) < 0.1 and late > 0.7


def test_nsgf_methods_through_the_cli(tmp_path, capsys):
    config = {
        "name": "nsgf",
        "task": {"name": "eight_gaussians", "num_train": 2048, "num_test": 256},
        "model": {"width": 32, "depth": 2},
        "train": {"steps": 20, "batch_size": 64, "warmup_steps": 2, "log_every": 10, "checkpoint_every": 10},
        "methods": [{"name": "NSGF", "coupling": "nsgf", "flow_steps": 4, "flow_step_size": 0.4,
                     "flow_particles": 128, "flow_trajectories": 2},
                    {"name": "NSGF++", "coupling": "nsgf++", "flow_steps": 2, "flow_particles": 128,
                     "flow_trajectories": 2}],
        "eval": {"num_samples": 128, "steps": [1, 4], "nll_samples": 32, "nll_steps": 4, "curvature_steps": 8,
                 "rtol": 1e-3},
    }
    path = tmp_path / "nsgf.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    cli.main(["compare", "--config", str(path), "--output-dir", str(run), "--quiet"])
    out = capsys.readouterr().out
    assert "| NSGF |" in out and "| NSGF++ |" in out
    with open(run / "results.json") as f:
        results = json.load(f)
    assert results["NSGF"]["curvature"] >= 0 and results["NSGF"]["setup_seconds"] > 0
    assert results["NSGF++"]["curvature"] is None and results["NSGF++"]["bpd"] is None
    assert [results["NSGF++"]["quality"][k]["nfe"] for k in ("euler1", "euler4")] == [2 + 1 + 1, 2 + 4 + 1]
    assert set(results["NSGF"]["quality"]) == {"euler1", "euler4", "dopri5"}
    assert (run / "NSGF++" / "predictor" / "checkpoint.pt").exists()
    cli.main(["eval", "--config", str(path), "--output-dir", str(run), "--quiet", "--method", "NSGF++"])
    with open(run / "results.json") as f:
        again = json.load(f)
    assert again["NSGF++"]["quality"]["euler4"]["sinkhorn"] == pytest.approx(
        results["NSGF++"]["quality"]["euler4"]["sinkhorn"], rel=1e-5)

