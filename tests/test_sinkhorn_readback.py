"""The Sinkhorn loop reads its marginal error back to the host once every ``check_every``
iterations (readback.py): on a GPU each read waits for the device. Run on the CPU with the
interval forced, which takes the GPU's code path."""

import pytest
import torch

import ot_flow


def clouds(seed, n=300, m=250, d=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64) + 0.5


@pytest.fixture
def host_reads(monkeypatch):
    """A counter of the tensor-to-host reads made from Python (.item, .tolist, bool, float, int)."""
    count = [0]
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            count[0] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return count


@pytest.mark.parametrize("momentum", [False, True])
def test_reads_once_per_interval_not_per_iteration(host_reads, momentum):
    x, y = clouds(0)
    runs = {}
    for every in (1, 10):
        host_reads[0] = 0
        result = ot_flow.sinkhorn(x, y, eps=0.02, tol=1e-6, momentum=momentum, anneal=False, check_every=every,
                                  progress=False)
        assert result.converged and result.n_iter > 50
        runs[every] = host_reads[0], result.n_iter
    reads, n_iter = runs[1]
    assert reads >= n_iter  # the counter sees the loop's reads: one per iteration at interval 1
    reads, n_iter = runs[10]
    setup = runs[1][0] - runs[1][1]  # the reads outside the loop (argument checks, the solve's set-up)
    # One read per 10 iterations, plus the confirmations of momentum steps (a few each time it
    # switches on) and the final read.
    assert reads - setup <= n_iter // 10 + 8, runs


@pytest.mark.parametrize("every", [2, 7, 10])
def test_interval_stops_within_the_interval_of_the_first_converged_iteration(every):
    x, y = clouds(1)
    kwargs = dict(eps=0.02, tol=1e-6, momentum=False, progress=False)
    one = ot_flow.sinkhorn(x, y, check_every=1, **kwargs)
    many = ot_flow.sinkhorn(x, y, check_every=every, **kwargs)
    assert one.converged and many.converged and many.error <= 1e-6
    # Plain Sinkhorn: the same iterates; the read comes at most every - 1 iterations late.
    assert one.n_iter <= many.n_iter < one.n_iter + every
    assert many.errors[:len(one.errors)] == one.errors
    assert len(many.errors) == len(one.errors) + many.n_iter - one.n_iter
    assert many.errors[-1] == many.error


@pytest.mark.parametrize("tau", [1.0, 0.9])
def test_interval_with_momentum_converges(tau):
    x, y = clouds(2)
    result = ot_flow.sinkhorn(x, y, eps=0.01, tol=1e-6, tau_a=tau, tau_b=tau, check_every=10, progress=False)
    assert result.converged and result.error <= 1e-6
    reference = ot_flow.sinkhorn(x, y, eps=0.01, tol=1e-6, tau_a=tau, tau_b=tau, progress=False)
    torch.testing.assert_close(result.f, reference.f, rtol=0, atol=1e-4)


def test_interval_at_max_iter_reports_the_last_error_read():
    x, y = clouds(3)
    with pytest.warns(RuntimeWarning, match="not converged after 25 iterations"):
        result = ot_flow.sinkhorn(x, y, eps=0.05, tol=1e-12, max_iter=25, check_every=10, progress=False)
    assert not result.converged and result.n_iter == 25
    assert len(result.errors) == 24 and result.error == result.errors[-1]  # the last state is not measured


def test_check_every_is_checked_and_auto_follows_the_device():
    x, y = clouds(4, 20, 20)
    for bad in (0, -1, 2.5, True, "sometimes"):
        with pytest.raises(ValueError, match="check_every"):
            ot_flow.sinkhorn(x, y, check_every=bad)
    from ot_flow.solvers import validation
    assert validation.check_every("auto", torch.device("cpu")) == 1
    assert validation.check_every("auto", torch.device("cuda")) == 10
    assert validation.check_every(3, torch.device("cuda")) == 3


def test_loops_hand_out_ordinary_tensors():
    """The loops run in inference mode (solvers/inference.py); what they return must work with
    autograd and in-place ops like any tensor (an inference tensor would refuse all three)."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 30, 2, generator=g), torch.randn(2, 20, 2, generator=g)
    for res in (ot_flow.sinkhorn(x[0], y[0], progress=False), ot_flow.sinkhorn(x[0], y[0], anneal=True,
                                                                              progress=False),
                ot_flow.sinkhorn(x, y, progress=False), ot_flow.sinkhorn(x, y, cost_cache=False, progress=False)):
        parts = [res.f, res.g] + ([res.working.f, res.working.g] if hasattr(res, "working") else
                                  [p.working.f for p in res] + [p.working.g for p in res])
        assert not any(torch.is_inference(t) for t in parts)
        w = torch.ones_like(res.f, requires_grad=True)
        (w * res.f).sum().backward()
        assert torch.equal(w.grad, res.f)
        res.f.clone().requires_grad_()
        res.f.add_(0.0)


@pytest.mark.parametrize("tau", [1.0, 0.6])
def test_symmetric_loop_hands_out_an_ordinary_potential(tau):
    from ot_flow.solvers.symmetric import symmetric_potential

    x = torch.randn(25, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    p = symmetric_potential(x, eps=0.5, tau=tau).p
    assert not torch.is_inference(p)
    w = torch.ones_like(p, requires_grad=True)
    (w * p).sum().backward()
    p.add_(0.0)
