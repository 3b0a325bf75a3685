"""Copies from the host to a GPU that do not make the host wait, and the chunks of a data set
streamed from the host through the GPU.

``tensor.to("cuda")`` from ordinary (pageable) host memory waits for the copy, and so for every
kernel queued before it: a loop that copies its noise or its data in every step runs one step at a
time, the GPU idle while the host prepares the next. A copy from page-locked (pinned) memory with
``non_blocking=True`` is queued like a kernel instead, and one on a second CUDA stream runs beside
the kernels of the first. Off CUDA every copy here is an ordinary one, through the same code.
"""

import torch

__all__ = ["to_device", "stream_chunks"]

_side_streams = {}  # one copy stream per GPU, made once: creating a stream per pass costs more than a chunk


def to_device(t, device, dtype=None):
    """``t`` on ``device`` in ``dtype`` (default its own), queued without waiting when it goes from
    the host to a GPU (staged through pinned memory, which torch's host allocator recycles once the
    copy is done)."""
    device = torch.device(device)
    dtype = dtype or t.dtype
    if device.type == "cuda" and t.device.type == "cpu":
        t = t if t.is_pinned() else t.pin_memory()
        return t.to(device, non_blocking=True).to(dtype)
    return t.to(device, dtype)


def stream_chunks(y, ranges, device, dtype):
    """Yields ``y[c0:c1]`` on ``device`` in ``dtype`` for each (c0, c1) of ``ranges``, copied from
    wherever ``y`` is held (for a GPU, host memory should be pinned: else each copy waits).

    On CUDA the copy of chunk c + 1 is queued on a side stream before chunk c is handed out, so it
    runs while the caller's kernels of chunk c do: two chunks are on the device at a time (double
    buffering; a 16-bit chunk is widened to ``dtype`` on the caller's stream, a third buffer). Each
    copy lands in memory allocated on the caller's stream and the side stream waits for what that
    stream had queued, so a block just freed by a chunk still being read is never overwritten; the
    caller's stream waits for the copy before its first use of the chunk. Elsewhere each chunk is a
    plain copy, so the CPU runs this same path (and gives the same numbers as a resident data set)."""
    device = torch.device(device)
    if device.type != "cuda":
        for c0, c1 in ranges:
            yield y[c0:c1].to(device, dtype, copy=True)
        return
    compute = torch.cuda.current_stream(device)
    if compute.device not in _side_streams:
        _side_streams[compute.device] = torch.cuda.Stream(compute.device)
    side = _side_streams[compute.device]

    def start(c0, c1):
        buffer = torch.empty((c1 - c0, *y.shape[1:]), dtype=y.dtype, device=device)  # on the compute stream
        side.wait_stream(compute)
        with torch.cuda.stream(side):
            buffer.copy_(y[c0:c1], non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        return buffer, done

    ranges = list(ranges)
    pending = start(*ranges[0]) if ranges else None
    for i in range(len(ranges)):
        buffer, done = pending
        pending = start(*ranges[i + 1]) if i + 1 < len(ranges) else None
        compute.wait_event(done)
        yield buffer.to(dtype)
