"""Progress bars of the solvers (ot_flow/solvers/progress.py)."""

import math

from ot_flow.solvers import progress
from ot_flow.solvers.progress import progress_bar


def test_postfix_is_formatted_once_per_refresh_interval():
    bar = progress_bar(True, 10, "demo")
    bar.mininterval = math.inf  # every later postfix without a refresh falls in the same interval
    bar.set_postfix(error="1", refresh=False)
    bar.set_postfix(error="2", refresh=False)
    assert bar.postfix == "error=1"
    bar.set_postfix(error="3")  # a refresh always formats
    assert bar.postfix == "error=3"
    bar.close()


def test_hidden_bar_never_formats_its_postfix():
    bar = progress_bar(False, 10, "demo")
    bar.set_postfix(error="1")
    assert not getattr(bar, "postfix", None)
    bar.close()


def test_auto_bar_makes_no_tqdm_until_its_delay(monkeypatch):
    bar = progress_bar("auto", 100, "demo")
    for _ in range(5):
        bar.update(1)
        bar.set_postfix(error="0.5", refresh=False)
    assert bar._bar is None  # a short solve never sets up a tqdm
    monkeypatch.setattr(progress, "_AUTO_DELAY_S", 0.0)
    with bar:
        bar.update(2)
        assert bar._bar is not None and bar._bar.n == 7 and bar._bar.total == 100
        assert bar._bar.postfix == "error=0.5"  # the postfix set before it showed
        bar.set_postfix(error="0.25")
        assert bar._bar.postfix == "error=0.25"
    assert bar._bar.disable  # closed on leaving the block
