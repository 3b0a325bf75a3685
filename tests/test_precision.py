"""The ``precision`` argument of the ops and of what is built on them, and float16 / bfloat16
inputs: every mode accepted and, on the CPU (which computes every mode exactly), the default's
result; bad modes refused naming 'precision'; 16-bit inputs computed in float32 and returned in
float32, by the kernels and the fake kernels alike, with gradients in the inputs' dtypes."""

import pytest
import torch

import ot_flow
from ot_flow.ops.precision import MODES
from problems import random_problem

OPS = ot_flow.ops

# op -> call(x, y, h, **precision): every op's outputs as a tuple (gumbel_argmax with its values).
CALLS = {
    "lse": lambda x, y, h, **p: (OPS.lse(x, y, h, 0.7, **p),),
    "softmin": lambda x, y, h, **p: (OPS.softmin(x, y, h, 0.5, **p),),
    "barycentric": lambda x, y, h, **p: OPS.barycentric(x, y, h, 0.7, **p),
    "mips": lambda x, y, h, **p: OPS.mips(x, y, h, 3, **p),
    "gumbel_argmax": lambda x, y, h, **p: OPS.gumbel_argmax(x, y, h, 0.7, seed=5, return_value=True, **p),
}


@pytest.mark.parametrize("precision", MODES)
@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize("batched", [False, True])
def test_every_mode_gives_the_default_result_on_the_cpu(op, precision, batched):
    x, y, h = random_problem(30, 50, 4, torch.float32, seed=1)
    if batched:
        if op == "mips":
            pytest.skip("mips has no batched form")
        x, y, h = torch.stack([x, x.flip(0)]), torch.stack([y, 2 * y]), torch.stack([h, -h])
    default = CALLS[op](x, y, h)
    for got, want in zip(CALLS[op](x, y, h, precision=precision), default):
        assert torch.equal(got, want)


@pytest.mark.parametrize("op", list(CALLS))
def test_direct_op_calls_check_the_mode_in_cpp_and_in_the_fake_kernel(op):
    x, y, h = random_problem(5, 7, 2, torch.float32, seed=0)
    args = {"lse": (x, y, h, 1.0, None), "softmin": (x, y, h, 1.0, None, None),
            "barycentric": (x, y, h, 1.0, None, None), "mips": (x, y, h, 1),
            "gumbel_argmax": (x, y, h, 1.0, 0, 0, 0, 0, None, None)}[op]
    fn = getattr(torch.ops.ot_flow, op).default
    for mode in MODES:
        fn(*args, mode)
    message = f"ot_flow.{op}: argument 'precision' must be one of 'highest', 'tf32', 'bf16', got 'fp8'"
    with pytest.raises(ValueError, match=message):
        fn(*args, "fp8")
    with pytest.raises(ValueError, match=message):
        fn(*(t.to("meta") if isinstance(t, torch.Tensor) else t for t in args), "fp8")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize("batched", [False, True])
def test_16_bit_inputs_give_the_float32_result_of_the_upcast_inputs(op, dtype, batched):
    x, y, h = (t.to(dtype) for t in random_problem(30, 50, 4, torch.float32, seed=2))
    if batched:
        if op == "mips":
            pytest.skip("mips has no batched form")
        x, y, h = torch.stack([x, x.flip(0)]), torch.stack([y, -y]), torch.stack([h, h.flip(0)])
    got = CALLS[op](x, y, h)
    want = CALLS[op](x.float(), y.float(), h.float())
    fake = CALLS[op](x.to("meta"), y.to("meta"), h.to("meta"))
    for g, w, f in zip(got, want, fake):
        assert g.dtype == w.dtype == f.dtype and g.shape == f.shape
        assert g.dtype in (torch.float32, torch.float64, torch.int64)
        # The same float32 kernels on the same (exactly upcast) values: equal up to the layout.
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_16_bit_softmin_does_not_overflow_at_small_eps():
    # g / eps formed in float16 would be inf (|g| / 1e-3 > 65504).
    x, y, g = (t.half() for t in random_problem(6, 8, 2, torch.float32, seed=3, spread=100.0))
    got = OPS.softmin(x, y, g, 1e-3)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, OPS.softmin(x.float(), y.float(), g.float(), 1e-3))


