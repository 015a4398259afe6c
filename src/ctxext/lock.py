"""One writer per --out folder: eval, train and search hold `OUT/.ctxext.lock` while they write there.

Two runs in one folder overwrote each other: eval rewrites results.json from memory after each cell (a second
`--resume` run lost every cell of the first, or its own, and both exited 0), train's saves deleted each other's
staging folder, search evaluated everything twice. The lock is advisory (`flock`): the kernel drops it when the
process dies, so a killed run never leaves a folder locked; the file stays (deleting it would race a new run).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import CtxextError

LOCK = ".ctxext.lock"


@contextmanager
def out_lock(out: str | Path, what: str) -> Iterator[None]:
    """Hold `out`'s lock for the block (the folder is created); another holder -> a one-line CtxextError naming it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): unguarded, as before
        yield
        return
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CtxextError(f"{out} is being written by another run ({holder}); wait for it to finish or choose "
                              "another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"ctxext {what}, pid {os.getpid()}\n")
        f.flush()
        yield
    finally:
        if created and os.listdir(out) == [LOCK]:  # a run refused before writing leaves no folder, as before
            (out / LOCK).unlink(missing_ok=True)
            out.rmdir()
        f.close()  # releases the lock


def is_lock(path: Path) -> bool:
    return path.name == LOCK
