"""Loads the compiled ops (ot_flow._C) and explains what to do when that fails."""

import torch

_REBUILD = (
    "Build it from the repository root with `make build` "
    "(or `pip install --no-build-isolation -e .` inside the environment that runs ot_flow)."
)


def load():
    try:
        from ot_flow import _C
    except ImportError as err:
        missing = "No module named" in str(err)
        reason = (
            "the compiled extension ot_flow._C is missing"
            if missing
            else f"the compiled extension ot_flow._C could not be loaded ({err}); it was most likely "
            f"built against another torch than the {torch.__version__} installed here"
        )
        raise ImportError(f"ot_flow: {reason}. {_REBUILD}") from err
    if _C.built_with_torch != torch.__version__:
        raise ImportError(
            f"ot_flow: ot_flow._C was built against torch {_C.built_with_torch} but torch "
            f"{torch.__version__} is installed. {_REBUILD}"
        )
    if _C.built_with_cuda and torch.version.cuda != _C.built_with_cuda:
        raise ImportError(
            f"ot_flow: ot_flow._C was built for CUDA {_C.built_with_cuda} but torch uses CUDA "
            f"{torch.version.cuda}. {_REBUILD}"
        )
    return _C


def cuda_built():
    """Whether the loaded extension carries CUDA kernels."""
    return bool(load().built_with_cuda)