LOSSES = {  # op -> a scalar of its outputs, differentiable in x, y, h and values
    "lse": lambda x, y, h, v: OPS.lse(x, y, h, 0.5, precision="tf32").sum() + 0 * v.sum(),
    "barycentric": lambda x, y, h, v: sum(t.sum() for t in OPS.barycentric(x, y, h, 0.5, v, precision="bf16")),
    "mips": lambda x, y, h, v: OPS.mips(x, y, h, 2)[0].sum() + 0 * v.sum(),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", list(LOSSES))
def test_16_bit_gradients_are_the_float32_ones_in_the_inputs_dtype(op, dtype):
    x, y, h = (t.to(dtype) for t in random_problem(12, 9, 3, torch.float32, seed=4))
    v = torch.randn(9, 2).to(dtype)

    def grads(*inputs):
        leaves = [t.clone().requires_grad_() for t in inputs]
        LOSSES[op](*leaves).backward()
        return [t.grad for t in leaves]

    # The backward computes in float32 on the upcast inputs and casts each gradient once.
    for g16, g32 in zip(grads(x, y, h, v), grads(x.float(), y.float(), h.float(), v.float())):
        assert g16.dtype == dtype and torch.equal(g16, g32.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_opcheck_with_the_precision_argument(dtype):
    x, y, h = (t.to(dtype).requires_grad_() for t in random_problem(9, 40, 3, torch.float32, seed=3))
    torch.library.opcheck(torch.ops.ot_flow.lse.default, (x, y, h, 0.5, None, "tf32"))
    torch.library.opcheck(torch.ops.ot_flow.barycentric.default, (x, y, h, 0.5, None, None, "bf16"))
    torch.library.opcheck(torch.ops.ot_flow.mips.default, (x, y, h, 2, "tf32"))
    torch.library.opcheck(torch.ops.ot_flow.gumbel_argmax.default, (x, y, h, 0.5, 1, 0, 0, 0, None, None, "bf16"))
    torch.library.opcheck(torch.ops.ot_flow.softmin.default, (x, y, h, 0.5, None, None, "tf32"),
                          test_utils=("test_schema", "test_faketensor"))


# --- Solvers and samplers ------------------------------------------------------------------------

def test_sinkhorn_and_its_result_take_every_mode_with_the_default_result():
    x, y, _ = random_problem(40, 30, 2, torch.float32, seed=6)
    for mode in MODES:
        for cache in (True, False):
            base = ot_flow.sinkhorn(x, y, eps=0.1, cost_cache=cache)
            r = ot_flow.sinkhorn(x, y, eps=0.1, cost_cache=cache, precision=mode)
            assert r.precision == mode and torch.equal(r.f, base.f)
            assert torch.equal(r.sample(torch.Generator().manual_seed(1)), base.sample(torch.Generator().manual_seed(1)))
            assert torch.equal(r.barycentric_map(), base.barycentric_map())
    batch = ot_flow.sinkhorn(torch.stack([x, -x]), torch.stack([y, y]), eps=0.1)
    batch_tf32 = ot_flow.sinkhorn(torch.stack([x, -x]), torch.stack([y, y]), eps=0.1, precision="tf32")
    assert batch_tf32.precision == "tf32" and torch.equal(batch_tf32.f, batch.f)
    assert torch.equal(batch_tf32.sample(torch.Generator().manual_seed(2)), batch.sample(torch.Generator().manual_seed(2)))


def test_divergence_and_samplers_take_every_mode_with_the_default_result():
    x, y, _ = random_problem(30, 30, 2, torch.float32, seed=7)
    base = ot_flow.sinkhorn_divergence(x, y, eps=0.2)
    for mode in MODES:
        assert torch.equal(ot_flow.sinkhorn_divergence(x, y, eps=0.2, precision=mode), base)
        pairs = [ot_flow.OTSampler(eps=0.1, precision=p).sample_indices(x, y, torch.Generator().manual_seed(3))
                 for p in ("highest", mode)]
        assert torch.equal(*pairs)
    fits = [ot_flow.SemidiscreteSampler(y, eps=0.05, seed=0, precision=p).fit(20, batch_size=64, progress=False)
            for p in ("highest", "bf16")]
    assert torch.equal(fits[0].potential, fits[1].potential)
    assert torch.equal(*(s.assign(x, generator=torch.Generator().manual_seed(4)) for s in fits))
    # The mode is the sampler's setting, not its state's: a state loads whatever the modes.
    fits[0].load_state_dict(fits[1].state_dict())


@pytest.mark.parametrize("make", [
    lambda: ot_flow.sinkhorn(torch.randn(5, 2), torch.randn(6, 2), precision="fp16"),
    lambda: ot_flow.sinkhorn(torch.randn(2, 5, 2), torch.randn(2, 6, 2), precision="fp16"),
    lambda: ot_flow.sinkhorn_divergence(torch.randn(5, 2), torch.randn(6, 2), precision="fp16"),
    lambda: ot_flow.OTSampler(precision="fp16"),
    lambda: ot_flow.SemidiscreteSampler(torch.randn(6, 2), precision="fp16"),
])
def test_solvers_and_samplers_refuse_a_bad_mode_naming_precision(make):
    with pytest.raises(ValueError, match="argument 'precision' must be one of 'highest', 'tf32', 'bf16', got 'fp16'"):
        make()
