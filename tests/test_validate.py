"""validate=False on the ops the Sinkhorn loop calls (lse, softmin, lse_dense): the checks that
read the data (and so wait for the device on CUDA) are skipped, the shape/dtype/device rules are
not, and the solver's half-steps use it (they check the potentials themselves, readback.py)."""

import pytest
import torch

import ot_flow
from ot_flow.solvers import sinkhorn_halves
from problems import random_problem


def test_lse_and_softmin_skip_the_value_checks_only():
    x, y, h = random_problem(20, 30, 3, torch.float32)
    bad = h.clone()
    bad[4] = float("nan")
    with pytest.raises(ValueError, match="argument 'h' contains NaN"):
        ot_flow.ops.lse(x, y, bad, 0.5)
    assert torch.isnan(ot_flow.ops.lse(x, y, bad, 0.5, validate=False)).all()
    with pytest.raises(ValueError, match="contains NaN"):
        ot_flow.ops.softmin(x, y, bad, 0.5)
    assert torch.isnan(ot_flow.ops.softmin(x, y, bad, 0.5, validate=False)).all()
    # Shapes, dtypes and devices are still checked.
    with pytest.raises(ValueError, match="argument 'h' must be a 1-D tensor of length 30"):
        ot_flow.ops.lse(x, y, h[:-1], 0.5, validate=False)
    with pytest.raises(ValueError, match="argument 'g' must be a 1-D tensor of length 30"):
        ot_flow.ops.softmin(x, y, h[:-1], 0.5, validate=False)
    # Valid data: the same bits either way, 2-D and batched.
    assert torch.equal(ot_flow.ops.lse(x, y, h, 0.5, validate=False), ot_flow.ops.lse(x, y, h, 0.5))
    xs, ys, hs = torch.stack([x, x + 1]), torch.stack([y, y]), torch.stack([h, h])
    assert torch.equal(ot_flow.ops.lse(xs, ys, hs, [0.5, 2.0], validate=False), ot_flow.ops.lse(xs, ys, hs, [0.5, 2.0]))


def test_lse_dense_skips_the_value_checks_only():
    x, y, h = random_problem(20, 30, 3, torch.float64)
    dots, shift = x @ y.T, torch.zeros(20, dtype=torch.float64)
    shift[0] = float("inf")
    with pytest.raises(ValueError, match="argument 'shift' contains NaN or Inf"):
        ot_flow.ops.lse_dense(dots, h, 0.5, 1, shift)
    ot_flow.ops.lse_dense(dots, h, 0.5, 1, shift, validate=False)  # the shift is only a hint
    with pytest.raises(ValueError, match="argument 'dim'"):
        ot_flow.ops.lse_dense(dots, h, 0.5, 3, validate=False)
    assert torch.equal(ot_flow.ops.lse_dense(dots, h, 0.5, 1, validate=False), ot_flow.ops.lse_dense(dots, h, 0.5, 1))


def test_opcheck_with_validate_false():
    x, y, h = random_problem(9, 70, 5, torch.float32)
    torch.library.opcheck(torch.ops.ot_flow.lse.default, (x, y, h, 0.5, None, "highest", False))
    torch.library.opcheck(torch.ops.ot_flow.lse_dense.default, (x @ y.T, h, 0.5, 1, None, False))
    x.requires_grad_()
    out = ot_flow.ops.lse(x, y, h, 0.5, validate=False)
    (grad,) = torch.autograd.grad(out.sum(), x)
    (expected,) = torch.autograd.grad(ot_flow.ops.lse(x, y, h, 0.5).sum(), x)
    assert torch.equal(grad, expected)


