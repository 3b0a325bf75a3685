"""Progress bars of the solvers (ot_flow/solvers/progress.py)."""

import math

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
