"""Contracts that cut across the ops: one device per call, no silent overflow, bitwise the same
results for any thread count, exact gradients of any order, and clear errors for arguments of the
wrong type."""

import pytest
import torch

import ot_flow
from problems import random_problem

OPS = ot_flow.ops


# --- Devices -------------------------------------------------------------------------------
# A meta tensor among CPU ones used to send the call to the fake kernel, which returned
# uninitialised memory on the CPU (indices like 1812518731776 from gumbel_argmax).

def _calls(x, y, h, values, dots, dh):
    return {
        "lse": lambda: OPS.lse(x, y, h, 0.5),
        "softmin": lambda: OPS.softmin(x, y, h, 0.5),
        "barycentric": lambda: OPS.barycentric(x, y, h, 0.5, values),
        "mips": lambda: OPS.mips(x, y, h, 2),
        "gumbel_argmax": lambda: OPS.gumbel_argmax(x, y, h, 0.5, seed=1),
        "lse_dense": lambda: OPS.lse_dense(dots, dh, 0.5, 1, None),
    }


def _inputs(device_of):
    """Inputs of every op with each argument on the device device_of(name) says."""
    x, y, h = random_problem(40, 30, 3, torch.float32, seed=0)
    values, dots, dh = torch.randn(30, 2), torch.randn(40, 30), torch.randn(30)
    named = dict(x=x, y=y, h=h, values=values, dots=dots, dh=dh)
    return {k: t.to(device_of(k)) for k, t in named.items()}


DEVICE_CASES = [
    ("lse", "y", "argument 'y' is on meta but 'x' is on cpu"),
    ("lse", "x", "argument 'y' is on cpu but 'x' is on meta"),
    ("lse", "h", "argument 'h' is on meta but 'x' is on cpu"),
    ("softmin", "y", "argument 'y' is on meta but 'x' is on cpu"),
    ("softmin", "h", "argument 'g' is on meta but 'x' is on cpu"),
    ("barycentric", "y", "argument 'y' is on meta but 'x' is on cpu"),
    ("barycentric", "values", "argument 'values' is on meta but 'x' is on cpu"),
    ("mips", "y", "argument 'y' is on meta but 'x' is on cpu"),
    ("mips", "h", "argument 'bias' is on meta but 'x' is on cpu"),
    ("gumbel_argmax", "x", "argument 'y' is on cpu but 'x' is on meta"),
    ("gumbel_argmax", "h", "argument 'h' is on meta but 'x' is on cpu"),
    ("lse_dense", "dh", "argument 'h' is on meta but 'dots' is on cpu"),
    ("lse_dense", "dots", "argument 'h' is on cpu but 'dots' is on meta"),
]


@pytest.mark.parametrize("op,moved,message", DEVICE_CASES, ids=[f"{c[0]}-{c[1]}" for c in DEVICE_CASES])
def test_an_argument_on_another_device_raises(op, moved, message):
    inputs = _inputs(lambda k: "meta" if k == moved else "cpu")
    with pytest.raises(ValueError, match=f"ot_flow.{op}: {message}; put them on one device"):
        _calls(**inputs)[op]()


def test_all_meta_inputs_still_give_shapes():
    inputs = _inputs(lambda k: "meta")
    for op, call in _calls(**inputs).items():
        out = call()
        first = out[0] if isinstance(out, tuple) else out
        assert first.device.type == "meta" and first.shape[0] == 40, op


def test_a_cpu_input_with_grad_and_a_meta_input_raise():
    x, y, h = random_problem(40, 30, 3, torch.float32, seed=0)
    with pytest.raises(ValueError, match="argument 'y' is on meta but 'x' is on cpu"):
        OPS.lse(x.requires_grad_(), y.to("meta"), h, 1.0)


# --- Overflow ------------------------------------------------------------------------------
# float32 dot products of coordinates around 1e19 and 1e20 overflow: NaN from lse and
# barycentric, +inf with arbitrary indices from mips, arbitrary draws from gumbel_argmax.

OVERFLOWING = {
    "lse": lambda x, y: OPS.lse(x, y),
    "softmin": lambda x, y: OPS.softmin(x, y, torch.zeros(len(y), dtype=y.dtype), 1.0),
    "barycentric": lambda x, y: OPS.barycentric(x, y),
    "mips": lambda x, y: OPS.mips(x, y),
    "gumbel_argmax": lambda x, y: OPS.gumbel_argmax(x, y, seed=1),
}


