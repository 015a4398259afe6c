"""Training throughput and peak memory of `ctxext train` at long sequence lengths (default: SmolLM2-135M).

    python benchmarks/train_speed.py                          # CPU: 8k and 16k, full fine-tuning
    python benchmarks/train_speed.py --lengths 8192,16384,32768,65536 --steps 4    # on a GPU
    python benchmarks/train_speed.py --quick                  # 2k, ctxext and the naive loop (minutes)

Each length is one `ctxext train` process (so its peak memory is its own): --steps optimizer steps of one
sequence, no evaluation; tokens/s is measured over the steps after the first (which pays warm-up and allocator
costs). Peak memory is torch.cuda.max_memory_allocated on GPU and the process's peak RSS on CPU (both from after
the model is loaded), next to ctxext's estimate.

The baseline, in the same run (`naive@L` variants): stock transformers training as a user first writes it, in its
own process on the same tokens — `model(input_ids=x, labels=x).loss.backward()` (full-vocabulary logits, no
gradient checkpointing, SDPA attention) and torch's AdamW — timed and measured the same way; `naive-ckpt@L` adds
transformers' own `gradient_checkpointing_enable()` (the usual first memory fix, which keeps the full logits).
A watchdog stops a baseline when its resident memory passes --naive-limit-gib (default: 90 % of the memory
available at the start), and the row records where it stopped instead of letting the kernel kill other work.

Useful work per token is 6·N + 12·layers·hidden·T FLOPs (the PaLM definition: recomputation by gradient
checkpointing is not counted); it is reported as model FLOPs utilisation against the peak bf16 rate of a GPU whose
exact name is in PEAK_BF16, else as a fraction of a matmul rate measured in the same run on the device that trains
(fp32 on the CPU, bf16 on a GPU not in the table).

Writes benchmarks/results/train_speed-<device>.json (--quick: train_speed-<device>-quick.json, whose ordering of
ctxext and the naive loop the README compares with the full run's) and prints a table. Rows of other lengths and
variants already in the file are kept (a file of another --model or --scaling is refused: give that run its own
--out); each row's `run` names its entry in `run_meta` (machine, versions, date, command, matmul rate of the run
that measured it). The top-level `meta` is the latest run's.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOKS = ("pg1342.txt", "pg2701.txt", "pg1513.txt")
NAIVE_CKPT = "naive-ckpt"
NAIVE = ("naive", NAIVE_CKPT)  # the stock transformers baselines (variants run by run_naive, not ctxext train)
# dense bf16 FLOP/s (no sparsity) by the exact name torch gives: one chip name covers several SKUs with other peaks
# (H100 SXM 989.4, PCIe 756, NVL 835), so a name not listed here gets a matmul rate measured on it instead
PEAK_BF16 = {"NVIDIA H100 80GB HBM3": 989.4e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
             "NVIDIA H200": 989.4e12, "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
             "NVIDIA A100-PCIE-40GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12, "NVIDIA L40S": 362e12,
             "NVIDIA A10G": 125e12}


def device_name() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name(0)
    return name, PEAK_BF16.get(name.strip())


def reference_rate(device: str, peak: float | None) -> tuple[float | None, str | None]:
    """(FLOP/s, dtype) of the matmul rate the useful work is divided by when there is no known peak: measured on
    the device that trains, in the dtype it computes in (bf16 autocast on a GPU, fp32 on the CPU)."""
    if peak:
        return None, None
    import torch

    from ctxext.evals.cost import measure_matmul_rate

    if device == "cpu":
        return measure_matmul_rate(torch.float32, device="cpu", seconds=3.0), "float32"
    return measure_matmul_rate(torch.bfloat16, device="cuda", seconds=3.0), "bfloat16"


def is_naive(extra: list[str]) -> bool:
    return bool(extra) and extra[0] in NAIVE


def useful_flops_per_token(n_params: int, n_layers: int, hidden: int, length: int) -> float:
    """Forward + backward FLOPs per token that count as work: 6·N for the weights, 12·n·H·T for attention."""
    return 6 * n_params + 12 * n_layers * hidden * length


def naive_worker(model: str, length: int, steps: int, books: Path, ckpt: bool = False) -> dict:
    """The baseline loop, run inside a worker process; `ckpt`: with transformers' own gradient checkpointing."""
    import numpy as np
    import torch

    from ctxext.data import load_documents
    from ctxext.models import load_model
    from ctxext.train.loop import peak_memory, reset_peak_memory  # what ctxext train measures, the same way

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = load_model(model, device=device)  # fp32 weights; on a GPU the step autocasts to bf16, as ctxext train does
    ids = np.concatenate([d.tokens for d in load_documents([books / b for b in BOOKS], lm.tokenizer)])[:length]
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device)[None]
    lm.model.train()
    if ckpt:
        lm.model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(lm.model.parameters(), lr=2e-5)
    reset_peak_memory(device)
    seconds, losses = [], []
    for _ in range(steps):
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = lm.model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))  # a host sync: the step has finished on the GPU too
        seconds.append(time.perf_counter() - t)
    timed = seconds[1:] or seconds
    return {"length": length, "extra": [NAIVE_CKPT if ckpt else "naive"], "steps": steps,
            "tokens_per_second": length * len(timed) / sum(timed),
            "step_seconds": [round(x, 4) for x in seconds], "peak_memory_gib": round(peak_memory(device) / 2**30, 3),
            "losses": losses, "final_loss": losses[-1], "torch_threads": torch.get_num_threads(),
            "attn_implementation": lm.model.config._attn_implementation}


