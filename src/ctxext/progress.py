"""Progress bars for ctxext's long jobs (eval, search, train, synth-qa, fixture builds).

On a terminal a bar redraws in place several times a second. Written to a log file (a batch job, `nohup`, CI)
each redraw becomes another line of text, so a half-hour forward left ~75 KB of bars in a log; there the bars
redraw at most every `LOG_INTERVAL` seconds instead.
"""

from __future__ import annotations

import sys
from typing import IO, Any

LOG_INTERVAL = 30.0  # seconds between redraws when the bar does not go to a terminal


def is_terminal(stream: IO[str] | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def bar_options(stream: IO[str] | None = None, **options: Any) -> dict[str, Any]:
    """tqdm keyword arguments for a bar on `stream` (default stderr): `options` as given, plus the redraw
    interval for logs; an explicit `mininterval` wins."""
    stream = sys.stderr if stream is None else stream
    options.setdefault("dynamic_ncols", True)
    if not is_terminal(stream):
        options.setdefault("mininterval", LOG_INTERVAL)
    return options


def progress_bar(iterable: Any = None, **options: Any) -> Any:
    """A tqdm bar (`tqdm.auto`) with `bar_options`."""
    from tqdm.auto import tqdm

    return tqdm(iterable, **bar_options(options.get("file"), **options))
