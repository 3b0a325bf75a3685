"""The trainer's moving average and learning rates come from torch.optim (swa_utils.AveragedModel,
lr_scheduler.LambdaLR): the same numbers as the hand-written rules they replaced, and checkpoints
written by the hand-written trainer resume as they did."""

import math

import pytest
import torch

from ot_flow.flow.networks import VelocityMLP
from ot_flow.flow.pair_streams import IndependentPairs
from ot_flow.flow.trainer import FlowMatchingTrainer

# What the trainer wrote before torch.optim's EMA and schedulers (and still writes).
CHECKPOINT_KEYS = {"model", "ema_model", "optimizer", "step", "seed", "train_seconds", "history", "num_steps", "recipe"}


def source(n, generator):
    return torch.randn(n, 3, generator=generator)


def pairs(seed=0):
    data = torch.randn(256, 3, generator=torch.Generator().manual_seed(1)) + torch.tensor([4.0, -2.0, 1.0])
    return IndependentPairs(source, data, 32, seed=seed)


def old_lr(step, num_steps, lr, warmup_steps, schedule):
    """The hand-written schedule the trainer had: warm-up times cosine, in closed form."""
    scale = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if schedule == "cosine":
        scale *= 0.5 * (1 + math.cos(math.pi * min(step / num_steps, 1.0)))
    return lr * scale


class CountingMLP(VelocityMLP):
    """A network with a buffer that training changes, as BatchNorm's statistics are."""

    def __init__(self):
        super().__init__((3,), width=16, depth=2)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x, t):
        if self.training:
            self.calls += 1
        return super().forward(x, t)


def make_trainer(model=None, **options):
    torch.manual_seed(0)
    options = {"lr": 3e-3, "ema": 0.9, "warmup_steps": 5, "schedule": "cosine", **options}
    return FlowMatchingTrainer(model or VelocityMLP((3,), width=16, depth=2), pairs(), **options)


@pytest.mark.parametrize("schedule, warmup_steps", [("cosine", 5), ("cosine", 0), ("constant", 4), ("constant", 0)])
def test_each_steps_learning_rate_is_the_hand_written_schedules(schedule, warmup_steps):
    trainer = make_trainer(schedule=schedule, warmup_steps=warmup_steps)
    trainer.train(12, progress=False, log_every=1)
    assert [row["lr"] for row in trainer.history] == [old_lr(s, 12, 3e-3, warmup_steps, schedule) for s in range(12)]
    trainer.load_state_dict(trainer.state_dict() | {"step": 4, "history": trainer.history[:4]})
    trainer.train(12, progress=False, log_every=1)  # a run resumed mid-way picks the schedule up at its step
    assert [row["lr"] for row in trainer.history] == [old_lr(s, 12, 3e-3, warmup_steps, schedule) for s in range(12)]


def test_the_moving_average_is_the_hand_written_rule():
    trainer = make_trainer(CountingMLP(), schedule="constant")
    average = [p.detach().clone() for p in trainer.model.parameters()]  # it starts at the initial weights
    for step in range(1, 6):
        trainer.train(step, progress=False)
        average = [a.lerp(p.detach(), 1 - 0.9) for a, p in zip(average, trainer.model.parameters())]
        assert all(torch.equal(a, e) for a, e in zip(average, trainer.velocity.parameters()))
        assert trainer.velocity.calls.item() == trainer.model.calls.item() == step  # buffers copied, not averaged
    assert type(trainer.velocity) is CountingMLP and not any(p.requires_grad for p in trainer.velocity.parameters())


def test_a_checkpoint_of_the_hand_written_trainer_resumes_as_the_uninterrupted_run(tmp_path):
    straight = make_trainer().train(20, progress=False, log_every=5)
    crashed, path = make_trainer(), str(tmp_path / "c.pt")
    crashed.pairs.batches = stop_at(crashed.pairs.batches, 13)
    with pytest.raises(KeyboardInterrupt):
        crashed.train(20, progress=False, log_every=5, checkpoint=path, checkpoint_every=5)
    # As the hand-written trainer saved it at step 10: the same keys, and param groups without
    # LambdaLR's 'initial_lr', whose lr is the one the last step used (LambdaLR's is the next one's).
    old = torch.load(path, weights_only=False)
    assert set(old) == CHECKPOINT_KEYS and old["step"] == 10
    for group in old["optimizer"]["param_groups"]:
        del group["initial_lr"]
        group["lr"] = old_lr(9, 20, 3e-3, 5, "cosine")
    torch.save(old, path)

    resumed = make_trainer()
    resumed.train(20, progress=False, log_every=5, checkpoint=path, checkpoint_every=5)
    assert resumed.step == 20
    for key in ("model", "ema_model", "optimizer"):
        assert_equal(resumed.state_dict()[key], straight.state_dict()[key])
    logged = lambda trainer: [(h["step"], h["loss"], h["grad_norm"], h["lr"]) for h in trainer.history]  # noqa: E731
    assert logged(resumed) == logged(straight)


def stop_at(batches, stop):
    """A pair stream's batches that raise KeyboardInterrupt (a Ctrl-C) at step ``stop``."""
    def interrupted(start_step=0):
        for step, batch in enumerate(batches(start_step), start_step):
            if step == stop:
                raise KeyboardInterrupt
            yield batch
    return interrupted


def assert_equal(a, b):
    """Nested dicts, lists and tensors equal to the bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_equal(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b
