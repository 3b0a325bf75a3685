"""Where a SemidiscreteSampler keeps the data it searches, and in which dtype it searches them.

The sampler keeps one standardised copy of the data (semidiscrete_frame.py), N x D in the data's
own floating dtype: data held in bfloat16 or float16 stay 16-bit, and every search widens the
chunk it reads to float32 on the device (the ops compute 16-bit inputs in float32 too), so no
float32 copy of the whole data set is made. Everything that is not a data point stays in float32
or float64: the noise, the potential and the fit's other per-point vectors.

That copy is either resident on the sampler's ``device``, or streamed: kept where the data are
held (for a GPU fit of host data, in page-locked memory) and copied to the device in chunks of
``chunk_size`` points in every pass over the data, each chunk's copy running beside the kernels
of the one before (solvers/host_transfer.py).
"""

from typing import NamedTuple

import torch

__all__ = ["DataPlacement", "place_data"]


class DataPlacement(NamedTuple):
    search_dtype: torch.dtype  # of the noise and the searches: the data's, float32 for 16-bit data
    where: torch.device  # where the standardised copy of the data is kept
    streamed: bool  # whether each pass copies it to the device chunk by chunk
    pinned: bool  # kept in page-locked host memory (streamed from the host to a GPU)


def place_data(flat, device, chunk_size, stream_data):
    """The placement of ``flat`` (N, D), the data as given, for searches on ``device``.
    ``stream_data``: True, False, or None (streamed when ``chunk_size`` is given and the data are
    held on another device than ``device``)."""
    if stream_data not in (None, True, False):
        raise ValueError(f"argument 'stream_data' must be True, False or None, got {stream_data!r}")
    if stream_data and chunk_size is None:
        raise ValueError("argument 'stream_data': streaming copies the data in chunks; give a 'chunk_size'")
    if device.type == "cuda" and device.index is None:  # "cuda" is the current GPU, as the data's "cuda:0" says
        device = torch.device("cuda", torch.cuda.current_device())
    streamed = chunk_size is not None and flat.device != device if stream_data is None else stream_data
    where = flat.device if streamed else device
    return DataPlacement(search_dtype=torch.promote_types(flat.dtype, torch.float32), where=where,
                         streamed=streamed, pinned=streamed and where.type == "cpu" and device.type == "cuda")
