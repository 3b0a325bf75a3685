"""Deferred host reads of the Sinkhorn loop (sinkhorn_iterations.py): its marginal errors and
the finiteness of its potentials stay on the device as they are computed and come to the host
together, one synchronisation per read. On a GPU a read waits for every kernel queued before it,
so reading twice per iteration leaves the GPU idle between half-steps while the host decides;
reading every few iterations lets the host queue the next half-steps meanwhile. On the CPU a
read costs nothing and the loop reads every iteration (``check_every`` "auto")."""

import math

import torch

__all__ = ["Readback"]


class Readback:
    """The errors and finiteness flags queued since the last read."""

    def __init__(self, every):
        self.every = every
        self._errors = []  # 0-dim tensors, one per measured iteration
        self._finite = None  # a 0-dim float64 tensor, finite iff every potential checked since the last read was

    def error(self, value):
        self._errors.append(value)

    def require_finite(self, checksum):
        """``checksum``: a 0-dim float64 tensor that is finite exactly when the potential is (its sum)."""
        self._finite = checksum if self._finite is None else self._finite + checksum

    def due(self):
        return len(self._errors) >= self.every

    def pending(self):
        return bool(self._errors) or self._finite is not None

    def read(self):
        """(errors as floats, in order; whether every potential checked was finite), one synchronisation."""
        parts = self._errors + ([] if self._finite is None else [self._finite])
        if parts and parts[0].device.type != "cpu":
            values = torch.stack([p.reshape(()).to(torch.float64) for p in parts]).tolist()
        else:  # nothing to wait for: reading each scalar is cheaper than stacking them (~20 us)
            values = [p.item() for p in parts]
        finite = self._finite is None or math.isfinite(values.pop())
        self._errors, self._finite = [], None
        return values, finite
