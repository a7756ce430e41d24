"""Progress bars for the long steps (fixture training, quantization, each variant's phases and load
sweep): on a terminal only. A CI log is not a terminal, and a bar there is thousands of carriage-return
lines, so bars are off when stderr is not a TTY or `CI` is set; `EVALGATE_PROGRESS=1|0` forces them
on or off. `quiet_bars_in_logs` extends the same rule to the libraries' own bars (lm-eval, transformers,
datasets: all tqdm) through tqdm's `TQDM_DISABLE` default, which child processes inherit.
"""

from __future__ import annotations

import os
import sys


def enabled() -> bool:
    forced = os.environ.get("EVALGATE_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty() and not os.environ.get("CI")


def bar(iterable=None, **kwargs):
    """A tqdm bar that is on only where a person watches (see `enabled`)."""
    from tqdm import tqdm

    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not enabled(), **kwargs)


def quiet_bars_in_logs() -> None:
    """Third-party tqdm bars off where ours are (tqdm reads `TQDM_*` variables as its defaults)."""
    if not enabled():
        os.environ.setdefault("TQDM_DISABLE", "1")