@pytest.mark.parametrize("op", list(OVERFLOWING))
def test_overflowing_dot_products_raise(op):
    g = torch.Generator().manual_seed(0)
    x, y = 1e19 * torch.randn(40, 3, generator=g), 1e20 * torch.randn(30, 3, generator=g)
    with pytest.raises(ValueError, match="dot products of arguments 'x' and 'y' can overflow float32.*Pass float64"):
        OVERFLOWING[op](x, y)
    out = OVERFLOWING[op](x.double(), y.double())  # float64 holds them
    assert all(torch.isfinite(t).all() or t.dtype == torch.long for t in (out if isinstance(out, tuple) else (out,)))


def test_the_overflow_bound_counts_scale_and_bias():
    x, y, h = random_problem(20, 30, 4, torch.float32, seed=1)
    big = 1e17 * x  # dot products ~ 1e17: fine with scale 1, too large with scale 1e22
    assert torch.isfinite(OPS.lse(big, y, h, 1.0)).all()
    with pytest.raises(ValueError, match="can overflow float32"):
        OPS.lse(big, y, h, 1e22)
    with pytest.raises(ValueError, match=r"max\|h\|"):
        OPS.lse(x, y, h.index_fill(0, torch.tensor([0]), 3e38), 1.0)
    assert torch.isfinite(OPS.lse(x, y, h.index_fill(0, torch.tensor([0]), float("-inf")), 1.0)).all()


def test_barycentric_values_too_large_to_sum_raise():
    x, y, h = random_problem(20, 30, 4, torch.float32, seed=1)
    with pytest.raises(ValueError, match="argument 'values' is too large"):
        OPS.barycentric(x, y, h, 1.0, torch.full((30, 2), 1e37))


# --- Thread count --------------------------------------------------------------------------
# Results are bitwise the same for any thread count (csrc/ops/cpu/tiling.h): the float32 GEMM
# of a one-task problem used to run multi-threaded and round differently for 3 and 4 threads.

def _assert_same_for_one_to_four_threads(run):
    """run() (a list of tensors) gives the same bits at 1, 2, 3 and 4 threads."""
    threads = torch.get_num_threads()
    try:
        results = {}
        for t in (1, 2, 3, 4):
            torch.set_num_threads(t)
            results[t] = run()
    finally:
        torch.set_num_threads(threads)
    for t in (2, 3, 4):
        for k, (a, b) in enumerate(zip(results[1], results[t])):
            assert torch.equal(a, b), f"output {k} differs between 1 and {t} threads"


@pytest.mark.parametrize("n,m,d", [(128, 100, 300), (7, 512, 64), (300, 5000, 17)])
def test_bitwise_the_same_for_one_to_four_threads(n, m, d):
    x, y, h = random_problem(n, m, d, torch.float32, seed=n + m + d)
    dots = x @ y.T

    def run():
        return [OPS.lse(x, y, h, 0.1), *OPS.barycentric(x, y, h, 0.1), *OPS.mips(x, y, h, 3),
                *OPS.gumbel_argmax(x, y, h, 0.1, seed=3, return_value=True),
                OPS.lse_dense(dots, h, 0.1, 1), OPS.lse_dense(dots, h[:1].expand(n).contiguous(), 0.1, 0)]

    _assert_same_for_one_to_four_threads(run)


@pytest.mark.parametrize("batch,n,m,d", [(3, 128, 100, 300), (2, 7, 512, 64), (1, 300, 1031, 17)])
def test_batched_bitwise_the_same_for_one_to_four_threads(batch, n, m, d):
    """Batched calls (the batch is the outer task dimension) are thread-invariant too."""
    g = torch.Generator().manual_seed(batch + n + m + d)
    x, y, h = torch.randn(batch, n, d, generator=g), torch.randn(batch, m, d, generator=g), torch.randn(batch, m, generator=g)
    scales = [0.1 * (k + 1) for k in range(batch)]

    def run():
        return [OPS.lse(x, y, h, scales), *OPS.barycentric(x, y, h, scales),
                *OPS.gumbel_argmax(x, y, h, scales, seed=list(range(batch)), return_value=True)]

    _assert_same_for_one_to_four_threads(run)


