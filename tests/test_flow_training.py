"""Flow-matching training: pair streams, the trainer (resume = uninterrupted), configs that fail
early with the key's path, and the CLI end to end on a tiny 2-D comparison."""

import errno
import json
import os
import sys

import pytest
import torch
import yaml

import ot_flow
from ot_flow import cli
from ot_flow.experiments import config as flow_config
from ot_flow.flow.networks import VelocityMLP, VelocityUNet
from ot_flow.flow.pair_streams import IndependentPairs, OTPairs, SemidiscretePairs
from ot_flow.flow.trainer import CheckpointError, FlowMatchingTrainer


def gaussian_source(n, generator):
    return torch.randn(n, 3, generator=generator)


def shifted_data(n=512, seed=0):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed)) + torch.tensor([4.0, -2.0, 1.0])


def take(stream, start, count):
    out = []
    for k, batch in enumerate(stream.batches(start)):
        if k == count:
            return out
        out.append(batch)


@pytest.mark.parametrize("make", [
    lambda: IndependentPairs(gaussian_source, shifted_data(), 32, seed=3),
    lambda: OTPairs(gaussian_source, shifted_data(), ot_flow.OTSampler(eps=0.05), 128, 32, seed=3),
], ids=["independent", "ot"])
def test_pair_streams_restart_at_any_step(make):
    whole = take(make(), 0, 9)
    for start in (1, 4, 5, 8):  # 4 batches per OT round: restarts inside and at round boundaries
        resumed = take(make(), start, 9 - start)
        for (a0, a1), (b0, b1) in zip(whole[start:], resumed):
            assert torch.equal(a0, b0) and torch.equal(a1, b1)
    assert not torch.equal(whole[0][0], whole[1][0])


def test_ot_pairs_are_closer_than_independent_pairs():
    data = shifted_data(1024)
    ot = take(OTPairs(gaussian_source, data, ot_flow.OTSampler(eps=0.01), 1024, 256), 0, 4)
    ind = take(IndependentPairs(gaussian_source, data, 256), 0, 4)

    def cost(batches):
        return sum((x1 - x0).square().sum(1).mean().item() for x0, x1 in batches) / len(batches)

    # Mean of |x1 - x0|^2 under the OT coupling is W2^2 ~ 21 (the shift); independent adds 2 d = 6.
    assert cost(ot) < cost(ind) - 4.0
    stream = OTPairs(gaussian_source, data, ot_flow.OTSampler(eps=0.01), 1024, 256)
    take(stream, 0, 4)
    assert stream.seconds_per_pair > 0 and stream.describe()["entropy"] < 0.5


def test_semidiscrete_pairs_use_the_fitted_potential():
    data = shifted_data(64)
    sampler = ot_flow.SemidiscreteSampler(data, seed=0)
    with pytest.raises(ValueError, match="not been fitted"):
        SemidiscretePairs(gaussian_source, sampler, 16)
    sampler.fit(200, batch_size=512, progress=False)
    stream = SemidiscretePairs(gaussian_source, sampler, 16, seed=1)
    (x0, x1), = take(stream, 0, 1)
    assert torch.equal(x1, data[sampler.assign(x0)])
    assert torch.equal(take(stream, 0, 1)[0][1], x1)


