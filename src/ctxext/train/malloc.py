"""Freed tensor memory back to the OS during CPU training (glibc malloc).

glibc serves a request of at least the mmap threshold with its own mmap, which free() unmaps; smaller ones come
from the heap, whose freed blocks it keeps. The threshold starts at 128 KiB but rises to the size of each large
block freed, up to 32 MiB. After one training step, every activation below 32 MiB (at 4k tokens, SmolLM2's
hidden states and MLP inputs) lands on a fragmented heap that is never returned: a 4k step of SmolLM2 peaks at
4.58 GiB, and at 2.91 GiB with the threshold fixed at 1 MiB (mallopt stops the rise), which keeps large tensors
on mmap (benchmarks/train_memory.py, results/train_memory-cpu.json). Calling malloc_trim(0) after each step
instead, measured the same way, gave 3.51 GiB at 2k and 4.73 at 4k (2.75 / 2.91 with the fixed threshold): the
heap fragments again within a step.

A fresh mapping per tensor costs page faults: 0.73-0.76× the tokens/s at 8k with 4 KiB pages. So the same call
also asks torch for transparent huge pages on allocations of 2 MiB or more (THP_MEM_ALLOC_ENABLE, read by torch
at its first such allocation, hence before the weights load): 0.88× at 8k in the committed run (0.94× in a
side-by-side check), 1.01× at 2k, 0.94× at 4k, same peaks.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD = 1 << 20  # 1 MiB: large tensors unmapped on free; small Python objects stay on the heap
THP_ENV = "THP_MEM_ALLOC_ENABLE"  # torch: 2 MiB-aligned large allocations with madvise(MADV_HUGEPAGE)
OFF_ENV = "CTXEXT_NO_MALLOC_TUNING"  # set to 1 to keep glibc's defaults (the baseline of train_memory.py)


def tune_malloc(threshold: int = THRESHOLD) -> int | None:
    """Fix glibc's mmap threshold at `threshold` bytes and ask torch for huge pages; -> the threshold set, or None
    when the C library is not glibc, mallopt refuses, or OFF_ENV is set."""
    if os.environ.get(OFF_ENV, "") not in ("", "0"):
        return None
    os.environ.setdefault(THP_ENV, "1")  # no effect once torch has made a 2 MiB allocation in this process
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without the symbol, Windows)
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return threshold if mallopt(M_MMAP_THRESHOLD, threshold) == 1 else None