@pytest.mark.parametrize("cost_cache", [False, True])
def test_sinkhorn_half_steps_do_not_validate(monkeypatch, cost_cache):
    calls = []

    def recording(op):
        def call(*args, **kwargs):
            calls.append(kwargs.get("validate", True))
            return op(*args, **kwargs)
        return call

    monkeypatch.setattr(sinkhorn_halves, "softmin", recording(sinkhorn_halves.softmin))
    monkeypatch.setattr(sinkhorn_halves, "softmin_dense", recording(sinkhorn_halves.softmin_dense))
    x, y, _ = random_problem(50, 60, 2, torch.float32)
    result = ot_flow.sinkhorn(x, y, eps=0.1, cost_cache=cost_cache)
    assert result.converged and len(calls) >= 2 * result.n_iter
    assert not any(calls)


@pytest.mark.parametrize("check_every", [1, 4])
@pytest.mark.parametrize("cost_cache", [False, True])
@pytest.mark.parametrize("call,bad", [(7, float("nan")), (8, float("-inf")), (9, float("inf"))])
def test_sinkhorn_still_reports_non_finite_potentials(monkeypatch, check_every, cost_cache, call, bad):
    # With the ops no longer looking, a half-step with one non-finite entry must be caught by the
    # loop's own checks: an odd call is an f-update (its marginal error), an even one a g-update
    # (its checksum).
    name = "softmin_dense" if cost_cache else "softmin"
    op, calls = getattr(sinkhorn_halves, name), []

    def failing(*args, **kwargs):
        calls.append(1)
        out = op(*args, **kwargs)
        if len(calls) == call:
            out = out.clone()
            out[5] = bad
        return out

    monkeypatch.setattr(sinkhorn_halves, name, failing)
    x, y, _ = random_problem(50, 60, 2, torch.float32)
    with pytest.raises(RuntimeError, match="potentials became non-finite"):
        ot_flow.sinkhorn(x, y, eps=0.01, cost_cache=cost_cache, check_every=check_every, tol=1e-9, max_iter=100,
                         anneal=False)


def test_mips_and_gumbel_skip_the_value_checks_only():
    x, y, h = random_problem(20, 30, 3, torch.float32)
    bad = h.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="argument 'bias' contains NaN"):
        ot_flow.ops.mips(x, y, bad)
    ot_flow.ops.mips(x, y, bad, validate=False)
    with pytest.raises(ValueError, match="argument 'h' contains NaN"):
        ot_flow.ops.gumbel_argmax(x, y, bad, seed=1)
    ot_flow.ops.gumbel_argmax(x, y, bad, seed=1, validate=False)
    with pytest.raises(ValueError, match="argument 'k'"):
        ot_flow.ops.mips(x, y, h, 31, validate=False)
    for validate in (True, False):
        assert torch.equal(ot_flow.ops.mips(x, y, h, 2, validate=validate)[1], ot_flow.ops.mips(x, y, h, 2)[1])
        assert torch.equal(ot_flow.ops.gumbel_argmax(x, y, h, seed=4, validate=validate),
                           ot_flow.ops.gumbel_argmax(x, y, h, seed=4))
    torch.library.opcheck(torch.ops.ot_flow.mips.default, (x, y, h, 2, "highest", False))


def test_semidiscrete_fit_steps_do_not_validate_and_catch_divergence(monkeypatch):
    from ot_flow.solvers import semidiscrete

    calls = []
    mips = semidiscrete.mips

    def recording(*args, **kwargs):
        calls.append(kwargs.get("validate", True))
        return mips(*args, **kwargs)

    monkeypatch.setattr(semidiscrete, "mips", recording)
    data = torch.randn(40, 2)
    checked = {}
    for steps in (20, 40):  # one log each: the validated calls (start, log) do not grow with the steps
        calls.clear()
        ot_flow.SemidiscreteSampler(data, seed=1).fit(steps, batch_size=32, progress=False, log_every=steps)
        assert calls.count(False) >= steps
        checked[steps] = calls.count(True)
    assert checked[20] == checked[40]
    # A diverging fit (an absurd learning rate) raises at its next log instead of going on with NaN.
    with pytest.raises(RuntimeError, match="non-finite"):
        ot_flow.SemidiscreteSampler(data, seed=1).fit(50, batch_size=32, progress=False, log_every=5, lr=1e300,
                                                       optimizer="sgd")