def run_naive(model: str, length: int, steps: int, books: Path, limit_gib: float, variant: str = "naive") -> dict:
    """The naive worker in its own process, stopped by a watchdog when its RSS passes `limit_gib`."""
    import psutil

    cmd = [sys.executable, __file__, "--worker", variant, "--model", model, "--lengths", str(length),
           "--steps", str(steps), "--books", str(books)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    watch, worst = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            worst = max(worst, watch.memory_info().rss)
        except psutil.NoSuchProcess:  # it ended between poll and the read
            break
        if worst > limit_gib * 2**30:
            proc.kill()
            proc.wait()
            return {"length": length, "extra": [variant], "error": f"stopped at {worst / 2**30:.1f} GiB resident, past "
                    f"the limit of {limit_gib:.1f} GiB (this machine's available memory): does not fit",
                    "stopped_after_seconds": round(time.perf_counter() - t0, 1)}
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"length": length, "extra": [variant], "error": (err.strip().splitlines() or ["?"])[-1]}
    r = json.loads(out.strip().splitlines()[-1])
    r["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return r


def run_one(model: str, scaling: str, length: int, steps: int, extra: list[str], books: Path, work: Path) -> dict:
    out = work / f"run-{length}-{'-'.join(a.strip('-') for a in extra) or 'default'}"
    cmd = [sys.executable, "-m", "ctxext.cli", "train", "--model", model, "--scaling", scaling,
           *[x for b in BOOKS for x in ("--data", str(books / b))], "--seq-len", str(length), "--steps", str(steps),
           "--warmup", "1", "--no-eval", "--no-progress", "--save-every", "1000000", "--out", str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    res = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else None
    s = res["training"]["summary"] if res else {}
    if not s.get("tokens_per_second"):  # a failed export verification still leaves the training figures
        said = [ln for ln in proc.stderr.splitlines() if ln.startswith("ctxext: error") or "Error" in ln]
        why = said[-1] if said else f"exit status {proc.returncode}" + (" (killed: out of memory?)"
                                                                        if proc.returncode < 0 else "")
        return {"length": length, "extra": extra, "error": why}
    hist = res["training"]["history"]
    return {"length": length, "extra": extra, "steps": steps, "tokens_per_second": s["tokens_per_second"],
            "step_seconds": [h["step_seconds"] for h in hist], "peak_memory_gib": s["peak_memory_gib"],
            "memory_estimate_gib": s["memory_estimate_gib"], "memory_estimate": res["meta"]["memory_estimate"],
            "n_params": res["meta"]["trainable_parameters"], "wall_seconds": round(wall, 1),
            "mixed_precision": res["meta"]["mixed_precision"], "torch_threads": res["meta"]["torch_threads"],
            "final_loss": s["final_loss"], "export_verification": s.get("export_verification"),
            "exit_status": proc.returncode}


def results_path(device: str, quick: bool) -> Path:
    """Where a run on this device writes; --quick keeps its own file, so it never replaces the full run's rows."""
    from ctxext.runinfo import device_slug

    return ROOT / "benchmarks" / "results" / f"train_speed-{device_slug(device)}{'-quick' if quick else ''}.json"


@contextlib.contextmanager
def results_lock(path: Path):
    """Hold an exclusive lock on `path`'s sibling .<name>.lock for a read-merge-write of `path` (two runs that
    finish together would otherwise each keep only their own rows). The results file itself is replaced by an
    atomic rename, so the lock lives in its own file."""
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_same_setup(meta: dict, old: dict) -> None:
    """Refuse to merge this run into a file whose runs trained another model or scaling (its rows are keyed by length
    and variant only)."""
    from ctxext.runinfo import refuse_other_setup

    refuse_other_setup(list((old.get("run_meta") or {}).values()) or ([old["meta"]] if old.get("meta") else []), meta)


def merge_results(rows: list[dict], meta: dict, run_id: str, old: dict | None) -> dict:
    """The results file after this run: its rows, plus the old file's rows of every (length, variant) it did not
    measure; `run_meta` maps each run id that a row names to where and how that run ran (this run's `meta`).
    A file written before run_meta existed holds only its last run's meta: it is credited to the latest run id among
    its rows (that run wrote it, and its rows were still there), flagged `from_legacy_meta`; older runs' rows name
    a run with no entry. A file of another model or scaling is refused (check_same_setup)."""
    old = old or {}
    check_same_setup(meta, old)
    done = {(r["length"], tuple(r["extra"])) for r in rows}
    kept = [r for r in old.get("runs", []) if (r["length"], tuple(r["extra"])) not in done]
    run_meta = dict(old.get("run_meta") or {})
    if "run_meta" not in old and old.get("meta"):
        ids = [r["run"] for r in old.get("runs", []) if r.get("run")]
        if ids:
            run_meta[max(ids)] = {**old["meta"], "from_legacy_meta": True}
    run_meta[run_id] = meta
    merged = sorted(kept + rows, key=lambda r: (r["length"], r["extra"]))
    named = {r.get("run") for r in merged}
    return {"meta": meta, "run_meta": {k: v for k, v in sorted(run_meta.items()) if k in named}, "runs": merged}


def main(argv: list[str] | None = None) -> None:
    from ctxext import runinfo
    from ctxext.evals.files import atomic_write
    from ctxext.fixtures import books_dir
    from ctxext.models import model_info

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--scaling", default="yarn:factor=8", help="the same spec at every length (speed does not depend on it)")
    p.add_argument("--lengths", default="4096,8192,16384")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--variants", default="default,no-ckpt@8192,naive@4096,naive@8192,naive@16384,naive-ckpt@8192,"
                                         "naive-ckpt@16384",
                   help="default = gradient checkpointing on; no-ckpt@L = also without it at length L; lora@L = LoRA; "
                        "naive@L = the stock transformers baseline at length L; naive-ckpt@L = the same with "
                        "transformers' gradient_checkpointing_enable()")
    p.add_argument("--naive-limit-gib", type=float, default=None,
                   help="stop the naive baseline past this resident memory (default: 90 %% of what is available)")
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="2 048 tokens, ctxext and the naive loop (minutes)")
    p.add_argument("--worker", choices=NAIVE, help=argparse.SUPPRESS)
    p.add_argument("--books", default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(naive_worker(args.model, int(args.lengths), args.steps, Path(args.books),
                                      ckpt=args.worker == NAIVE_CKPT)))
        return

    if args.quick:
        runinfo.override_defaults(p, args, {"lengths": "2048", "variants": "naive@2048"}, argv)
    device, peak = device_name()
    out = Path(args.out) if args.out else results_path(device, args.quick)
    if out.is_file():  # before the runs, not after them: a file of another model or scaling is refused
        check_same_setup({"model": args.model, "scaling": args.scaling}, json.loads(out.read_text()))
    info = model_info(args.model)
    lengths = [int(x) for x in args.lengths.split(",")]
    jobs: list[tuple[int, list[str]]] = [(L, []) for L in lengths]
    flags = {"no-ckpt": ["--no-grad-checkpointing"], "lora": ["--lora"], **{v: [v] for v in NAIVE}}
    for v in args.variants.split(","):
        if "@" in v:
            name, at = v.split("@")
            jobs.append((int(at), flags[name]))
    jobs.sort(key=lambda j: (j[0], is_naive(j[1])))  # ctxext first at each length
    import psutil

    limit = args.naive_limit_gib or 0.9 * psutil.virtual_memory().available / 2**30
    rate, rate_dtype = reference_rate(device, peak)
    run_id = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ctxext-train-speed-") as work:
        for L, extra in jobs:
            print(f"{args.model} @ {L:,} {' '.join(extra)} …", file=sys.stderr, flush=True)
            r = (run_naive(args.model, L, args.steps, books_dir(), limit, extra[0]) if is_naive(extra)
                 else run_one(args.model, args.scaling, L, args.steps, extra, books_dir(), Path(work)))
            work_per_s = r.get("tokens_per_second", 0) * useful_flops_per_token(info.n_params, info.n_layers,
                                                                                  info.hidden_size, L)
            if work_per_s and peak:
                r["mfu"] = work_per_s / peak
            elif work_per_s:
                r["fraction_of_matmul_rate"] = work_per_s / rate
                r.update(matmul_flops=rate, matmul_dtype=rate_dtype)
            r["run"] = run_id  # the README forms ctxext/naive ratios only from rows of the same run
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    meta = {"run": run_id, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": runinfo.versions(),
            "machine": runinfo.machine(), "device": device, "peak_bf16_flops": peak, "matmul_flops": rate,
            "matmul_dtype": rate_dtype,
            "model": args.model, "scaling": args.scaling, "steps": args.steps, "quick": args.quick,
            "command": " ".join(sys.argv)}
    # keep the runs of other lengths / variants measured before, read now under a lock (only when there is a file
    # to merge with: a fresh --out, e.g. a lent GPU's $OUT, which brings back few files, gets no lock file beside it)
    with results_lock(out) if out.is_file() else contextlib.nullcontext():
        result = merge_results(rows, meta, run_id, json.loads(out.read_text()) if out.is_file() else None)
        atomic_write(out, json.dumps(result, indent=1) + "\n")
    rows = result["runs"]
    print(f"\n{args.model} on {device} ({args.steps} steps, tokens/s over steps 2..):")
    print(f"{'length':>8} {'variant':<26} {'tokens/s':>9} {'peak GiB':>9} {'est. GiB':>9} {'MFU/matmul':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['length']:>8} {' '.join(r['extra']):<26} error: {r['error']}")
            continue
        frac = r.get("mfu", r.get("fraction_of_matmul_rate"))
        est = r.get("memory_estimate_gib")
        print(f"{r['length']:>8} {' '.join(r['extra']) or 'grad ckpt, full FT':<26} {r['tokens_per_second']:>9.1f} "
              f"{r['peak_memory_gib']:>9.2f} {'–' if est is None else f'{est:.2f}':>9} "
              f"{'–' if frac is None else f'{100 * frac:.1f}%':>10}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
