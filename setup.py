"""Build of ot_flow._C: the C++ kernels always, the CUDA kernels whenever nvcc is found.

Environment:
  OT_FLOW_CUDA=0|1        force a CPU-only build (0) or fail loudly when CUDA cannot be built (1);
                          unset: build CUDA when torch has CUDA and nvcc is found (no GPU needed).
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0": A100 and H100/H200).
  OT_FLOW_MARCH           -march value for the C++ kernels (default "native": the extension is
                          built on the machine that runs it; set "x86-64-v2" for a portable build).
  MAX_JOBS                parallel compile jobs (ninja).
"""

import glob
import os
import shutil

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda():
    flag = os.environ.get("OT_FLOW_CUDA", "").strip()
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    available = torch.version.cuda is not None and nvcc is not None and os.path.exists(nvcc)
    if flag == "0":
        return False
    if flag == "1" and not available:
        raise RuntimeError(
            "OT_FLOW_CUDA=1 but CUDA cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r}, nvcc={nvcc!r}. "
            "Install a CUDA build of torch and the CUDA toolkit, or unset OT_FLOW_CUDA."
        )
    return available


def sources(pattern):
    return sorted(glob.glob(os.path.join("csrc", pattern), root_dir=ROOT, recursive=True))


def extension():
    cuda = want_cuda()
    march = os.environ.get("OT_FLOW_MARCH", "native")
    # -fno-trapping-math lets GCC vectorise the clamps in fast_exp.h (no effect on results).
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math", "-std=c++17"] + ([f"-march={march}"] if march else [])
    defines = [("OT_FLOW_TORCH_VERSION", f'"{torch.__version__}"')]
    srcs = sources("registration.cpp") + sources("ops/*.cpp") + sources("ops/cpu/*.cpp")
    kwargs = dict(extra_link_args=["-fopenmp"])
    if cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        defines.append(("OT_FLOW_CUDA_VERSION", f'"{torch.version.cuda}"'))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-std=c++17"]
        print(f"ot_flow: building CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        return CUDAExtension(
            "ot_flow._C",
            srcs + sources("ops/cuda/**/*.cu") + sources("ops/cuda/**/*.cpp"),
            define_macros=defines,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            **kwargs,
        )
    print("ot_flow: building the CPU kernels only")
    return CppExtension("ot_flow._C", srcs, define_macros=defines, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    packages=find_packages(include=["ot_flow", "ot_flow.*"]),
    package_data={"ot_flow": ["configs/*.yaml"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
