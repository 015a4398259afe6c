"""Where the peak memory of a `ctxext train` step goes, phase by phase (CPU), with ctxext's allocator setting and
with glibc's defaults (the baseline, same run), next to ctxext's estimate.

    python benchmarks/train_memory.py                       # SmolLM2-135M, 2k / 4k / 8k, 2 steps each
    python benchmarks/train_memory.py --lengths 16384 --add # one more length, kept beside the others
    python benchmarks/train_memory.py --lengths 16384 --parallel --add  # both variants at once, one core each
    python benchmarks/train_memory.py --quick               # 2k only, 2 steps: train_memory-cpu-quick.json

Each length and variant runs `ctxext train` in its own process with a sampler thread reading the resident set
(RSS, /proc/self/statm) every few milliseconds, and marks on the phases of each optimizer step: the forward
(LossModel.forward), the backward (Accelerator.backward) and the optimizer step (torch's global optimizer-step
hooks). Per step and phase it records the RSS at the start, the highest RSS inside, and the RSS at the end, in
GiB; `baseline_gib` is the RSS when the step starts. Variants: `tuned` is ctxext train as shipped (glibc's mmap
threshold fixed at 1 MiB, ctxext.train.malloc); `glibc` sets CTXEXT_NO_MALLOC_TUNING=1. The tuned row holds the
ratios tuned / glibc of peak memory and tokens/s (tokens/s from the steps after the first, as ctxext train reports).

The estimate (ctxext.train.memory) is compared with the highest RSS of any step: `estimate_gib` is what the
current code estimates for the run (rewritten on every write; `--reestimate` does only that), `estimate_at_run_gib`
what the run itself printed.

Writes benchmarks/results/train_memory-cpu.json and prints a table. --quick (2 048 tokens, 2 steps, so tokens/s
still leaves out the first step) writes train_memory-cpu-quick.json instead and never touches the full run's file;
an --out or --lengths given with it is kept. --add reads, merges and writes the file under a lock
(.train_memory-cpu.json.lock beside it), so runs of other lengths finishing together keep each other's rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_speed import BOOKS, results_lock  # noqa: E402  (the same training text as the speed benchmark)

from ctxext.evals.files import atomic_write  # noqa: E402
from ctxext.train.malloc import OFF_ENV  # noqa: E402

GIB = 2**30
PAGE = os.sysconf("SC_PAGE_SIZE")
PHASES = ("forward", "backward", "optimizer")
VARIANTS = ("tuned", "glibc")  # ctxext's fixed mmap threshold (ctxext.train.malloc) vs glibc's defaults
OUT = ROOT / "benchmarks" / "results" / "train_memory-cpu.json"
# --quick replaces these defaults (an option given on the command line is kept); 2 steps at least, so tokens/s is
# measured over a step after the first (which pays warm-up)
QUICK = {"lengths": "2048", "steps": 2, "out": str(OUT.with_name("train_memory-cpu-quick.json"))}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Sampler:
    """RSS sampled on a thread (torch kernels release the GIL); `mark(name)` opens a phase."""

    def __init__(self, period: float = 0.003):
        self.period, self.rows = period, []
        self._cur: dict | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            r = rss()
            with self._lock:
                if self._cur is not None:
                    self._cur["max"] = max(self._cur["max"], r)
            time.sleep(self.period)

    def start(self) -> "Sampler":
        self._t.start()
        return self

    def mark(self, phase: str | None) -> None:
        r = rss()
        with self._lock:
            if self._cur is not None:
                self._cur["end"] = r
                self._cur["max"] = max(self._cur["max"], r)
                self.rows.append(self._cur)
            self._cur = None if phase is None else {"phase": phase, "start": r, "max": r}

    def stop(self) -> None:
        self.mark(None)
        self._stop.set()
        self._t.join()


def child(length: int, model: str, scaling: str, steps: int, books: Path) -> dict:
    """One `ctxext train` in this process, its step phases sampled."""
    import accelerate
    import torch
    from torch.optim import optimizer as optim_hooks

    from ctxext import cli
    from ctxext.train import loss as loss_mod

    s = Sampler().start()
    fwd = loss_mod.LossModel.forward
    bwd = accelerate.Accelerator.backward

    def forward(self, *a, **k):
        s.mark("forward")
        return fwd(self, *a, **k)

    def backward(self, *a, **k):
        s.mark("backward")
        out = bwd(self, *a, **k)
        s.mark("between")
        return out

    loss_mod.LossModel.forward = forward
    accelerate.Accelerator.backward = backward
    optim_hooks.register_optimizer_step_pre_hook(lambda *_: s.mark("optimizer"))
    optim_hooks.register_optimizer_step_post_hook(lambda *_: s.mark("between"))
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", "--model", model, "--scaling", scaling, *[x for b in BOOKS for x in ("--data", str(books / b))],
                "--seq-len", str(length), "--steps", str(steps), "--warmup", "1", "--no-eval", "--no-progress",
                "--save-every", "1000000", "--out", f"{tmp}/run"]
        code = cli.main(argv)
        s.stop()
        res = json.loads((Path(tmp) / "run" / "results.json").read_text())
    steps_out, step = [], None
    for row in s.rows:
        if row["phase"] == "forward":
            step = {"baseline_gib": row["start"] / GIB}
            steps_out.append(step)
        if step is not None and row["phase"] in PHASES:
            step[row["phase"]] = {k: round(row[k] / GIB, 3) for k in ("start", "max", "end")}
    for st in steps_out:
        st["baseline_gib"] = round(st["baseline_gib"], 3)
        st["peak_gib"] = max(st[p]["max"] for p in PHASES if p in st)
    summ = res["training"]["summary"]
    return {"length": length, "exit_status": code, "steps": steps_out,
            "peak_gib": max(st["peak_gib"] for st in steps_out), "reported_peak_gib": summ["peak_memory_gib"],
            "tokens_per_second": summ["tokens_per_second"], "final_loss": summ["final_loss"],
            "malloc_mmap_threshold": res["meta"]["malloc_mmap_threshold"],
            "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),  # set by ctxext train since 2026-12-02
            "memory_estimate": res["meta"]["memory_estimate"], "torch_threads": torch.get_num_threads()}


def run_child(args: argparse.Namespace, length: int, variant: str, steps: int) -> dict:
    """One length and allocator variant in its own process (its peak is its own)."""
    env = {**os.environ, OFF_ENV: "1" if variant == "glibc" else "0"}
    cmd = [sys.executable, __file__, "--child", str(length), "--model", args.model, "--scaling", args.scaling,
           "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        return {"length": length, "variant": variant, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    r = {"variant": variant, "steps_run": steps, **json.loads(proc.stdout.strip().splitlines()[-1])}
    r["command"] = " ".join(sys.argv[1:])
    r["estimate_gib"] = current_estimate(args.model, args.scaling, length, variant)
    return r


def merge_runs(new: list[dict], old: list[dict]) -> list[dict]:
    """The new rows plus the old rows of every (length, variant) the new run did not measure. An old tuned row keeps
    its ratio only while the glibc row it was measured beside stays too."""
    key = lambda r: (r["length"], r.get("variant", "tuned"))  # noqa: E731
    measured = {key(r) for r in new}
    kept = [dict(r) for r in old if key(r) not in measured]
    for r in kept:
        if (r["length"], "glibc") in measured:
            r.pop("vs_glibc_default", None)
    return new + kept


def check_same_setup(prev_meta: dict, model: str, scaling: str) -> None:
    """--add merges rows by length and variant under one model: refuse a file of another model or scaling."""
    from ctxext.runinfo import refuse_other_setup

    refuse_other_setup([prev_meta], {"model": model, "scaling": scaling})


def current_estimate(model: str, scaling: str, length: int, variant: str) -> float:
    """What ctxext train estimates now for this run (GiB); rewritten into every row on each write, so a changed
    estimate is compared with the peaks already measured (--reestimate)."""
    from ctxext.train import TrainConfig
    from ctxext.train.setup import plan_run

    cfg = TrainConfig(model=model, scaling=scaling, data=("-",), seq_len=length, steps=2, out="-")
    return round(plan_run(cfg, 1, False, 1, malloc_tuned=variant == "tuned").memory.total / GIB, 3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from ctxext import runinfo

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--scaling", default="yarn:factor=8")
    p.add_argument("--lengths", default="2048,4096,8192")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="2 048 tokens, 2 steps, into train_memory-cpu-quick.json (the full run's file is left alone)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--variants", default=",".join(VARIANTS), help="tuned and/or glibc")
    p.add_argument("--add", action="store_true",
                   help="keep the rows of the results file (length and variant) that this run does not measure")
    p.add_argument("--parallel", action="store_true", help="run the variants of a length side by side, one core each")
    p.add_argument("--reestimate", action="store_true",
                   help="run nothing: rewrite the results file's estimates with the current formula")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.quick:
        runinfo.override_defaults(p, args, QUICK, argv)
        args.steps = max(2, args.steps)  # tokens/s over the steps after the first: one step would time the warm-up
    return args


def main(argv: list[str] | None = None) -> None:
    from ctxext import runinfo
    from ctxext.fixtures import books_dir

    args = parse_args(argv)
    books = books_dir()
    steps = args.steps
    if args.child:
        print(json.dumps(child(args.child, args.model, args.scaling, steps, books)))
        return
    out = Path(args.out)
    if args.add and not args.reestimate and out.is_file():  # before the runs, not after them
        check_same_setup(json.loads(out.read_text())["meta"], args.model, args.scaling)
    lengths = [int(x) for x in args.lengths.split(",")]
    rows: list[dict] = []
    variants = args.variants.split(",")
    for length in [] if args.reestimate else lengths:
        # --parallel: the variants of a length side by side (one core each), so they share the machine's load
        with ThreadPoolExecutor(max_workers=len(variants) if args.parallel else 1) as pool:
            done = list(pool.map(lambda v: run_child(args, length, v, steps), variants))
        for variant, r in zip(variants, done):
            rows.append(r)
            if "error" in r:
                print(f"{length:>7} {variant:<6} {r['error']}", flush=True)
                continue
            last = r["steps"][-1]
            print(f"{length:>7} {variant:<6} " + "  ".join(
                f"{ph} {last[ph]['start']:.2f}->{last[ph]['max']:.2f}->{last[ph]['end']:.2f}" for ph in PHASES)
                + f"  peak {r['peak_gib']:.2f}  estimate {r['estimate_gib']:.2f}  {r['tokens_per_second']:.1f} tok/s",
                flush=True)
        ours, base = (next((r for r in done if r["variant"] == v and "error" not in r), None) for v in VARIANTS)
        if ours and base:  # the ratios of the tuned allocator to glibc's defaults, only within one run
            ours["vs_glibc_default"] = ratio = {
                "peak": round(ours["peak_gib"] / base["peak_gib"], 3),
                "tokens_per_second": round(ours["tokens_per_second"] / base["tokens_per_second"], 3),
                "side_by_side": bool(args.parallel)}
            print(f"{length:>7} tuned / glibc: peak x{ratio['peak']}, tokens/s x{ratio['tokens_per_second']}")
    merging = args.add or args.reestimate
    with results_lock(out) if merging else contextlib.nullcontext():
        # read now, under the lock, not at the start: another length may have finished meanwhile
        prev = json.loads(out.read_text()) if merging and out.is_file() else None
        model, scaling = args.model, args.scaling
        if prev and args.reestimate:  # the file's rows were measured with its own model and scaling, not --model's
            rows, model, scaling = prev["runs"], prev["meta"]["model"], prev["meta"]["scaling"]
        elif prev:
            check_same_setup(prev["meta"], args.model, args.scaling)
            rows = merge_runs(rows, prev["runs"])
        for r in rows:
            if "error" not in r:
                r.setdefault("estimate_at_run_gib", round(r["memory_estimate"]["total"] / GIB, 3))  # what it printed
                r["estimate_gib"] = current_estimate(model, scaling, r["length"], r["variant"])
        rows.sort(key=lambda r: (r["length"], VARIANTS.index(r.get("variant", "tuned"))))
        meta = {"versions": runinfo.versions(), "machine": runinfo.machine(), "model": args.model,
                "scaling": args.scaling, "quick": args.quick, "command": " ".join(sys.argv)}
        if args.reestimate and prev:
            meta = {**prev["meta"], "reestimated_by": " ".join(sys.argv)}
        elif prev:  # the rows kept from earlier runs were measured there
            meta["machines"] = runinfo.merged_machines(prev["meta"], meta["machine"])
        atomic_write(out, json.dumps({"meta": meta, "runs": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