# --- Gradients of any order ------------------------------------------------------------------
# lse's backward is built from barycentric, which had no autograd: a gradient penalty
# (create_graph=True) silently missed every term through it.

def _f64(*shape, seed, grad=True):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_(grad)


def test_lse_and_softmin_double_backward():
    x, y, h = _f64(9, 3, seed=1), _f64(13, 3, seed=2), _f64(13, seed=3)
    assert torch.autograd.gradgradcheck(lambda x, y, h: OPS.lse(x, y, h, 0.7), (x, y, h))
    assert torch.autograd.gradgradcheck(lambda x, y: OPS.lse(x, y, None, 1.3), (x, y))
    assert torch.autograd.gradgradcheck(lambda x, y, g: OPS.softmin(x, y, g, 0.5), (x, y, h))


def test_gradient_penalty_matches_dense_autograd():
    x, y, h = _f64(20, 2, seed=4), _f64(30, 2, seed=5), _f64(30, seed=6)
    h0 = h.detach().clone()
    h0[::4] = float("-inf")  # dropped columns
    h = h0.requires_grad_()

    def penalty(lse):
        grad_x, = torch.autograd.grad(lse(x, y, h).sum(), x, create_graph=True)
        return torch.autograd.grad(grad_x.square().sum(), (x, y, h))

    ours = penalty(lambda x, y, h: OPS.lse(x, y, h, 1.3))
    dense = penalty(lambda x, y, h: torch.logsumexp(1.3 * x @ y.T + h, 1))
    for a, b in zip(ours, dense):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("with_values", [False, True])
def test_barycentric_gradients_of_first_and_second_order(with_values):
    x, y, h = _f64(7, 2, seed=7), _f64(11, 2, seed=8), _f64(11, seed=9)
    values = _f64(11, 3, seed=10) if with_values else None
    inputs = (x, y, h) + ((values,) if with_values else ())

    def f(x, y, h, values=None):
        out, lse = OPS.barycentric(x, y, h, 0.8, values)
        return out, lse

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_barycentric_rows_without_mass_get_zero_gradient():
    x, y = _f64(5, 2, seed=11), _f64(6, 2, seed=12)
    h = torch.full((6,), float("-inf"), dtype=torch.float64, requires_grad=True)
    out, lse = OPS.barycentric(x, y, h, 1.0)
    gx, gy = torch.autograd.grad(out.sum(), (x, y))
    assert (gx == 0).all() and (gy == 0).all()


def test_mips_values_gradients():
    x, y, b = _f64(6, 3, seed=13), _f64(9, 3, seed=14), _f64(9, seed=15)
    assert torch.autograd.gradcheck(lambda x, y, b: OPS.mips(x, y, b, 3)[0], (x, y, b))
    assert torch.autograd.gradgradcheck(lambda x, y, b: OPS.mips(x, y, b, 3)[0], (x, y, b))
    b_dropped = b.detach().clone()
    b_dropped[2:] = float("-inf")  # two live columns for k = 3: one empty slot per row
    values, indices = OPS.mips(x, y, b_dropped, 3)
    grad_x, = torch.autograd.grad(values[:, :2].sum(), x)
    torch.testing.assert_close(grad_x, y[indices[:, :2]].sum(1).detach())


def test_lse_dense_gradients():
    dots, h_rows, h_cols = _f64(7, 9, seed=16), _f64(7, seed=17), _f64(9, seed=18)
    assert torch.autograd.gradgradcheck(lambda d, h: OPS.lse_dense(d, h, 0.6, 1), (dots, h_cols))
    assert torch.autograd.gradgradcheck(lambda d, h: OPS.lse_dense(d, h, 0.6, 0), (dots, h_rows))


def test_gumbel_argmax_outputs_are_not_differentiable():
    x, y, h = _f64(6, 3, seed=19), _f64(9, 3, seed=20), _f64(9, seed=21)
    index, value = OPS.gumbel_argmax(x, y, h, seed=1, return_value=True)
    assert not index.requires_grad and not value.requires_grad


def test_opcheck_with_inputs_that_require_grad():
    x, y, h = (t.requires_grad_() for t in random_problem(9, 40, 3, torch.float64, seed=3))
    torch.library.opcheck(torch.ops.ot_flow.barycentric.default, (x, y, h, 0.5, None))
    torch.library.opcheck(torch.ops.ot_flow.mips.default, (x, y, h, 2))
    torch.library.opcheck(torch.ops.ot_flow.gumbel_argmax.default, (x, y, h, 0.5, 1, 0, 0, 0))
    torch.library.opcheck(torch.ops.ot_flow.lse_dense.default, ((x @ y.T).detach().requires_grad_(), h, 0.5, 1, None))


