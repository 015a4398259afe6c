"""Training throughput and peak memory of `ctxext train` at long sequence lengths (default: SmolLM2-135M).

    python benchmarks/train_speed.py                          # CPU: 8k and 16k, full fine-tuning
    python benchmarks/train_speed.py --lengths 8192,16384,32768,65536 --steps 4    # on a GPU

Each length is one `ctxext train` process (so its peak memory is its own): --steps optimizer steps of one
sequence, no evaluation; tokens/s is measured over the steps after the first (which pays warm-up and allocator
costs). Peak memory is torch.cuda.max_memory_allocated on GPU and the process's peak RSS on CPU, next to ctxext's
estimate. On GPU, model FLOPs utilisation = tokens/s × (6·N + 12·layers·hidden·T) / peak bf16 FLOP/s (the PaLM
definition: recomputation by gradient checkpointing is not counted as useful work).

Writes benchmarks/results/train_speed-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOKS = ("pg1342.txt", "pg2701.txt", "pg1513.txt")
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}  # dense, no sparsity


def device_name() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return name, peak


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


def main() -> None:
    from ctxext import runinfo
    from ctxext.fixtures import books_dir
    from ctxext.models import model_info

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--scaling", default="yarn:factor=8", help="the same spec at every length (speed does not depend on it)")
    p.add_argument("--lengths", default="8192,16384")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--variants", default="default,no-ckpt@8192",
                   help="default = gradient checkpointing on; no-ckpt@L = also without it at length L; lora@L = LoRA")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    device, peak = device_name()
    info = model_info(args.model)
    lengths = [int(x) for x in args.lengths.split(",")]
    jobs: list[tuple[int, list[str]]] = [(L, []) for L in lengths]
    flags = {"no-ckpt": ["--no-grad-checkpointing"], "lora": ["--lora"]}
    for v in args.variants.split(","):
        if "@" in v:
            name, at = v.split("@")
            jobs.append((int(at), flags[name]))
    rows = []
    with tempfile.TemporaryDirectory(prefix="ctxext-train-speed-") as work:
        for L, extra in jobs:
            print(f"{args.model} @ {L:,} {' '.join(extra)} …", file=sys.stderr, flush=True)
            r = run_one(args.model, args.scaling, L, args.steps, extra, books_dir(), Path(work))
            if peak and r.get("tokens_per_second"):
                per_token = 6 * info.n_params + 12 * info.n_layers * info.hidden_size * L
                r["mfu"] = r["tokens_per_second"] * per_token / peak
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    slug = "cpu" if device == "cpu" else device.replace(" ", "-").lower()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"train_speed-{slug}.json"
    if out.is_file():  # keep the runs of other lengths / variants measured before
        done = {(r["length"], tuple(r["extra"])) for r in rows}
        rows = [r for r in json.loads(out.read_text())["runs"] if (r["length"], tuple(r["extra"])) not in done] + rows
        rows.sort(key=lambda r: (r["length"], r["extra"]))
    result = {"meta": {"versions": runinfo.versions(), "machine": runinfo.machine(), "device": device,
                       "peak_bf16_flops": peak, "model": args.model, "scaling": args.scaling, "steps": args.steps,
                       "command": " ".join(sys.argv)}, "runs": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{args.model} on {device} ({args.steps} steps, tokens/s over steps 2..):")
    print(f"{'length':>8} {'variant':<26} {'tokens/s':>9} {'peak GiB':>9} {'est. GiB':>9} {'MFU':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['length']:>8} {' '.join(r['extra']):<26} error: {r['error']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "–"
        print(f"{r['length']:>8} {' '.join(r['extra']) or 'grad ckpt, full FT':<26} {r['tokens_per_second']:>9.1f} "
              f"{r['peak_memory_gib']:>9.2f} {r['memory_estimate_gib']:>9.2f} {mfu:>6}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
