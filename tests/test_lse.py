import pytest
import torch

import ot_flow
from problems import random_problem
from reference import lse_reference

SIZES = [1, 7, 1000, 4099]
DIMS = [1, 3, 64, 300]
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-11, atol=1e-11)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("n", SIZES)
def test_matches_dense_reference(n, m, d, dtype):
    x, y, h = random_problem(n, m, d, dtype)
    scale = 1.0 / d**0.5
    out = ot_flow.ops.lse(x, y, h, scale)
    assert out.shape == (n,) and out.dtype == dtype
    torch.testing.assert_close(out.double(), lse_reference(x, y, h, scale), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_without_bias_and_with_large_scale(dtype):
    # A large scale makes the row max dominate: the online max must be exact, not approximate.
    x, y, _ = random_problem(257, 1031, 5, dtype)
    out = ot_flow.ops.lse(x, y, None, 40.0)
    torch.testing.assert_close(out.double(), lse_reference(x, y, None, 40.0), **TOL[dtype])


def test_non_contiguous_inputs():
    x, y, h = random_problem(600, 900, 33, torch.float64)
    xt = x.T.contiguous().T  # column-major
    y2 = torch.stack([y, y], dim=2)[:, :, 0]  # strided columns
    hs = torch.stack([h, h], dim=1)[:, 0]  # stride 2
    assert not (xt.is_contiguous() or y2.is_contiguous() or hs.is_contiguous())
    out = ot_flow.ops.lse(xt, y2, hs, 0.3)
    torch.testing.assert_close(out, lse_reference(x, y, h, 0.3), rtol=1e-11, atol=1e-11)


def test_negative_infinity_bias_drops_columns():
    x, y, h = random_problem(50, 1500, 4, torch.float64)
    h[::3] = float("-inf")
    torch.testing.assert_close(ot_flow.ops.lse(x, y, h, 0.5), lse_reference(x, y, h, 0.5))
    h[:] = float("-inf")
    assert torch.isneginf(ot_flow.ops.lse(x, y, h, 0.5)).all()


def test_same_result_for_any_thread_count():
    x, y, h = random_problem(300, 5000, 17, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ot_flow.ops.lse(x, y, h, 0.5)
        torch.set_num_threads(max(2, threads))
        many = ot_flow.ops.lse(x, y, h, 0.5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_opcheck():
    for n, m, d in [(1, 1, 1), (7, 600, 3), (130, 20, 64)]:
        x, y, h = random_problem(n, m, d, torch.float32)
        torch.library.opcheck(torch.ops.ot_flow.lse.default, (x, y, h, 0.5))
        torch.library.opcheck(torch.ops.ot_flow.lse.default, (x, y, None, 2.0))


def test_torch_compile_fullgraph():
    def energy(x, y, h):
        return -0.5 * ot_flow.ops.lse(x, y, h, 2.0).mean()

    compiled = torch.compile(energy, fullgraph=True)
    for n in (64, 200):  # the second size exercises a recompile or dynamic shapes
        x, y, h = random_problem(n, 300, 8, torch.float32)
        torch.testing.assert_close(compiled(x, y, h), energy(x, y, h))


def test_fake_kernel_gives_shape_dtype_and_device():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(11, 5, dtype=torch.float64)
        y = torch.empty(13, 5, dtype=torch.float64)
        out = ot_flow.ops.lse(x, y, None, 1.0)
    assert out.shape == (11,) and out.dtype == torch.float64 and out.device.type == "cpu"


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_non_finite_scale_raises(scale):
    x, y, h = random_problem(4, 6, 3, torch.float32)
    with pytest.raises(ValueError, match="argument 'scale' must be finite"):
        ot_flow.ops.lse(x, y, h, scale)


# --- CUDA: the same function on the GPU, checked against the float64 reference. -------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("n", SIZES)
def test_cuda_matches_dense_reference(n, m, d, dtype):
    x, y, h = random_problem(n, m, d, dtype, device="cuda")
    scale = 1.0 / d**0.5
    out = ot_flow.ops.lse(x, y, h, scale)
    assert out.device.type == "cuda" and out.dtype == dtype
    torch.testing.assert_close(out.double().cpu(), lse_reference(x.cpu(), y.cpu(), h.cpu(), scale), **TOL[dtype])


@pytest.mark.cuda
def test_cuda_agrees_with_cpu_kernel_and_handles_split_columns():
    # n = 3 rows, m = 200k columns: the column range is split across blocks and merged.
    x, y, h = random_problem(3, 200_003, 16, torch.float64)
    h[::5] = float("-inf")
    cpu = ot_flow.ops.lse(x, y, h, 0.25)
    gpu = ot_flow.ops.lse(x.cuda(), y.cuda(), h.cuda(), 0.25)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
def test_cuda_non_contiguous_and_side_stream():
    x, y, h = random_problem(300, 700, 20, torch.float32, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = ot_flow.ops.lse(x.T.contiguous().T, y[:, :], h[::1], 0.5)
    stream.synchronize()
    torch.testing.assert_close(out.double().cpu(), lse_reference(x.cpu(), y.cpu(), h.cpu(), 0.5), **TOL[torch.float32])


@pytest.mark.cuda
def test_cuda_opcheck_and_device_mismatch():
    x, y, h = random_problem(9, 70, 5, torch.float32, device="cuda")
    torch.library.opcheck(torch.ops.ot_flow.lse.default, (x, y, h, 0.5))
    with pytest.raises(ValueError, match="argument 'y' is on cpu"):
        ot_flow.ops.lse(x, y.cpu(), h, 1.0)
    with pytest.raises(ValueError, match="argument 'h' is on cpu"):
        ot_flow.ops.lse(x, y, h.cpu(), 1.0)
