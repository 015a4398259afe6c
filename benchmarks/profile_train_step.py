"""Where a `ctxext train` step's time goes: torch.profiler over a few optimizer steps of the real command.

    python benchmarks/profile_train_step.py [--steps-profiled 3] -- <ctxext train arguments>

Runs `ctxext train` in this process with its optimizer step wrapped: steps 1-2 warm up, the next
--steps-profiled steps run under the profiler (CPU and, on a GPU, CUDA activity). Prints the ops by self CPU
time and by device time, and the step's wall time beside the time the device was busy: a step whose wall time
is well above its device time is bound by the host (kernel launches, Python, host syncs), not by the GPU.
Writes the tables to --out (text). Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernelEx", "cuLaunchKernel")  # the host-side launch calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps-profiled", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path("runs/profile_train_step.txt"))
    ap.add_argument("train_args", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    import ctxext.train.loop as loop
    from ctxext.cli import main as cli

    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=acts)
    inner = loop._optimizer_step
    seen, walls = [0], []

    def step(*a, **k):  # the wrapped optimizer step: profile steps warmup+1 .. warmup+steps_profiled
        seen[0] += 1
        on = args.warmup < seen[0] <= args.warmup + args.steps_profiled
        if on and seen[0] == args.warmup + 1:
            prof.__enter__()
        t = time.perf_counter()
        r = inner(*a, **k)  # returns a float: the step has finished on the device
        if on:
            walls.append(time.perf_counter() - t)
        if on and seen[0] == args.warmup + args.steps_profiled:
            prof.__exit__(None, None, None)
        return r

    loop._optimizer_step = step
    rest = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    cli(["train", *rest])
    if not walls:
        sys.exit(f"no step was profiled: give --steps > {args.warmup} to ctxext train")
    ka = prof.key_averages()
    # kernels only, as the table's own "Self CUDA time total": an op's self device time is its kernels' again, and a
    # user annotation's device-side range (record_function, the optimizer step) spans kernels counted already
    dev_us = sum(e.self_device_time_total for e in ka if e.device_type == DeviceType.CUDA
                 and not getattr(e, "is_user_annotation", False)) if cuda else 0
    launches = sum(e.count for e in ka if e.key in LAUNCHES)
    lines = [f"{len(walls)} optimizer steps profiled: wall {sum(walls) / len(walls):.4f} s each"
             + (f", device busy {dev_us / 1e6 / len(walls):.4f} s each (sum of kernel self times), "
                f"{launches / len(walls):.0f} kernel launches each" if cuda else ""),
             "", "by self CPU time:", ka.table(sort_by="self_cpu_time_total", row_limit=args.rows)]
    if cuda:
        lines += ["by device time:", ka.table(sort_by="self_device_time_total", row_limit=args.rows)]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
