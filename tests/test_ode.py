import math

import pytest
import torch
import torchdiffeq

from ot_flow.flow.ode import METHODS, odeint


def linear_problem(seed, batch=4, dim=3):
    """dx/dt = (1 + t) A x, solved by x(t) = expm((t + t^2 / 2) A) x(0)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64) / 2
    x0 = torch.randn(batch, dim, generator=g, dtype=torch.float64)

    def velocity(x, t):
        return (1 + t)[:, None] * (x @ a.T)

    def exact(x, t_from, t_to):
        phase = (t_to + t_to ** 2 / 2) - (t_from + t_from ** 2 / 2)
        return x @ torch.linalg.matrix_exp(phase * a).T

    return velocity, x0, exact


@pytest.mark.parametrize("method, order, steps", [("euler", 1, 32), ("midpoint", 2, 16), ("rk4", 4, 8)])
def test_fixed_step_methods_converge_at_their_order(method, order, steps):
    velocity, x0, exact = linear_problem(seed=0)
    target = exact(x0, 0.0, 1.0)
    errors = [(odeint(velocity, x0, method=method, steps=n).x - target).abs().max().item()
              for n in (steps, 2 * steps, 4 * steps)]
    observed = [math.log2(coarse / fine) for coarse, fine in zip(errors, errors[1:])]
    assert all(abs(p - order) < 0.2 for p in observed), observed


def test_dopri5_is_accurate_with_fewer_evaluations_than_rk4():
    velocity, x0, exact = linear_problem(seed=1)
    target = exact(x0, 0.0, 1.0)
    sol = odeint(velocity, x0, method="dopri5", rtol=1e-8, atol=1e-8)
    error = (sol.x - target).abs().max().item()
    assert error < 1e-7
    steps = 1
    while (odeint(velocity, x0, method="rk4", steps=steps).x - target).abs().max().item() > error:
        steps += 1
    assert 2 * sol.nfe < 4 * steps, (sol.nfe, steps)
    looser = odeint(velocity, x0, method="dopri5", rtol=1e-4, atol=1e-4)
    assert looser.nfe < sol.nfe
    assert (looser.x - target).abs().max().item() > error


@pytest.mark.parametrize("method, steps", [("euler", 400), ("midpoint", 100), ("rk4", 40), ("dopri5", None)])
def test_backwards_integration_inverts_forwards(method, steps):
    velocity, x0, exact = linear_problem(seed=2)
    tol = {"euler": 2e-2, "midpoint": 1e-4, "rk4": 1e-7, "dopri5": 1e-6}[method]
    options = dict(method=method, steps=steps, rtol=1e-9, atol=1e-9)
    x1 = odeint(velocity, x0, **options).x
    back = odeint(velocity, x1, t0=1.0, t1=0.0, **options)
    assert (back.x - x0).abs().max().item() < tol
    assert (back.x - exact(x1, 1.0, 0.0)).abs().max().item() < tol
    assert back.times[0].item() == 1.0 and back.times[-1].item() == 0.0
    assert (back.times.diff() < 0).all()


def test_path_times_and_evaluation_counts():
    velocity, x0, _ = linear_problem(seed=3)
    for method, per_step in (("euler", 1), ("midpoint", 2), ("rk4", 4)):
        sol = odeint(velocity, x0, method=method, steps=5, t0=0.5, t1=2.0, return_path=True)
        assert sol.nfe == 5 * per_step
        assert torch.allclose(sol.times, torch.linspace(0.5, 2.0, 6, dtype=torch.float64))
        assert sol.path.shape == (6, *x0.shape)
        assert torch.equal(sol.path[0], x0) and torch.equal(sol.path[-1], sol.x)
        assert odeint(velocity, x0, method=method, steps=5).path is None

    calls = []
    counted = lambda x, t: calls.append(t) or velocity(x, t)  # noqa: E731
    sol = odeint(counted, x0, method="dopri5", return_path=True)
    assert sol.nfe == len(calls)
    assert sol.times[0].item() == 0.0 and sol.times[-1].item() == 1.0 and (sol.times.diff() > 0).all()
    assert sol.path.shape == (len(sol.times), *x0.shape)
    assert torch.equal(sol.path[-1], sol.x)
    # first same as last: six new evaluations per attempted step, plus two to start (k1, step guess)
    assert (sol.nfe - 2) % 6 == 0 and (sol.nfe - 2) // 6 >= len(sol.times) - 1


def test_velocity_receives_per_sample_times_like_x():
    x0 = torch.zeros(3, 2, dtype=torch.float32)
    seen = []

    def velocity(x, t):
        seen.append(t)
        return torch.ones_like(x)

    odeint(velocity, x0, method="midpoint", steps=2, t0=1.0, t1=0.0)
    assert all(t.shape == (3,) and t.dtype == torch.float32 and torch.all(t == t[0]) for t in seen)
    assert [t[0].item() for t in seen] == [1.0, 0.75, 0.5, 0.25]


@pytest.mark.parametrize("method", METHODS)
def test_event_shapes(method):
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64)
    velocity = lambda x, t: -t.view(-1, 1, 1, 1) * x  # noqa: E731  x(1) = x(0) exp(-1/2)
    sol = odeint(velocity, x0, method=method, steps=None if method == "dopri5" else 20, return_path=True)
    assert sol.x.shape == x0.shape and sol.path.shape[1:] == x0.shape
    tol = {"euler": 3e-2, "midpoint": 5e-4, "rk4": 1e-7, "dopri5": 1e-5}[method]
    assert torch.allclose(sol.x, x0 * math.exp(-0.5), rtol=tol, atol=0)


def test_one_euler_step_is_exact_for_a_translation():
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    c = torch.randn(4, generator=g, dtype=torch.float64)
    sol = odeint(lambda x, t: c.expand_as(x), x0, method="euler", steps=1, t0=0.25, t1=-0.5)
    assert torch.allclose(sol.x, x0 - 0.75 * c, rtol=0, atol=1e-15)
    assert sol.nfe == 1


def test_gradients_flow_through_the_solver():
    velocity, x0, exact = linear_problem(seed=6)
    x0 = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(odeint(velocity, x0, method="rk4", steps=32).x.sum(), x0)
    expected = torch.autograd.functional.vjp(lambda x: exact(x, 0.0, 1.0), x0.detach(), torch.ones_like(x0))[1]
    assert torch.allclose(grad, expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert not odeint(velocity, x0, method="dopri5").x.requires_grad


def test_dopri5_error_norm_is_not_diluted_by_easy_samples():
    velocity, x0, _ = linear_problem(seed=7, batch=1)
    alone = odeint(velocity, x0, method="dopri5", rtol=1e-6, atol=1e-6)
    padded = odeint(velocity, torch.cat([x0, torch.zeros(63, 3, dtype=torch.float64)]), method="dopri5",
                    rtol=1e-6, atol=1e-6)
    # The max over samples keeps the hard sample's step sequence whatever else is in the batch.
    # Not bit for bit: x @ a.T of 1 row and of 64 rows take different BLAS kernels (gemv / gemm,
    # and a CPU's own kernels), whose last bits differ; a diluted (mean) error norm would take
    # far larger steps, which these tolerances still catch.
    assert padded.nfe == alone.nfe
    torch.testing.assert_close(padded.times, alone.times, rtol=1e-10, atol=0)
    torch.testing.assert_close(padded.x[:1], alone.x, rtol=1e-10, atol=0)


def test_dopri5_gives_up_after_max_steps():
    x0 = torch.ones(2, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="max_steps"):
        odeint(lambda x, t: -50.0 * x, x0, method="dopri5", rtol=1e-10, atol=1e-10, max_steps=5)


@pytest.mark.parametrize("kwargs, name", [
    (dict(method="heun", steps=4), "method"),
    (dict(method="euler", steps=0), "steps"),
    (dict(method="rk4"), "steps"),
    (dict(method="rk4", steps=2.0), "steps"),
    (dict(method="dopri5", steps=8), "steps"),
    (dict(steps=4, t0=1.0, t1=1.0), "t0"),
    (dict(steps=4, t1=float("nan")), "t1"),
    (dict(method="dopri5", rtol=0.0), "rtol"),
    (dict(method="dopri5", max_steps=0), "max_steps"),
    (dict(steps=4, convention="ts"), "convention"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=f"'{name}'"):
        odeint(lambda x, t: x, x0, **kwargs)


def test_bad_velocity_and_state_name_the_argument():
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="'velocity'"):
        odeint(3.0, x0, steps=2)
    with pytest.raises(ValueError, match="'velocity'"):
        odeint(lambda x, t: x[:, :2], x0, steps=2)
    with pytest.raises(ValueError, match="'x0'"):
        odeint(lambda x, t: x, [[0.0, 1.0]], steps=2)
    with pytest.raises(ValueError, match="'x0'"):
        odeint(lambda x, t: x, torch.zeros(2, 3, dtype=torch.long), steps=2)
    with pytest.raises(ValueError, match="'x0'"):
        odeint(lambda x, t: x, torch.full((2, 3), float("inf")), steps=2)


class TorchCFMWrapper(torch.nn.Module):
    """A field written for torchdiffeq (as torchcfm's torch_wrapper): f(t, x), t a 0-dim tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, t, x):
        return self.model(torch.cat([x, t.repeat(x.shape[0])[:, None]], 1))


@pytest.mark.parametrize("method, steps", [("euler", 6), ("midpoint", 6), ("rk4", 6), ("dopri5", None)])
def test_a_torchdiffeq_style_field_integrates_like_the_same_velocity(method, steps):
    torch.manual_seed(8)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    x0 = torch.randn(10, 3, dtype=torch.float64)
    options = dict(method=method, steps=steps, t0=1.0, t1=0.25, return_path=True)
    xt = odeint(lambda x, t: net(torch.cat([x, t[:, None]], 1)), x0, **options)
    tx = odeint(TorchCFMWrapper(net), x0, convention="tx", **options)
    assert torch.equal(tx.x, xt.x) and torch.equal(tx.path, xt.path) and tx.nfe == xt.nfe
    with pytest.raises(RuntimeError):  # the same field in the default order: x and t swapped
        odeint(TorchCFMWrapper(net), x0, **options)


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_fixed_steps_are_torchdiffeqs(method):
    velocity, x0, _ = linear_problem(seed=9)
    f = lambda t, x: velocity(x, t.repeat(x.shape[0]))  # noqa: E731
    grid = torch.linspace(1.0, -0.5, 9, dtype=torch.float64)
    ours = odeint(f, x0, method=method, steps=8, t0=1.0, t1=-0.5, return_path=True, convention="tx")
    assert torch.equal(ours.path, torchdiffeq.odeint(f, x0, grid, method=method))


def test_rk4_is_the_classical_method_and_dopri5_agrees_with_torchdiffeqs():
    seen = []
    odeint(lambda x, t: seen.append(t[0].item()) or -x, torch.ones(1, 1), method="rk4", steps=1, t1=2.0)
    assert seen == [0.0, 1.0, 1.0, 2.0]  # not torchdiffeq's 3/8 rule (stage times 0, 2/3, 4/3, 2)
    velocity, x0, exact = linear_problem(seed=10)
    ours = odeint(velocity, x0, method="dopri5", rtol=1e-9, atol=1e-9).x
    span = torch.tensor([0.0, 1.0], dtype=torch.float64)
    theirs = torchdiffeq.odeint(lambda t, x: velocity(x, t.repeat(x.shape[0])), x0, span, method="dopri5",
                                rtol=1e-9, atol=1e-9)[-1]
    assert (ours - exact(x0, 0.0, 1.0)).abs().max().item() < 1e-8
    assert (ours - theirs).abs().max().item() < 1e-8
