"""Memory layout of batched op inputs.

The batched ops need each problem t[b] contiguous, not the whole (B, ...) tensor: the stride
between problems is free. The CPU BLAS (MKL) picks its GEMM code path by the operands'
alignment, which moves float results by an ulp, so a problem that starts at an odd offset of a
packed batch can round differently from the same problem in a tensor of its own (which the
allocator aligns to 64 bytes). The ops therefore copy a batch whose problems are not 64-byte
aligned into such a layout (csrc/ops/lse.cpp, problems_contiguous: the same rule), so problem b
of a batched call is bitwise the 2-D call on a fresh copy of it; ``stack_aligned`` builds that
layout once, so that a solver calling the ops every half-step pays no copy."""

import torch

__all__ = ["stack_aligned"]

_ALIGN_BYTES = 64


def stack_aligned(tensors):
    """torch.stack(tensors) (equal shapes, dtypes and devices), with each problem starting on a
    64-byte boundary (a view with a padded stride between problems)."""
    first = tensors[0]
    per = first.numel()
    items = max(1, _ALIGN_BYTES // first.element_size())
    stride = -(-per // items) * items
    storage = torch.empty(len(tensors) * stride, dtype=first.dtype, device=first.device)
    out = storage.as_strided((len(tensors), *first.shape), (stride, *torch.empty(first.shape).stride()))
    for k, t in enumerate(tensors):
        out[k].copy_(t)
    return out