# --- Arguments that are not tensors ----------------------------------------------------------

def test_gumbel_argmax_seed_and_generator():
    x, y, h = random_problem(5, 7, 2, torch.float32, seed=0)
    with pytest.raises(ValueError, match=r"ot_flow.gumbel_argmax: argument 'seed' must lie in \[-9223372036854775808, 9223372036854775807\], got 9223372036854775808"):
        OPS.gumbel_argmax(x, y, h, seed=2**63)
    with pytest.raises(ValueError, match="argument 'seed' must be an integer, got float 1.5"):
        OPS.gumbel_argmax(x, y, h, seed=1.5)
    with pytest.raises(ValueError, match="argument 'offset' must be an integer"):
        OPS.gumbel_argmax(x, y, h, seed=1, offset="2")
    with pytest.raises(ValueError, match="ot_flow.gumbel_argmax: argument 'generator' must be a torch.Generator or None, got int 5"):
        OPS.gumbel_argmax(x, y, h, generator=5)
    with pytest.raises(ValueError, match="argument 'generator' must be a torch.Generator"):
        OPS.seed_from(5)
    # Any int64 seed works, numpy and 0-d integer tensors included.
    for seed in (-(2**63), 2**63 - 1, torch.tensor(3)):
        assert OPS.gumbel_argmax(x, y, h, seed=seed).shape == (5,)


BAD_NUMBERS = [
    ("lse scale", lambda x, y, h: OPS.lse(x, y, h, "abc"), "ot_flow.lse: argument 'scale' must be a real number"),
    ("lse scale with grad", lambda x, y, h: OPS.lse(x, y, h, torch.tensor(1.0, requires_grad=True)),
     "ot_flow.lse: argument 'scale' must be a real number .*requires_grad=True"),
    ("barycentric scale", lambda x, y, h: OPS.barycentric(x, y, h, None), "ot_flow.barycentric: argument 'scale'"),
    ("gumbel scale", lambda x, y, h: OPS.gumbel_argmax(x, y, h, [1.0], seed=1), "ot_flow.gumbel_argmax: argument 'scale'"),
    ("softmin eps", lambda x, y, h: OPS.softmin(x, y, h, "0.1"), "ot_flow.softmin: argument 'eps'"),
    ("mips k float", lambda x, y, h: OPS.mips(x, y, h, 1.5), "ot_flow.mips: argument 'k' must be an integer, got float 1.5"),
    ("lse_dense dim", lambda x, y, h: OPS.lse_dense(x @ y.T, h, 1.0, 1.0), "ot_flow.lse_dense: argument 'dim' must be an integer"),
    ("lse_dense scale", lambda x, y, h: OPS.lse_dense(x @ y.T, h, "1", 1), "ot_flow.lse_dense: argument 'scale'"),
    *[(f"{op} precision {bad!r}", lambda x, y, h, op=op, bad=bad: getattr(OPS, op)(x, y, h, 1, precision=bad),
       f"ot_flow.{op}: argument 'precision' must be one of 'highest', 'tf32', 'bf16', got {bad!r}")
      for op in ("lse", "softmin", "barycentric", "mips", "gumbel_argmax") for bad in ("fp8", "HIGHEST", None)],
]


@pytest.mark.parametrize("case", BAD_NUMBERS, ids=[c[0] for c in BAD_NUMBERS])
def test_wrong_type_of_number_raises_value_error_naming_it(case):
    _, call, message = case
    x, y, h = random_problem(5, 7, 2, torch.float32, seed=0)
    with pytest.raises(ValueError, match=message):
        call(x, y, h)


# --- Bad tensors: one table, every streaming op -------------------------------------------------
# The point and bias checks are one function in C++ (csrc/ops/checks.cpp) shared by the ops, so
# they are one table here, run against each op; the rows after it are what only one op takes.

