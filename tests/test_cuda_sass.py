"""The built extension's tensor-core kernels really use the tensor cores.

Runs on the CPU-only CI whenever the CUDA kernels are built: it reads the SASS of ot_flow._C
(``cuobjdump --dump-sass``) and fails if a streaming kernel of the engine
(csrc/ops/cuda/engine/) has no tensor-core instruction (HMMA, or HGMMA for wgmma), so that a
silent fall-back to FMA loops cannot pass.
"""

import os
import re
import shutil
import subprocess

import pytest

import ot_flow
from ot_flow import _extension

pytestmark = pytest.mark.skipif(not ot_flow.cuda_built(), reason="ot_flow was built without CUDA")

# Engine kernels by name (templates over KernelTraits<DotMode, slice, warps>, copy width); DotMode
# 0, 1, 2, 3 are split TF32 ("highest"), TF32, BF16 and split float16 ("highest", opt-in; not for
# mips).
ENGINE_KERNEL = re.compile(r"engine.*_kernel.*KernelTraitsILNS\d+_7DotModeE(\d)E")
TENSOR_CORE = re.compile(r"\b(HMMA|HGMMA)\.")
# The traits' slice and warps, and the copy width (4: 16-byte copies, 1: 4-byte copies), the
# template argument after the traits.
TRAITS = re.compile(r"KernelTraitsILNS\d+_7DotModeE(\d)ELi(\d+)ELi(\d+)EEELi(\d)E")
MMA_SHAPE = {"0": "HMMA.1688.F32.TF32", "1": "HMMA.1688.F32.TF32", "2": "HMMA.16816.F32.BF16", "3": "HMMA.16816.F32"}


def cuobjdump():
    """The toolkit's cuobjdump, else the copy that ships with triton (a torch dependency)."""
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    for candidate in (os.path.join(cuda_home, "bin", "cuobjdump"), shutil.which("cuobjdump")):
        if candidate and os.path.exists(candidate):
            return candidate
    try:
        import triton.backends.nvidia as triton_nvidia
    except ImportError:
        return None
    bundled = os.path.join(os.path.dirname(triton_nvidia.__file__), "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else None


def kernels_sass():
    """{mangled kernel name: its SASS text} of every kernel in the extension."""
    tool = cuobjdump()
    if tool is None:
        pytest.fail("cuobjdump not found (CUDA toolkit or triton's bundled copy): cannot check the SASS")
    text = subprocess.run([tool, "--dump-sass", _extension.load().__file__], check=True,
                          capture_output=True, text=True).stdout
    kernels = {}
    for block in re.split(r"\n\s*Function : ", text)[1:]:
        name, _, body = block.partition("\n")
        kernels[name.strip()] = kernels.get(name.strip(), "") + body
    return kernels


def test_engine_kernels_use_tensor_cores():
    engine = {name: sass for name, sass in kernels_sass().items() if ENGINE_KERNEL.search(name)}
    modes = {ENGINE_KERNEL.search(name).group(1) for name in engine}
    assert modes == {"0", "1", "2", "3"}, f"engine kernels for every precision mode, found modes {sorted(modes)}"
    for name, sass in engine.items():
        mode = ENGINE_KERNEL.search(name).group(1)
        assert TENSOR_CORE.search(sass), f"{name}: no tensor-core instruction in its SASS"
        assert MMA_SHAPE[mode] in sass, f"{name}: expected {MMA_SHAPE[mode]} for precision mode {mode}"
        if mode == "3":  # float16 operands: the plain HMMA.16816.F32 (no .BF16 suffix)
            assert re.search(r"HMMA\.16816\.F32 ", sass), f"{name}: no float16 MMA"
        if mode in "23":
            # Packed operands (streamed_operands.h), staged as they are: y's words in lane order,
            # a lane's B fragments one 128-bit load (mma_tile.cuh); no conversion to bfloat16 in
            # the loop (F2FP: the epilogues' own, barycentric's weights and values, aside).
            assert "LDS.128" in sass, f"{name}: B fragments not loaded 128 bits at a time"
            assert TRAITS.search(name).group(4) == "4", f"{name}: packed operands take 16-byte copies"
        if TRAITS.search(name).group(4) == "4":
            # x's rows, staged again for every column tile, cached in L1; y streamed past it
            # (stream_loop.cuh): a 16-byte cp.async of each kind.
            assert re.search(r"LDGSTS\.E\.128\b", sass), f"{name}: x's copies not cached in L1"
            assert "LDGSTS.E.BYPASS.128" in sass, f"{name}: y's copies not streamed past L1"
        assert not re.search(r"\b(LDL|STL)\b", sass), f"{name}: registers spill to local memory"


def test_lse_and_mips_one_pass_have_kernels_in_128_row_blocks():
    """The opt-in 128-row blocks (OT_FLOW_ENGINE_BLOCK_ROWS=128, kernel_traits.cuh) of lse and of mips's
    one-pass search (its lists for k = 1 and 2, and the second passes of overflowed lists: top-1's
    rescoring, and top-2's relisting in the candidate-list kernel): 8-warp kernels of 16-wide slices
    in split TF32 and TF32, both copy widths, and in bfloat16 (16-byte copies only: packed
    operands), and for lse in split float16 too (mips searches it in split TF32); no other kernel
    and no other traits take 8 warps."""
    tall = {}
    for name in kernels_sass():
        traits = TRAITS.search(name) if ENGINE_KERNEL.search(name) else None
        if traits and traits.group(3) == "8":
            kernel = next((k for k in ("lse_engine_kernel", "mips_running_list_kernel", "mips_top1_overflow_kernel",
                                       "mips_candidates_kernel") if k in name), None)
            assert kernel and traits.group(2) == "16", f"{name}: 8 warps outside lse's and mips's one-pass 16-wide slices"
            if kernel == "mips_running_list_kernel":  # the template's last argument: k
                kernel += "<" + re.match(r"Li(\d)E", name[traits.end():]).group(1) + ">"
            tall.setdefault(kernel, set()).add((traits.group(1), traits.group(4)))
    searched = {(mode, width) for mode in "01" for width in "14"} | {("2", "4")}
    assert tall == {"lse_engine_kernel": searched | {("3", "4")}, "mips_running_list_kernel<1>": searched,
                    "mips_running_list_kernel<2>": searched, "mips_top1_overflow_kernel": searched,
                    "mips_candidates_kernel": searched}, tall


def test_batched_engine_ops_take_the_batch_in_one_kernel():
    """Batched lse, barycentric and gumbel_argmax on the engine are one launch per 256 problems: their
    streaming kernels take the batch (problem_batch.cuh, or a batch derived from it) by value, the
    2-D call being a batch of one, so no second, per-problem kernel exists."""
    names = [name for name in kernels_sass() if ENGINE_KERNEL.search(name)]
    for op in ("lse", "barycentric", "gumbel"):
        kernels = [name for name in names if f"{op}_engine_kernel" in name]
        assert kernels, f"no {op} engine kernel"
        for name in kernels:
            assert re.search(r"\d+(Problem|Barycentric|Gumbel)BatchE", name), f"{name}: takes no problem batch"
