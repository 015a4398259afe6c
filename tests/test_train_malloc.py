"""ctxext.train.malloc: glibc's mmap threshold fixed for CPU training, so freed tensors go back to the OS."""

import json
import subprocess
import sys
from pathlib import Path

from ctxext.train import malloc

# In a fresh process: free a 24 MiB tensor (glibc raises its mmap threshold to 24 MiB), allocate 100 tensors of
# 4 MiB and one more on top, free the 100, and print how much the resident set grew (MiB).
PATTERN = r"""
import os, sys, torch
from ctxext.train.malloc import tune_malloc
set_to = tune_malloc()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
def huge_kib():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages"))
h0 = huge_kib()
big = torch.ones(6 * 2**20)
huge = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" and huge_kib() > h0  # torch asked for huge pages, got them
del big
r0 = rss()
keep = [torch.ones(2**20) for _ in range(100)]
top = torch.ones(2**20)
del keep
print(set_to, rss() - r0, huge)
"""


def grown(**env: str) -> tuple[str, float, str]:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", **env}
    out = subprocess.run([sys.executable, "-c", PATTERN], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    return out[0], float(out[1]), out[2]


def thp_madvise() -> bool:
    """The kernel gives huge pages where asked (madvise), not everywhere (always) nor never."""
    try:
        return "[madvise]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def test_fixed_threshold_returns_freed_tensors_to_the_os():
    set_to, tuned, huge = grown()
    assert set_to == str(malloc.THRESHOLD)
    if thp_madvise():  # elsewhere huge pages come always or never, whatever torch asks
        assert huge == "True"  # THP_MEM_ALLOC_ENABLE was set before torch's first large allocation
    assert tuned < 50, tuned  # each 4 MiB tensor was its own mapping, unmapped on free


def test_env_switch_keeps_glibc_defaults():
    set_to, kept, huge = grown(**{malloc.OFF_ENV: "1"})
    assert (set_to, huge) == ("None", "False")  # THP_MEM_ALLOC_ENABLE not set
    assert kept > 300, kept  # glibc's heap keeps the 400 MiB freed below the tensor on top


def test_training_records_the_threshold(tmp_path):
    from ctxext.fixtures import TRAIN_BOOKS, books_dir
    from ctxext.train import TrainConfig, train

    cfg = TrainConfig(model="tiny-rope", scaling="linear:factor=2", data=(str(books_dir() / TRAIN_BOOKS[2]),),
                      seq_len=256, steps=1, lr=1e-3, batch_tokens=256, warmup=1, evaluate=False,
                      grad_checkpointing=False, out=str(tmp_path / "run"))
    train(cfg, progress=False)
    meta = json.loads((tmp_path / "run" / "results.json").read_text())["meta"]
    assert meta["malloc_mmap_threshold"] == malloc.THRESHOLD


def test_estimate_bounds_the_committed_measurements():
    """ctxext train's estimate with the malloc setting is above every peak train_memory.py measured with it, by at
    most 30 %."""
    from pathlib import Path

    from ctxext.train import TrainConfig
    from ctxext.train.memory import GIB
    from ctxext.train.setup import plan_run

    res = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "train_memory-cpu.json").read_text())
    tuned = [r for r in res["runs"] if r.get("variant") == "tuned" and "error" not in r]
    assert len({r["length"] for r in tuned}) >= 3
    for r in tuned:
        cfg = TrainConfig(model=res["meta"]["model"], scaling=res["meta"]["scaling"], data=("-",),
                          seq_len=r["length"], steps=2, out="-")
        est = plan_run(cfg, 1, False, 1, malloc_tuned=True).memory.total / GIB
        assert 1.0 <= est / r["peak_gib"] <= 1.3, (r["length"], est, r["peak_gib"])
