"""Progress bars redraw in place on a terminal and at most every LOG_INTERVAL seconds in a log file."""

from __future__ import annotations

import io
import time

from ctxext.progress import LOG_INTERVAL, bar_options, is_terminal, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Closed(io.StringIO):
    def isatty(self) -> bool:
        raise ValueError("I/O operation on closed file")


def draws(text: str) -> int:
    return text.count("\r")


def test_options_by_stream():
    assert bar_options(io.StringIO(), unit="s") == {"unit": "s", "dynamic_ncols": True, "mininterval": LOG_INTERVAL}
    assert bar_options(Terminal(), unit="s") == {"unit": "s", "dynamic_ncols": True}
    assert bar_options(io.StringIO(), mininterval=1.0)["mininterval"] == 1.0  # the caller's choice wins
    assert not is_terminal(Closed()) and not is_terminal(None) and is_terminal(Terminal())


def test_a_log_gets_the_first_and_last_state_only():
    def run(stream: io.StringIO) -> str:
        bar = progress_bar(total=4, file=stream)
        for _ in range(4):
            time.sleep(0.12)  # past tqdm's terminal interval (0.1 s) every step
            bar.update(1)
        bar.close()
        return stream.getvalue()

    log, term = run(io.StringIO()), run(Terminal())
    assert draws(log) == 2 and "0/4" in log and "4/4" in log
    assert draws(term) >= 4
