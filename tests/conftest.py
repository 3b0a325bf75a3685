import pytest
import torch

import ot_flow


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and ot_flow.cuda_built():
        return
    reason = "no CUDA GPU" if not torch.cuda.is_available() else "ot_flow was built without CUDA"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