class InterruptedPairs(IndependentPairs):
    """Raises KeyboardInterrupt (a Ctrl-C mid-run), or ``error``, when asked for the batch of step `stop`."""

    def __init__(self, stop, *args, error=KeyboardInterrupt, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop, self.error = stop, error

    def batches(self, start_step=0):
        for step, batch in enumerate(super().batches(start_step), start_step):
            if step == self.stop:
                raise self.error(f"asked for the batch of step {step}")
            yield batch


def make_trainer(pairs=None, seed=0, log_dir=None, lr=3e-3, width=32):
    torch.manual_seed(seed)
    model = VelocityMLP((3,), width=width, depth=2)
    pairs = pairs or IndependentPairs(gaussian_source, shifted_data(), 64, seed=seed)
    return FlowMatchingTrainer(model, pairs, lr=lr, ema=0.9, warmup_steps=5, schedule="cosine", log_dir=log_dir)


def interrupted_at(stop, error=KeyboardInterrupt):
    return InterruptedPairs(stop, gaussian_source, shifted_data(), 64, seed=0, error=error)


def test_resumed_training_equals_uninterrupted(tmp_path):
    straight = make_trainer().train(20, progress=False, log_every=5)
    checkpoint = str(tmp_path / "c.pt")
    crashed = make_trainer(InterruptedPairs(13, gaussian_source, shifted_data(), 64, seed=0))
    with pytest.raises(KeyboardInterrupt):
        crashed.train(20, progress=False, log_every=5, checkpoint=checkpoint, checkpoint_every=5)
    assert crashed.step == 13
    resumed = make_trainer().load(checkpoint)
    assert resumed.step == 10
    resumed.train(20, progress=False, log_every=5)
    for a, b in zip(straight.velocity.state_dict().values(), resumed.velocity.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    other_seed = make_trainer(seed=1).train(20, progress=False, log_every=5)
    assert not torch.equal(other_seed.model.net[0].weight, straight.model.net[0].weight)


def test_running_the_same_script_again_resumes_instead_of_overwriting(tmp_path):
    # The README's snippet: a fresh trainer, then train(..., checkpoint=path). Run again after a
    # crash, it continues from the checkpoint; run again after the end, it trains nothing.
    checkpoint, log_dir = str(tmp_path / "c.pt"), str(tmp_path / "log")
    straight = make_trainer().train(20, progress=False, log_every=2)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(interrupted_at(13), log_dir=log_dir).train(20, progress=False, log_every=2, checkpoint=checkpoint,
                                                                checkpoint_every=5)
    # A restart from step 0 would ask for the batch of step 5.
    again = make_trainer(interrupted_at(5, AssertionError), log_dir=log_dir).train(
        20, progress=False, log_every=2, checkpoint=checkpoint, checkpoint_every=5)
    assert again.step == 20
    with open(os.path.join(log_dir, "metrics.csv")) as f:  # the rows after step 10 are not logged twice
        assert [int(line.split(",")[0]) for line in f.readlines()[1:]] == list(range(2, 21, 2))
    for a, b in zip(straight.velocity.state_dict().values(), again.velocity.state_dict().values()):
        assert torch.equal(a, b)
    saved = os.path.getmtime(checkpoint), open(checkpoint, "rb").read()
    finished = make_trainer(interrupted_at(0, AssertionError)).train(20, progress=False, checkpoint=checkpoint, checkpoint_every=5)
    assert finished.step == 20 and torch.equal(finished.model.net[0].weight, again.model.net[0].weight)
    assert (os.path.getmtime(checkpoint), open(checkpoint, "rb").read()) == saved


@pytest.mark.parametrize("other, message", [
    (lambda: make_trainer(lr=1e-3), "lr 0.003 there, 0.001 here"),
    (lambda: make_trainer(seed=1), "pairs 'IndependentPairs\\(batch_size=64, seed=0\\)' there, "
                                   "'IndependentPairs\\(batch_size=64, seed=1\\)' here"),
    (lambda: make_trainer(width=16), "another network"),
], ids=["lr", "seed", "network"])
def test_a_checkpoint_of_another_run_is_refused_until_overwrite(tmp_path, other, message):
    checkpoint = str(tmp_path / "c.pt")
    make_trainer().train(10, progress=False, checkpoint=checkpoint, checkpoint_every=5)
    saved = open(checkpoint, "rb").read()
    with pytest.raises(ValueError, match=f"{message}.*overwrite=True"):
        other().train(10, progress=False, checkpoint=checkpoint, checkpoint_every=5)
    assert open(checkpoint, "rb").read() == saved
    fresh = other().train(10, progress=False, checkpoint=checkpoint, checkpoint_every=5, overwrite=True)
    assert fresh.step == 10 and open(checkpoint, "rb").read() != saved


def test_a_cosine_run_is_not_resumed_over_another_length_and_a_trained_trainer_keeps_off(tmp_path):
    checkpoint = str(tmp_path / "c.pt")
    make_trainer().train(10, progress=False, checkpoint=checkpoint, checkpoint_every=5)
    with pytest.raises(ValueError, match="a cosine schedule over 10 steps there, 20 here"):
        make_trainer().train(20, progress=False, checkpoint=checkpoint, checkpoint_every=5)
    longer = make_trainer().load(checkpoint).train(20, progress=False, checkpoint=checkpoint, checkpoint_every=5)
    assert longer.step == 20  # loaded on purpose: continued with the longer schedule
    other = make_trainer().train(3, progress=False)
    with pytest.raises(ValueError, match="trained 3 steps of its own"):
        other.train(6, progress=False, checkpoint=checkpoint, checkpoint_every=5)


@pytest.mark.parametrize("damage", ["half", "empty", "einval"])
def test_a_truncated_checkpoint_is_named(tmp_path, monkeypatch, damage):
    checkpoint = tmp_path / "c.pt"
    make_trainer().train(5, progress=False, checkpoint=str(checkpoint), checkpoint_every=5)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:len(data) // 2] if damage == "half" else b"" if damage == "empty" else data)
    if damage == "einval":  # what torch.load raised on the file that was cut short on one machine
        def failing_load(*args, **kwargs):
            raise OSError(errno.EINVAL, "Invalid argument")
        monkeypatch.setattr(torch, "load", failing_load)
    with pytest.raises(CheckpointError, match=f"argument 'path': {checkpoint} is truncated or corrupt"):
        make_trainer().load(str(checkpoint))
    with pytest.raises(CheckpointError, match=f"argument 'checkpoint': {checkpoint} is truncated or corrupt"):
        make_trainer().train(5, progress=False, checkpoint=str(checkpoint), checkpoint_every=5)


def test_trainer_learns_the_velocity_of_a_translation(tmp_path):
    shift = torch.tensor([1.5, -1.0, 0.5])

    class Translation(IndependentPairs):
        def batches(self, start_step=0):
            for x0, _ in super().batches(start_step):
                yield x0, x0 + shift

    torch.manual_seed(0)
    trainer = FlowMatchingTrainer(VelocityMLP((3,), width=64, depth=2), Translation(gaussian_source, shifted_data(), 128),
                                  lr=3e-3, ema=0.0, log_dir=str(tmp_path))
    trainer.train(300, progress=False, log_every=50)
    x = torch.randn(256, 3)
    with torch.no_grad():
        v = trainer.velocity(x, torch.rand(256))
    assert (v - shift).abs().max() < 0.15
    assert trainer.history[-1]["loss"] < 1e-2 < trainer.history[0]["loss"]
    with open(tmp_path / "metrics.csv") as f:
        assert f.readline().startswith("step,loss,grad_norm,lr")


def test_a_diverging_loss_stops_training_before_its_checkpoint(tmp_path):
    class Exploding(torch.nn.Module):
        """A velocity that turns NaN from its fifth call (the fifth training step) on."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.calls = 0

        def forward(self, x, t):
            self.calls += 1
            return x * self.w * (float("nan") if self.calls >= 5 else 1.0)

    trainer = FlowMatchingTrainer(Exploding(), IndependentPairs(gaussian_source, shifted_data(), 8), ema=0.0)
    checkpoint = tmp_path / "c.pt"
    with pytest.raises(RuntimeError, match="flow_matching loss is nan by step 5"):
        trainer.train(20, progress=False, log_every=10, checkpoint=str(checkpoint), checkpoint_every=5)
    assert not checkpoint.exists()


def test_trainer_rejects_bad_arguments():
    model = VelocityMLP((3,), width=8, depth=1)
    pairs = IndependentPairs(gaussian_source, shifted_data(), 8)
    with pytest.raises(ValueError, match="'lr'"):
        FlowMatchingTrainer(model, pairs, lr=0)
    with pytest.raises(ValueError, match="'lr' must be > 0 and finite, got inf"):
        FlowMatchingTrainer(model, pairs, lr=float("inf"))
    with pytest.raises(ValueError, match="'seed' must be an int >= 0, got -1"):
        FlowMatchingTrainer(model, pairs, seed=-1)
    with pytest.raises(ValueError, match="'schedule'"):
        FlowMatchingTrainer(model, pairs, schedule="step")
    with pytest.raises(ValueError, match="'model'"):
        FlowMatchingTrainer(lambda x, t: x, pairs)
    with pytest.raises(ValueError, match="'num_steps'"):
        FlowMatchingTrainer(model, pairs).train(0)
    with pytest.raises(ValueError, match="no checkpoint"):
        FlowMatchingTrainer(model, pairs).load("/nonexistent/checkpoint.pt")


def test_networks_keep_the_event_shape():
    mlp = VelocityMLP((1, 4, 4), width=16, depth=2)
    unet = VelocityUNet((1, 8, 8), channels=8)
    x, t = torch.randn(5, 1, 4, 4), torch.rand(5)
    assert mlp(x, t).shape == x.shape
    assert mlp.time.out_features == 2 * 2 + 1  # d / 8 = 2 frequencies
    y = torch.randn(3, 1, 8, 8)
    assert unet(y, torch.rand(3)).shape == y.shape
    with pytest.raises(ValueError, match="'shape'"):
        VelocityUNet((1, 7, 7))
    with pytest.raises(ValueError, match="'width'"):
        VelocityMLP((3,), width=0)


TINY = {
    "name": "tiny",
    "task": {"name": "eight_gaussians", "num_train": 2048, "num_test": 256},
    "model": {"width": 32, "depth": 2},
    "train": {"steps": 24, "batch_size": 64, "warmup_steps": 2, "log_every": 8, "checkpoint_every": 12},
    "methods": [{"name": "I-FM", "coupling": "independent"},
                {"name": "OT-FM", "coupling": "ot", "coupling_size": 256, "eps": 0.05},
                {"name": "SD-FM", "coupling": "semidiscrete", "fit_steps": 50, "fit_batch_size": 1024}],
    "eval": {"num_samples": 128, "steps": [1, 4], "nll_samples": 32, "nll_steps": 4, "curvature_steps": 8,
             "rtol": 1e-3},
}


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(optimiser="adam"), "unknown key optimiser"),
    (lambda c: c["train"].update(steps="many"), "'train.steps' must be a int"),
    (lambda c: c["train"].update(lr=-1.0), "'train.lr' must be > 0"),
    (lambda c: c["methods"][1].update(coupling="hungarian"), "'methods\\[1\\].coupling' must be one of"),
    (lambda c: c["methods"][1].pop("eps"), "'methods\\[1\\]' needs exactly one of 'eps' and 'target_entropy'"),
    (lambda c: c["methods"][1].update(coupling_size=16), "'methods\\[1\\].coupling_size' must be"),
    (lambda c: c["methods"][0].update(widht=3), "unknown key methods\\[0\\].widht"),
    (lambda c: c.pop("methods"), "missing key 'methods'"),
    (lambda c: c.update(task={"name": "cifar"}), "'task.name' must be one of"),
    (lambda c: c.update(task={"name": "tensor_file", "path": "/nonexistent/data.pt"}), "does not exist"),
    (lambda c: c.update(task={"name": "eight_gaussians", "dim": 3}), "does not fit eight_gaussians"),
    (lambda c: c["eval"].update(steps=[]), "'eval.steps' must be a non-empty list"),
    # Values that passed the checks before and failed later (after other methods trained, or as NaN):
    (lambda c: c["train"].update(seed=-1), "'train.seed' must be >= 0"),
    (lambda c: c["model"].update(time_frequencies=-3), "'model.time_frequencies' must be >= 1"),
    (lambda c: c["train"].update(lr=float("inf")), "'train.lr' must be > 0 \\(finite\\), got inf"),
    (lambda c: c["train"].update(weight_decay=float("nan")), "'train.weight_decay' must be >= 0 \\(finite\\), got nan"),
    (lambda c: c["methods"][2].update(fit_lr=-1), "'methods\\[2\\].fit_lr' must be > 0 \\(finite\\)"),
    (lambda c: c["eval"].update(sinkhorn_eps=-0.1), "'eval.sinkhorn_eps' must be > 0 \\(finite\\)"),
    (lambda c: c["eval"].update(steps=[1, 0]), "'eval.steps\\[1\\]' must be >= 1"),
    (lambda c: c["train"].update(grad_clip=0), "'train.grad_clip' must be > 0 \\(finite\\)"),
    (lambda c: c["methods"][1].update(tol=float("nan")), "'methods\\[1\\].tol' must be > 0 \\(finite\\)"),
    (lambda c: c["methods"][1].update(eps=0), "'methods\\[1\\].eps' must be > 0 for the 'ot' coupling"),
])
def test_bad_configs_fail_before_training(change, message):
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    change(raw)
    with pytest.raises(ValueError, match=message):
        flow_config.config_from_dict(raw, source="tiny.yaml")


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        flow_config.load_config(str(tmp_path / "missing.yaml"))
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntask: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        flow_config.load_config(str(path))


@pytest.mark.parametrize("name", ["piecewise_affine_d64_gpu.yaml", "piecewise_affine_d64_cpu.yaml", "digits_unet_gpu.yaml",
                                  "toys_2d.yaml"])
def test_shipped_configs_are_valid(name):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = flow_config.load_config(os.path.join(root, "configs", name))
    assert len(config.methods) >= 5


def test_embedded_demo_configs_are_valid():
    for path in cli.demo_config_paths():
        config = flow_config.load_config(path)
        assert {"independent", "ot", "semidiscrete"} <= {m.coupling for m in config.methods}


def test_cli_compare_train_eval_end_to_end(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    cli.main(["compare", "--config", str(path), "--output-dir", str(run), "--quiet"])
    out = capsys.readouterr().out
    for name in ("I-FM", "OT-FM", "SD-FM"):
        assert f"| {name} |" in out
    with open(run / "results.json") as f:
        results = json.load(f)
    assert set(results) == {"I-FM", "OT-FM", "SD-FM"}
    for row in results.values():
        assert row["curvature"] >= 0 and row["reconstruction"] is None
        assert set(row["quality"]) == {"euler1", "euler4", "dopri5"}
        assert all(q["sinkhorn"] == q["sinkhorn"] for q in row["quality"].values())  # not NaN
    assert results["OT-FM"]["pairing_us_per_pair"] > 0 and results["SD-FM"]["setup_seconds"] > 0
    for png in ("metrics_vs_coupling_size.png", "quality_vs_nfe.png", "trajectories.png"):
        assert os.path.getsize(run / png) > 1000
    # eval reloads the checkpoints and gives the same numbers; train --resume at the end is a no-op.
    cli.main(["eval", "--config", str(path), "--output-dir", str(run), "--quiet", "--method", "OT-FM"])
    with open(run / "results.json") as f:
        again = json.load(f)
    assert again["OT-FM"]["curvature"] == pytest.approx(results["OT-FM"]["curvature"], rel=1e-5)
    cli.main(["train", "--config", str(path), "--output-dir", str(run), "--quiet", "--resume", "--method", "I-FM"])
    assert "I-FM: 24 steps" in capsys.readouterr().out
    with pytest.raises(ValueError, match="'FM' is neither a method of the config"):
        cli.main(["eval", "--config", str(path), "--output-dir", str(run), "--quiet", "--method", "FM"])


def test_methods_are_selected_by_name_or_coupling():
    config = flow_config.config_from_dict(yaml.safe_load(yaml.safe_dump(TINY)))
    assert [m.name for m in flow_config.select_methods(config, ["OT-FM", "independent"])] == ["OT-FM", "I-FM"]
    assert [m.name for m in flow_config.select_methods(config, None)] == ["I-FM", "OT-FM", "SD-FM"]
    added = flow_config.select_methods(config, ["nsgf++"])
    assert [(m.name, m.coupling, m.flow_steps) for m in added] == [("NSGF++", "nsgf++", 5)]
    assert config.methods[-1] is added[0]
    with pytest.raises(ValueError, match="needs its coupling size"):
        flow_config.select_methods(flow_config.config_from_dict(yaml.safe_load(yaml.safe_dump(
            {**TINY, "methods": TINY["methods"][:1]}))), ["ot"])


def test_unet_learns_the_velocity_of_an_image_translation():
    torch.manual_seed(0)
    pattern = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)

    def noise(n, generator):
        return torch.randn(n, 1, 8, 8, generator=generator)

    class Shifted(IndependentPairs):
        def batches(self, start_step=0):
            for x0, _ in super().batches(start_step):
                yield x0, x0 + pattern

    trainer = FlowMatchingTrainer(VelocityUNet((1, 8, 8), channels=8), Shifted(noise, torch.zeros(4, 1, 8, 8), 32),
                                  lr=3e-3, ema=0.0)
    trainer.train(150, progress=False, log_every=50)
    assert trainer.history[-1]["loss"] < 0.1 * trainer.history[0]["loss"]


def tiny_config(tmp_path, methods, **train):
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["methods"] = [m for m in raw["methods"] if m["name"] in methods] + \
        [m for m in methods if isinstance(m, dict)]
    raw["train"].update(train)
    path = tmp_path / f"tiny-{len(list(tmp_path.glob('tiny-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_cli_never_replaces_a_run_unasked(tmp_path):
    config, run = tiny_config(tmp_path, ["I-FM"]), str(tmp_path / "run")
    cli.main(["train", "--config", config, "--output-dir", run, "--quiet"])
    checkpoint = os.path.join(run, "I-FM", "checkpoint.pt")
    saved = open(checkpoint, "rb").read()
    for command in ("train", "compare"):
        with pytest.raises(ValueError, match="already holds runs of 'I-FM'.*--resume.*--overwrite"):
            cli.main([command, "--config", config, "--output-dir", run, "--quiet"])
    assert open(checkpoint, "rb").read() == saved
    cli.main(["train", "--config", config, "--output-dir", run, "--quiet", "--overwrite"])
    assert torch.load(checkpoint, weights_only=False)["step"] == 24
    with pytest.raises(SystemExit):  # argparse: one or the other
        cli.main(["train", "--config", config, "--output-dir", run, "--resume", "--overwrite"])


def test_cli_resume_continues_an_interrupted_semidiscrete_fit(tmp_path, monkeypatch, capsys):
    config = tiny_config(tmp_path, ["SD-FM"])  # fit: 50 steps, checkpointed every 5
    cli.main(["train", "--config", config, "--output-dir", str(tmp_path / "whole"), "--quiet"])
    whole = torch.load(tmp_path / "whole" / "SD-FM" / "semidiscrete.pt", weights_only=False)["sampler"]

    steps = []  # the steps of the fit over all 2048 points (the multiscale start fits fewer first)
    fit_class = ot_flow.samplers.semidiscrete_fit.SemidiscreteFit
    gradient = fit_class._gradient

    def interrupted_gradient(self, *args, **kwargs):
        if self.sampler.total == 2048:
            if self.sampler.step == 32 and interrupt:
                raise KeyboardInterrupt
            steps.append(self.sampler.step)
        return gradient(self, *args, **kwargs)

    monkeypatch.setattr(fit_class, "_gradient", interrupted_gradient)
    run = str(tmp_path / "run")
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", "--config", config, "--output-dir", run, "--quiet"])
    assert os.path.exists(os.path.join(run, "SD-FM", "semidiscrete-fit.pt"))
    interrupt, steps[:] = False, []
    cli.main(["train", "--config", config, "--output-dir", run, "--resume"])
    assert steps == list(range(30, 50))  # from the step-30 checkpoint, not from 0
    assert "resuming the semidiscrete fit" in capsys.readouterr().err
    resumed = torch.load(os.path.join(run, "SD-FM", "semidiscrete.pt"), weights_only=False)["sampler"]
    assert torch.equal(resumed["g_ema"], whole["g_ema"]) and resumed["step"] == 50
    assert not os.path.exists(os.path.join(run, "SD-FM", "semidiscrete-fit.pt"))


def test_cli_eval_marks_partial_checkpoints_and_names_missing_ones(tmp_path, capsys):
    twin = {"name": "I-FM b", "coupling": "independent"}
    run = str(tmp_path / "run")
    cli.main(["train", "--config", tiny_config(tmp_path, ["I-FM"], steps=12), "--output-dir", run, "--quiet"])
    os.makedirs(os.path.join(run, "I-FM_b"))
    with open(os.path.join(run, "I-FM", "checkpoint.pt"), "rb") as f:
        data = f.read()
    with open(os.path.join(run, "I-FM_b", "checkpoint.pt"), "wb") as f:
        f.write(data[:len(data) // 3])  # a copy cut short
    capsys.readouterr()
    # The config now asks for 24 steps: the 12-step checkpoint is partial; SD-FM never trained.
    cli.main(["eval", "--config", tiny_config(tmp_path, ["I-FM", "SD-FM", twin], steps=24), "--output-dir", run,
              "--quiet"])
    out, err = capsys.readouterr()
    assert "| I-FM (partial: 12 of 24 steps) |" in out
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    assert lines[0] == "I-FM: partial: its checkpoint was saved at step 12 of 24 (train --resume finishes it)"
    assert lines[1].startswith("SD-FM: not evaluated: method 'SD-FM' has no checkpoint at ") \
        and lines[1].endswith("train it first")
    assert lines[2].startswith("I-FM b: not evaluated: method 'I-FM b': ") and "is truncated or corrupt" in lines[2]
    with open(os.path.join(run, "results.json")) as f:
        results = json.load(f)
    assert set(results) == {"I-FM"} and results["I-FM"]["partial"] and results["I-FM"]["trained_steps"] == 12


def test_cli_errors_from_the_command_line_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m ot_flow", "eval", "--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    assert capsys.readouterr().err == f"python -m ot_flow eval: error: argument 'config': no such file {tmp_path}/missing.yaml\n"
