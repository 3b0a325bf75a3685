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
    return _Bar(total=total, desc=desc, leave=False, disable=quiet, delay=_AUTO_DELAY_S if progress == "auto" else 0.0)


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
