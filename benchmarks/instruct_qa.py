"""Issue 8 end to end on this CPU at a reduced length: synth-qa on SmolLM2-135M-Instruct over the books, a seeded
train / held-out split of the kept examples, longqa EM/F1 on the held-out ones before, instruction tuning with a
2x scaling spec (`ctxext train --instruct`), longqa after.

    OMP_NUM_THREADS=1 python benchmarks/instruct_qa.py [--work /tmp/h8] [--max-len 2048] [--steps N]

Every stage is a ctxext command run in-process with one torch thread, resumable (synth-qa --resume, eval --resume,
train --resume); rerunning the script continues where it stopped. Work files (examples with their contexts,
checkpoints, weights) stay in --work; benchmarks/results/synth_qa/instruct/ gets the summaries and a README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "synth_qa" / "instruct"
BOOKS = "/work/shared/data/books"
MODEL, SPEC = "smollm2-135m", "yarn:factor=2"


def ctxext(args: list[str], ok: tuple[int, ...] = (0,)) -> float:
    """Run one ctxext command in-process; -> seconds. Fails loudly on another exit status."""
    from ctxext.cli import main

    print("+ ctxext " + " ".join(args), flush=True)
    t = time.perf_counter()
    rc = main(args)
    if rc not in ok:
        sys.exit(f"ctxext {args[0]} failed with {rc}")
    return round(time.perf_counter() - t, 1)


def longqa(path: Path) -> dict[str, float]:
    recs = json.loads((path / "results.json").read_text())["records"]
    return {r["metric"]: r["value"] for r in recs if r.get("task") == "longqa"}


def crop_start(n: int, s: int, e: int, width: int, u: float) -> int:
    """Start of a `width`-token window of an n-token context that holds the chunk [s, e), the chunk at relative
    place u in [0, 1] of the free room (clamped to the context)."""
    if e - s > width:
        raise ValueError(f"chunk of {e - s} tokens does not fit in {width}")
    start = s - int(round(u * (width - (e - s))))
    return max(0, min(max(0, n - width), start))


def cut_examples(src: Path, dst: Path, width: int) -> None:
    """Each example of a synth-qa file with its context cut to `width` SmolLM2 tokens around its chunk (seeded
    place of the chunk); the question and answers are unchanged."""
    from ctxext.models.load import load_tokenizer
    from ctxext.models.names import resolve_model_path

    tok = load_tokenizer(resolve_model_path(MODEL))
    rng = np.random.default_rng(0)
    rows = []
    for line in src.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        ids = tok(r["context"]).input_ids
        s, e = r["chunk_tokens"]
        start = crop_start(len(ids), s, e, width, float(rng.random()))
        cut = tok.decode(ids[start:start + width])
        if r["chunk"][:40] not in " ".join(cut.split()):  # chunks are stored whitespace-normalised
            raise SystemExit(f"{r['id']}: the chunk is not in its cut context")
        rows.append({**r, "context": cut, "chunk_tokens": [s - start, e - start],
                     "context_start": r["context_start"] + start, "cut_from_tokens": len(ids)})
    dst.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/h8")
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--chunk-tokens", type=int, default=48)
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--heldout", type=float, default=0.3, help="share of kept examples held out (at least 3)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--no-synth", action="store_true", help="use the kept examples written so far (synth stopped)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--examples", default=None,
                    help="use this synth-qa output (e.g. a 16k run) instead of running synth-qa: each example's "
                         "context is cut to the --max-len - 128 tokens around its chunk")
    ap.add_argument("--results", default=str(OUT), help="folder for the summaries (default: %(default)s)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.results)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"books_{a.max_len // 1024}k"
    qa = work / f"{tag}.jsonl"
    secs: dict[str, float] = {}
    summary_file = work / f"{tag}.summary.json"
    if a.examples:
        src = Path(a.examples)
        qa = work / f"{src.stem}_cut{a.max_len // 1024}k.jsonl"
        summary_file = src.with_name(src.stem + ".summary.json")
        cut_examples(src, qa, a.max_len - 128)
    elif not a.no_synth and not (summary_file.is_file() and json.loads(summary_file.read_text()).get("finished")):
        secs["synth"] = ctxext(["synth-qa", "--model", MODEL, "--data", BOOKS, "--out", str(qa), "--per-doc", "60",
                                "--max-len", str(a.max_len), "--chunk-tokens", str(a.chunk_tokens),
                                "--tries", str(a.tries), "--resume", "--no-progress"])
    synth = json.loads(summary_file.read_text())
    rows = [json.loads(x) for x in qa.read_text().splitlines() if x.strip()]
    n_held = max(3, round(a.heldout * len(rows)))
    perm = np.random.default_rng(0).permutation(len(rows))
    held, train = sorted(perm[:n_held].tolist()), sorted(perm[n_held:].tolist())
    (work / "heldout.jsonl").write_text("".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in held))
    (work / "train.jsonl").write_text("".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in train))
    ev = ["--task", "longqa", "--data", str(work / "heldout.jsonl"), "--lengths", str(a.max_len),
          "--samples", "1000", "--resume", "--no-progress"]
    secs["eval_before"] = ctxext(["eval", "--model", MODEL, "--scaling", SPEC, *ev, "--out", str(work / "before")])
    steps = a.epochs * len(train)
    tr = work / "train"
    if not (tr / "final" / "config.json").is_file():
        secs["train"] = ctxext(["train", "--model", MODEL, "--scaling", SPEC, "--instruct", str(work / "train.jsonl"),
                                "--seq-len", str(a.max_len), "--steps", str(steps), "--lora", "--lr", str(a.lr),
                                "--warmup", "1", "--no-eval", "--save-every", "2", "--resume", "--no-progress",
                                "--out", str(tr)], ok=(0, 1))  # 1: the export check's tolerance (reported below)
    secs["eval_after"] = ctxext(["eval", "--model", str(tr / "final"), "--scaling", "default", *ev,
                                 "--out", str(work / "after")])
    tres = json.loads((tr / "results.json").read_text())
    result = {
        "model": MODEL, "spec": SPEC, "max_len": a.max_len, "books": BOOKS, "examples": a.examples,
        "synth": {k: synth[k] for k in ("settings", "chunks", "processed", "kept", "rejected", "rejected_total",
                                        "rejected_tries", "tries_total", "front_tokens_skipped")},
        "split": {"train": [rows[i]["id"] for i in train], "heldout": [rows[i]["id"] for i in held]},
        "train": {"steps": steps, "epochs": a.epochs, "lr": a.lr, "lora": True,
                  "rows": tres["meta"]["rows"], "history": [h["loss"] for h in tres["training"]["history"]],
                  "train_seconds": tres["training"]["summary"]["train_seconds"],
                  "peak_memory_gib": tres["training"]["summary"]["peak_memory_gib"],
                  "export_verification": tres["training"]["summary"].get("export_verification")},
        "longqa_heldout_before": longqa(work / "before"), "longqa_heldout_after": longqa(work / "after"),
        "seconds_this_run": secs, "torch_threads": torch.get_num_threads(),
    }
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    for name in ("before", "after"):
        for f in (work / name).glob("**/*.jsonl"):
            shutil.copy(f, out / f"answers_{name}.jsonl")
    print(json.dumps({k: result[k] for k in ("longqa_heldout_before", "longqa_heldout_after")}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
