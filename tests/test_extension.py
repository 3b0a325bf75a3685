import pytest
import torch

import ot_flow
from ot_flow import _extension


def test_build_records_torch_and_cuda():
    c = _extension.load()
    assert c.built_with_torch == torch.__version__
    assert c.built_with_cuda in ("", torch.version.cuda)


@pytest.mark.parametrize("attr,value,message", [
    ("built_with_torch", "1.0.0", "built against torch 1.0.0"),
    ("built_with_cuda", "9.9", "built for CUDA 9.9"),
])
def test_stale_build_is_refused_with_instructions(monkeypatch, attr, value, message):
    monkeypatch.setattr(ot_flow._C, attr, value)
    with pytest.raises(ImportError, match=message) as info:
        _extension.load()
    assert "make build" in str(info.value)


def test_ops_are_registered_for_cpu_and_cuda():
    for name in ("lse", "barycentric", "lse_dense", "softmin", "sinkhorn_divergence"):
        assert hasattr(torch.ops.ot_flow, name)
    if ot_flow.cuda_built():
        for name in ("lse", "barycentric", "lse_dense"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ot_flow::{name}", "CUDA")
