"""Progress bars of long solves: silent for the short solves of a training loop, shown for the
ones a user waits on."""

import math
import time

import torch.distributed as dist
from tqdm.auto import tqdm

__all__ = ["progress_bar"]

_AUTO_DELAY_S = 2.0  # "auto": a solve that has run this long shows its bar


def progress_bar(progress, total, desc, process_group=None):
    """A tqdm bar: ``progress`` "auto" shows it after 2 seconds, True at once, False never; only
    rank 0 of ``process_group`` shows one."""
    if progress not in ("auto", True, False):
        raise ValueError(f"argument 'progress' must be 'auto', True or False, got {progress!r}")
    quiet = progress is False or (process_group is not None and dist.get_rank(process_group) != 0)
    if progress == "auto" and not quiet:
        return _DeferredBar(total=total, desc=desc, leave=False)
    return _Bar(total=total, desc=desc, leave=False, disable=quiet)


class _DeferredBar:
    """progress="auto": the bar of a solve that has run for _AUTO_DELAY_S. Until then it only
    counts its updates and keeps the latest postfix, and no tqdm exists: setting one up and
    closing it takes ~0.2 ms, 5% of a solve at OT-FM batch sizes, of which a training loop runs
    thousands. The bar it then makes starts at the count so far and from the solve's start time."""

    def __init__(self, **kwargs):
        self._kwargs, self._start, self._n, self._postfix, self._bar = kwargs, time.time(), 0, None, None

    def update(self, n=1):
        if self._bar is not None:
            return self._bar.update(n)
        self._n += n
        if time.time() - self._start >= _AUTO_DELAY_S:
            # a delay keeps tqdm from drawing the bar before its start time is the solve's
            self._bar = _Bar(initial=self._n, delay=1e-9, **self._kwargs)
            self._bar.start_t = self._start  # the elapsed time and rate of the whole solve
            if self._postfix is not None:
                self._bar.set_postfix(self._postfix)
            self._bar.refresh()
        return None

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        if self._bar is not None:
            return self._bar.set_postfix(ordered_dict, refresh, **kwargs)
        self._postfix = dict(ordered_dict or {}, **kwargs)
        return None

    def close(self):
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _Bar(tqdm):
    """A tqdm bar whose postfix, set without a refresh, is formatted at most once per refresh
    interval: a solve sets it every iteration, and formatting it (~10 us) was a twentieth of a
    small solve's iteration. A hidden bar (False, another rank) never formats it."""

    _postfix_at = -math.inf

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        if self.disable:
            return
        now = time.monotonic()
        if not refresh and now - self._postfix_at < self.mininterval:
            return
        self._postfix_at = now
        super().set_postfix(ordered_dict, refresh, **kwargs)