# op -> (call with points x, y and column bias b, the bias argument's name, the name its values are
# checked under). softmin checks g's shape and dtype itself, but it is a composite that
# torch.compile traces with fake tensors: its values are checked by lse, on h = g / eps.
STREAMING_OPS = {
    "lse": (lambda x, y, b: OPS.lse(x, y, b, 1.0), "h", "h"),
    "softmin": (lambda x, y, b: OPS.softmin(x, y, b, 1.0), "g", "h"),
    "barycentric": (lambda x, y, b: OPS.barycentric(x, y, b, 1.0), "h", "h"),
    "mips": (lambda x, y, b: OPS.mips(x, y, b, 1), "bias", "bias"),
    "gumbel_argmax": (lambda x, y, b: OPS.gumbel_argmax(x, y, b, 1.0, seed=0), "h", "h"),
}

BAD_TENSORS = [  # (case, corrupt(x, y, b), message; {b} / {v} name the bias for its shape / values)
    ("mismatched d", lambda x, y, b: (x, y[:, :2], b), "same dimension"),
    ("integer x", lambda x, y, b: (x.long(), y, b), "argument 'x' must be float16, bfloat16, float32 or float64"),
    ("integer y", lambda x, y, b: (x, y.int(), b), "argument 'y' must be float16, bfloat16, float32 or float64"),
    ("mixed dtypes", lambda x, y, b: (x, y.double(), b), "one dtype"),
    ("empty x", lambda x, y, b: (x[:0], y, b), "argument 'x' is empty"),
    ("empty y", lambda x, y, b: (x, y[:0], b[:0]), "argument 'y' is empty"),
    ("zero-dim points", lambda x, y, b: (x[:, :0], y[:, :0], b), "argument 'x' is empty"),
    ("1-D x", lambda x, y, b: (x[0], y, b), "argument 'x' must be a 2-D tensor"),
    ("NaN in x", lambda x, y, b: (x.index_fill(0, torch.tensor([1]), float("nan")), y, b), "argument 'x' contains NaN"),
    ("Inf in y", lambda x, y, b: (x, y.index_fill(0, torch.tensor([2]), float("inf")), b),
     "argument 'y' contains NaN or Inf"),
    ("NaN in bias", lambda x, y, b: (x, y, b.index_fill(0, torch.tensor([0]), float("nan"))), "argument '{v}' contains NaN"),
    ("+Inf in bias", lambda x, y, b: (x, y, b.index_fill(0, torch.tensor([0]), float("inf"))),
     "argument '{v}' contains NaN or \\+Inf"),
    ("bias wrong length", lambda x, y, b: (x, y, b[:-1]), "argument '{b}' must be a 1-D tensor of length 6"),
    ("bias wrong dtype", lambda x, y, b: (x, y, b.double()), "argument '{b}' must have the points' dtype"),
]


@pytest.mark.parametrize("op", list(STREAMING_OPS))
@pytest.mark.parametrize("case", BAD_TENSORS, ids=[c[0] for c in BAD_TENSORS])
def test_bad_tensor_raises_value_error_naming_the_argument(op, case):
    call, bias_name, value_name = STREAMING_OPS[op]
    _, corrupt, message = case
    x, y, b = random_problem(4, 6, 3, torch.float32)
    with pytest.raises(ValueError, match=message.format(b=bias_name, v=value_name)):
        call(*corrupt(x, y, b))


ONE_OP_BAD_ARGUMENTS = [  # (case, call(x, y, b), message)
    ("mips k = 0", lambda x, y, b: OPS.mips(x, y, b, 0), "argument 'k' must lie in \\[1, m\\]"),
    ("mips k > m", lambda x, y, b: OPS.mips(x, y, b, 7), "argument 'k' must lie in \\[1, m\\]"),
    ("gumbel nan scale", lambda x, y, b: OPS.gumbel_argmax(x, y, b, float("nan"), seed=0),
     "argument 'scale' must be finite"),
    ("gumbel negative row_offset", lambda x, y, b: OPS.gumbel_argmax(x, y, b, 1.0, seed=0, row_offset=-1),
     "argument 'row_offset' must be >= 0"),
]


@pytest.mark.parametrize("case", ONE_OP_BAD_ARGUMENTS, ids=[c[0] for c in ONE_OP_BAD_ARGUMENTS])
def test_bad_argument_of_one_op_raises_value_error_naming_it(case):
    _, call, message = case
    x, y, b = random_problem(4, 6, 3, torch.float32)
    with pytest.raises(ValueError, match=message):
        call(x, y, b)
