"""Issue 8 end to end on this CPU at a reduced length: synth-qa on SmolLM2-135M-Instruct over the books, a seeded
train / held-out split of the kept examples, longqa EM/F1 on the held-out ones before, instruction tuning with a
2x scaling spec (`ctxext train --instruct`), longqa after.

    OMP_NUM_THREADS=1 python benchmarks/instruct_qa.py [--work /tmp/h8] [--max-len 2048] [--steps N]

Every stage is a ctxext command run in-process with one torch thread, resumable (synth-qa --resume, eval --resume,
train --resume); rerunning the script continues where it stopped. Work files (examples with their contexts,
checkpoints, weights) stay in --work; benchmarks/results/synth_qa/instruct/ gets the summaries and a README.md.
The split files, the evaluations and the training run live in --work/split-<hash>/, the hash of the held-out and
training examples (their text) and --max-len; the training run in train-<steps>steps-lr<lr>/ under it and the
evaluation of its model in after-<steps>steps-lr<lr>/. A rerun with
the same examples resumes there; one whose split changed (more examples kept, another --examples cut) starts in a
new folder instead of reusing a model trained, or answers scored, on another split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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


def split_rows(rows: list[dict], heldout: float) -> tuple[list[int], list[int]]:
    """(held-out, train) indices of rows: a seeded permutation, at least 3 held out."""
    n_held = max(3, round(heldout * len(rows)))
    perm = np.random.default_rng(0).permutation(len(rows))
    return sorted(perm[:n_held].tolist()), sorted(perm[n_held:].tolist())


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def split_key(held_text: str, train_text: str, max_len: int) -> str:
    """A short hash of the held-out and training files' text and the length they are evaluated and trained at:
    the name of the folder whose evaluations and training belong to exactly this split."""
    h = hashlib.sha256()
    for part in (held_text, "\0", train_text, "\0", str(max_len)):
        h.update(part.encode("utf-8"))
    return h.hexdigest()[:12]


def train_dir_name(steps: int, lr: float) -> str:
    return f"train-{steps}steps-lr{lr:g}"


def main() -> None:
    import torch

    from ctxext.evals.files import atomic_write

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
    held, train = split_rows(rows, a.heldout)
    held_text, train_text = jsonl([rows[i] for i in held]), jsonl([rows[i] for i in train])
    key = split_key(held_text, train_text, a.max_len)
    split = work / f"split-{key}"  # evaluations and training of this split only: a changed split never resumes them
    others = sorted(d.name for d in work.glob("split-*") if d.is_dir() and d != split)
    print(f"split {key}: {len(held)} held out, {len(train)} to train on; work in {split}"
          + (f" (other splits here, not reused: {', '.join(others)})" if others else ""), flush=True)
    atomic_write(split / "heldout.jsonl", held_text)
    atomic_write(split / "train.jsonl", train_text)
    ev = ["--task", "longqa", "--data", str(split / "heldout.jsonl"), "--lengths", str(a.max_len),
          "--samples", "1000", "--resume", "--no-progress"]
    secs["eval_before"] = ctxext(["eval", "--model", MODEL, "--scaling", SPEC, *ev, "--out", str(split / "before")])
    steps = a.epochs * len(train)
    tr = split / train_dir_name(steps, a.lr)
    after = split / tr.name.replace("train-", "after-", 1)
    if not (tr / "final" / "config.json").is_file():
        secs["train"] = ctxext(["train", "--model", MODEL, "--scaling", SPEC, "--instruct", str(split / "train.jsonl"),
                                "--seq-len", str(a.max_len), "--steps", str(steps), "--lora", "--lr", str(a.lr),
                                "--warmup", "1", "--no-eval", "--save-every", "2", "--resume", "--no-progress",
                                "--out", str(tr)], ok=(0, 1))  # 1: the export check's tolerance (reported below)
    secs["eval_after"] = ctxext(["eval", "--model", str(tr / "final"), "--scaling", "default", *ev,
                                 "--out", str(after)])
    tres = json.loads((tr / "results.json").read_text())
    result = {
        "model": MODEL, "spec": SPEC, "max_len": a.max_len, "books": BOOKS, "examples": a.examples,
        "synth": {k: synth[k] for k in ("settings", "chunks", "processed", "kept", "rejected", "rejected_total",
                                        "rejected_tries", "tries_total", "front_tokens_skipped")},
        "split": {"key": key, "train": [rows[i]["id"] for i in train], "heldout": [rows[i]["id"] for i in held]},
        "train": {"steps": steps, "epochs": a.epochs, "lr": a.lr, "lora": True,
                  "rows": tres["meta"]["rows"], "history": [h["loss"] for h in tres["training"]["history"]],
                  "train_seconds": tres["training"]["summary"]["train_seconds"],
                  "peak_memory_gib": tres["training"]["summary"]["peak_memory_gib"],
                  "export_verification": tres["training"]["summary"].get("export_verification")},
        "longqa_heldout_before": longqa(split / "before"), "longqa_heldout_after": longqa(after),
        "seconds_this_run": secs, "torch_threads": torch.get_num_threads(),
    }
    atomic_write(out / "results.json", json.dumps(result, indent=1) + "\n")
    for name, d in (("before", split / "before"), ("after", after)):
        for f in d.glob("**/*.jsonl"):
            atomic_write(out / f"answers_{name}.jsonl", f.read_bytes())
    print(json.dumps({k: result[k] for k in ("longqa_heldout_before", "longqa_heldout_after")}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
