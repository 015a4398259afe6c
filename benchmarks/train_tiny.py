"""The training acceptance experiment: the tiny-rope fixture (window 256) extended 4x to 1024 tokens with linear,
yarn and abf (base raised to the planner's critical base for 1024), 200 steps each of `ctxext train` on this CPU.

    OMP_NUM_THREADS=1 python benchmarks/train_tiny.py [--steps 200] [--methods linear,yarn,abf]
    OMP_NUM_THREADS=1 python benchmarks/train_tiny.py --pretrain-mix 0.25 --out benchmarks/results/train_tiny_mix
    OMP_NUM_THREADS=1 python benchmarks/train_tiny.py --pretrain-mix 0.25 --mix-min-len 512 --out benchmarks/results/train_tiny_long
    OMP_NUM_THREADS=1 python benchmarks/train_tiny.py --pretrain-mix 0.25 --mix-min-len 1024 --lr 2e-3 --batch-tokens 16384 \
        --out benchmarks/results/train_tiny_b16k     # the recipe that meets the passkey bar for all three methods
  (the lr / full-length / share variants at 4,096 tokens per step: train_tiny_{mix_lr2e3,full_lr2e3,full50_lr2e3},
  each folder's summary.json holds its arguments)
    OMP_NUM_THREADS=1 python benchmarks/train_tiny.py --seed 1 --out benchmarks/results/train_tiny_seed1
                                                               # a replicate: other data order and keys
    OMP_NUM_THREADS=1 python benchmarks/train_tiny.py --quick   # 100 steps, 16 windows, 4 trials per depth (~6 min):
                                                               # into train_tiny_quick/, the README compares its order
    OMP_NUM_THREADS=1 python benchmarks/train_tiny.py --reference-only [--out DIR]
                                                               # only the same-tokens reference (below), from DIR's
                                                               # committed held-out windows: seconds, no training

The first trains on the three training books only; --pretrain-mix adds passkey documents like the fixture's own
pretraining ones (25 % of its sequences) totalling that share of steps x batch tokens, so the continual pretraining
runs on the pretraining mix at the new length (pretrain_mix.jsonl is regenerated deterministically, not committed;
the books are cycled beside it, so its real share of the data, recorded in summary.json, grows with the batch).

Measured on the held-out book (pg84, never seen by the fixture), cut into --windows documents so that each
perplexity figure covers many windows:
- the fixture's perplexity inside its original window (default RoPE, the first 256 tokens of every window);
- the like-for-like reference: default RoPE (the untrained fixture) on the very tokens the last quarter scores,
  positions 768-1023 of the same 1024-token windows, each seeing at most the trained window of 256 tokens before
  it (a sliding context; reference/same-tokens.json). The in-window figure averages positions with almost no
  context, the last quarter has >= 768 tokens of it, so the two are not the same tokens nor the same context;
- for each method, before training (the untrained extension, step 0) and after: perplexity of positions
  768-1023 of 1024-token windows ("last quarter") and passkey accuracy at 1024 tokens (5 depths x --trials).
Acceptance (as recorded in summary.json): last-quarter ppl within 10 % of the in-window ppl, passkey >= 90 %, and
the untrained extension lower. The last-quarter ppl over the same-tokens reference is reported beside it (README).

Writes benchmarks/results/train_tiny/<method>/ (results.json, summary.md, loss-curve.png, the exported config and
model card; checkpoints and weights are removed) and benchmarks/results/train_tiny/summary.{json,md}. A rerun of
some --methods with otherwise the same arguments keeps the other methods' rows of summary.json (merge_summary).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "train_tiny"
TARGET = 1024
# --quick: the same runs, smaller. 100 steps, not 50: the full run's yarn and abf curves cross after step 50, so a
# 50-step run ordered them as the full run did at step 50, not at its end
QUICK = {"steps": 100, "windows": 16, "trials": 4, "eval_every": 50}


def held_out_windows(path: Path, n: int, chars: int = 6000) -> str:
    """The held-out book as n JSONL documents of `chars` characters (each > 1024 tokens of the fixture's BPE)."""
    from ctxext.data import strip_gutenberg
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    text = strip_gutenberg((books_dir() / HELD_OUT_BOOK).read_text(encoding="utf-8"))
    if n * chars > len(text):
        raise SystemExit(f"the held-out book has {len(text)} characters, fewer than {n} x {chars}")
    path.write_text("".join(json.dumps({"text": text[i * chars:(i + 1) * chars]}) + "\n" for i in range(n)))
    return str(path)


def specs(model: str) -> dict[str, str]:
    from ctxext.models import model_info
    from ctxext.theory import critical_base

    shape = model_info(model).rope_shape
    s = TARGET / shape.original_len
    return {"linear": f"linear:factor={s:g}", "yarn": f"yarn:factor={s:g}",
            "abf": f"abf:base={round(critical_base(shape.base, shape.original_len, TARGET))}"}


def pretrain_mix(path: Path, model: str, share: float, train_tokens: int, seed: int = 0,
                 min_len: int | None = None) -> dict[str, Any]:
    """Passkey documents like the fixture's pretraining ones (ctxext.fixtures.build: filler or book haystack,
    needle at a random depth), min_len (default: the recipe's min_passkey_len) to TARGET tokens long, enough for `share` of `train_tokens`: continual
    pretraining on the pretraining mix at the new length rather than on book text alone. A higher min_len
    upsamples the long documents (retrieval over distances the fixture never saw), as long-context data recipes
    upsample long sources. The books are cycled beside the mix (one permutation of all rows per epoch), so the
    mix's share of what is trained is mix / (mix + book tokens), which grows with steps x batch tokens; the
    returned stats record it."""
    from dataclasses import replace

    import numpy as np

    from ctxext.evals.files import atomic_write
    from ctxext.fixtures import TRAIN_BOOKS, fixture_path
    from ctxext.fixtures import build as B
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(fixture_path(model)))
    texts = [B.read_book(b) for b in TRAIN_BOOKS]
    ids = np.array([t for text in texts for t in tok.encode(text)], dtype=np.int64)
    recipe = B.RECIPES[model]
    sampler = B.SequenceSampler(tok, ids, "\n".join(texts), replace(recipe, seq_len=TARGET, seed=seed))
    lo = recipe.min_passkey_len if min_len is None else min_len
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    while n < share * train_tokens:
        seg = sampler.passkey_segment(int(rng.integers(lo, TARGET + 1)))
        rows.append(json.dumps({"text": tok.decode(seg)}))
        n += len(seg)
    atomic_write(path, "\n".join(rows) + "\n")
    return {"mix_tokens": n, "book_tokens": int(len(ids)), "share_of_data": n / (n + len(ids))}


def in_window_ppl(model: str, eval_file: str, windows: int, work: Path) -> float:
    from ctxext.evals import run_eval
    from ctxext.models import model_info

    L = model_info(model).trained_len
    shutil.rmtree(work / "in-window", ignore_errors=True)  # a rerun into the same --out measures afresh
    res = run_eval(model, ["default"], ["ppl"], [L], samples=windows, data=[eval_file], out=work / "in-window",
                   progress=False, log=lambda m: None)
    return next(r["value"] for r in res["records"] if r["task"] == "ppl" and r["bucket"] is None)


SAME_TOKENS = "same-tokens.json"  # under <out>/reference/


def same_tokens_reference(model: str, eval_file: str, windows: int, work: Path) -> dict[str, Any]:
    """Default RoPE (the untrained fixture) on the tokens the runs' last-quarter ppl scores: positions
    [3/4 TARGET, TARGET) of the first TARGET tokens of the same `windows` held-out documents (the training eval's
    ppl task reads them as documents_at_least(..., TARGET)[:windows], as window_context_ppl does), each token
    seeing at most the fixture's trained window before it. attention_methods.window_context_ppl does the cutting:
    windows of the trained length in steps of a quarter of it, each scoring its last quarter (3/4 to all of the
    window as context). Also the same helper at TARGET = the window: the window's own last quarter, checked
    against the in-window run's last-quarter buckets (work/in-window/results.json) where present: both read the
    same documents the same way, or this stops. Writes work/SAME_TOKENS."""
    import hashlib

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from attention_methods import window_context_ppl
    from ctxext.evals.files import atomic_write
    from ctxext.models import model_info

    torch.set_num_threads(1)  # seconds on one core; leaves the other to whatever else runs
    L, data = model_info(model).trained_len, Path(eval_file)
    t0 = time.perf_counter()
    ref = {"model": model, "scaling": "default", "length": TARGET, "positions": [3 * TARGET // 4, TARGET],
           "context": L, "windows": windows, "ppl": window_context_ppl(model, data, windows, TARGET, L),
           "window_last_quarter_ppl": window_context_ppl(model, data, windows, L, L),
           "data": data.name, "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
           "protocol": f"attention_methods.window_context_ppl: {L}-token windows in steps of {L // 4}, each scoring "
                       f"its last {L // 4} tokens ({3 * L // 4}-{L - 1} tokens of context)",
           "seconds": None, "command": "benchmarks/train_tiny.py " + " ".join(sys.argv[1:])}
    ref["seconds"] = round(time.perf_counter() - t0, 1)
    if (recorded := _in_window_last_quarter(work / "in-window" / "results.json", L)) is not None:
        if abs(recorded / ref["window_last_quarter_ppl"] - 1) > 1e-4:
            raise SystemExit(f"the window's last quarter: {ref['window_last_quarter_ppl']:.4f} here, {recorded:.4f} in "
                             f"{work / 'in-window'}: not the same tokens")
        ref["window_last_quarter_ppl_in_window_run"] = recorded
    atomic_write(work / SAME_TOKENS, json.dumps(ref, indent=1) + "\n")
    return ref


def _in_window_last_quarter(results: Path, window: int) -> float | None:
    """The in-window run's perplexity over positions [3/4 window, window): its buckets there, combined by token
    count (each bucket's width x its documents); None without the file."""
    import math

    if not results.is_file():
        return None
    recs = [r for r in json.loads(results.read_text())["records"] if r["task"] == "ppl" and r["metric"] == "ppl"
            and r["bucket"] is not None and r["bucket"][0] >= 3 * window // 4]
    w = [(r["bucket"][1] - r["bucket"][0]) * r["n"] for r in recs]
    return math.exp(sum(n * math.log(r["value"]) for n, r in zip(w, recs)) / sum(w)) if recs else None


def reference_only(args: argparse.Namespace) -> None:
    """--reference-only: the same-tokens reference from a finished run's folder (its held-out windows, as many as
    its summary.json records), written into its reference/; nothing is trained and nothing else is rewritten."""
    out = Path(args.out)
    eval_file = out / "held_out_windows.jsonl"
    if not eval_file.is_file():
        raise SystemExit(f"{eval_file}: missing; --reference-only reads a finished run's held-out windows")
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    windows = summary.get("meta", {}).get("args", {}).get("windows", args.windows)
    n = sum(1 for line in eval_file.read_text().splitlines() if line.strip())
    if n != windows:
        raise SystemExit(f"{eval_file}: {n} documents, the run records {windows} held-out windows")
    ref = same_tokens_reference(args.model, str(eval_file), windows, out / "reference")
    print(json.dumps(ref, indent=1))
    for name, r in summary.get("runs", {}).items():
        a = r["after"]["ppl_last_quarter"]
        print(f"{name}: last quarter {a:.4f} / in-window {r['in_window_ppl']:.4f} = {a / r['in_window_ppl']:.4f}; "
              f"/ same tokens, {ref['context']}-token context {ref['ppl']:.4f} = {a / ref['ppl']:.4f}")


def merge_summary(old: dict | None, meta: dict, rows: dict[str, dict]) -> dict:
    """summary.json after this run: its rows, plus the old summary's rows of the methods it did not rerun when the
    old run had the same arguments apart from --methods (their run folders are still there; another recipe's rows
    are dropped). The kept rows' machine and versions are recorded under meta.kept_runs."""
    same = lambda a: {k: v for k, v in a.items() if k != "methods"}  # noqa: E731
    if not old or same(old["meta"]["args"]) != same(meta["args"]):
        return {"meta": meta, "runs": rows}
    kept = {k: v for k, v in old["runs"].items() if k not in rows}
    merged = {**kept, **rows}
    order = [k for k in old["runs"] if k in merged] + [k for k in rows if k not in old["runs"]]  # the old row order
    runs = {k: merged[k] for k in order}
    meta = {**meta, "args": {**meta["args"], "methods": ",".join(runs)}}
    if kept:
        earlier = old["meta"].get("kept_runs") or {}
        meta["kept_runs"] = {"methods": list(kept), "machine": earlier.get("machine", old["meta"].get("machine")),
                             "versions": earlier.get("versions", old["meta"].get("versions"))}
    return {"meta": meta, "runs": runs}


def main(argv: list[str] | None = None) -> None:
    from ctxext.evals.files import atomic_write
    from ctxext.fixtures import TRAIN_BOOKS, books_dir
    from ctxext.train import TrainConfig, train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-rope")
    p.add_argument("--methods", default="linear,yarn,abf")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-tokens", type=int, default=4 * TARGET)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--windows", type=int, default=32, help="held-out windows for perplexity")
    p.add_argument("--trials", type=int, default=10, help="passkey trials per depth (5 depths)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--extra-data", action="append", default=[], help="more training data (e.g. a passkey mix)")
    p.add_argument("--pretrain-mix", type=float, default=0.0,
                   help="add passkey documents like the fixture's pretraining ones totalling this share of steps x "
                        "batch tokens (0.25 = the fixture's own passkey share at the default batch; the books are "
                        "cycled beside them, so the share of the data is recorded in summary.json)")
    p.add_argument("--mix-min-len", type=int, default=None,
                   help="shortest passkey document of --pretrain-mix in tokens (default: as in the fixture's "
                        "pretraining, 48; 512 keeps only documents past twice the original window)")
    p.add_argument("--seed", type=int, default=0,
                   help="data order and passkey keys (`ctxext train --seed`): another seed replicates the run, "
                        "so the report can tell an ordering from noise")
    p.add_argument("--out", default=None, help=f"default {OUT.relative_to(ROOT)} ({OUT.name}_quick with --quick)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK['steps']} steps, {QUICK['windows']} held-out "
                   f"windows, {QUICK['trials']} passkey trials per depth: minutes, into {OUT.name}_quick/")
    p.add_argument("--reference-only", action="store_true",
                   help=f"only default RoPE on the same last-quarter tokens with the trained window as context, from "
                        f"--out's committed held-out windows, into --out/reference/{SAME_TOKENS} (no training)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.quick:  # an option given on the command line is kept
        from ctxext.runinfo import override_defaults

        override_defaults(p, args, QUICK, argv)
    args.out = args.out or str(OUT.with_name(OUT.name + "_quick") if args.quick else OUT)
    if args.mix_min_len is not None and not 1 <= args.mix_min_len <= TARGET:
        raise SystemExit(f"--mix-min-len must be within [1, {TARGET}]")
    if args.reference_only:
        return reference_only(args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mix = None
    if args.pretrain_mix:
        mix_path = out / "pretrain_mix.jsonl"
        mix = pretrain_mix(mix_path, args.model, args.pretrain_mix, args.steps * args.batch_tokens,
                           min_len=args.mix_min_len)
        args.extra_data.append(str(mix_path))
    eval_file = held_out_windows(out / "held_out_windows.jsonl", args.windows)
    ref = in_window_ppl(args.model, eval_file, args.windows, out / "reference")
    print(f"{args.model}: perplexity inside its window: {ref:.3f}", file=sys.stderr)
    same = same_tokens_reference(args.model, eval_file, args.windows, out / "reference")
    print(f"{args.model}: perplexity on the last quarter's tokens, {same['context']}-token context: {same['ppl']:.3f}",
          file=sys.stderr)
    rows = {}
    for name in args.methods.split(","):
        spec = specs(args.model)[name]
        run = out / name
        shutil.rmtree(run, ignore_errors=True)
        cfg = TrainConfig(model=args.model, scaling=spec, data=tuple(str(books_dir() / b) for b in TRAIN_BOOKS)
                          + tuple(args.extra_data), seq_len=TARGET, steps=args.steps, lr=args.lr,
                          batch_tokens=args.batch_tokens, warmup=args.warmup, grad_checkpointing=False,
                          eval_every=args.eval_every, eval_data=(eval_file,), eval_docs=args.windows,
                          passkey_trials=args.trials, seed=args.seed, out=str(run),
                          command_line="benchmarks/train_tiny.py " + " ".join(argv))
        t0 = time.perf_counter()
        summary = train(cfg)
        wall = time.perf_counter() - t0
        res = json.loads((run / "results.json").read_text())
        evs = res["training"]["evaluations"]
        before, after = evs[0], evs[-1]
        rows[name] = {
            "spec": spec, "steps": args.steps, "tokens": summary["tokens"], "train_seconds": summary["train_seconds"],
            "wall_seconds": round(wall, 1), "tokens_per_second": summary["tokens_per_second"],
            "final_loss": summary["final_loss"], "in_window_ppl": ref,
            "before": {k: before.get(k) for k in ("ppl", "ppl_last_quarter", "passkey")},
            "after": {k: after.get(k) for k in ("ppl", "ppl_last_quarter", "passkey")},
            "curve": [{"step": e["step"], **{k: e.get(k) for k in ("ppl_last_quarter", "passkey")}} for e in evs],
            "export_verification": summary.get("export_verification"),
        }
        r = rows[name]
        r["last_quarter_vs_in_window"] = r["after"]["ppl_last_quarter"] / ref
        r["acceptance"] = {"ppl_within_10pct": r["last_quarter_vs_in_window"] <= 1.10,
                           "passkey_ge_90pct": r["after"]["passkey"] >= 0.90,
                           "untrained_passkey_lower": r["before"]["passkey"] < r["after"]["passkey"]}
        print(f"{name}: {json.dumps(r)}", file=sys.stderr)
        shutil.rmtree(run / "checkpoint", ignore_errors=True)  # weights are not results
        (run / "final" / "model.safetensors").unlink(missing_ok=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (run / "final" / f).unlink(missing_ok=True)
    from ctxext import runinfo

    meta = {"versions": runinfo.versions(), "machine": runinfo.machine(), "omp_num_threads":
            os.environ.get("OMP_NUM_THREADS"), "model": args.model, "target": TARGET, "args": vars(args),
            "held_out": "pg84.txt cut into {} documents of 6000 characters".format(args.windows),
            "pretrain_mix": mix}
    old = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None
    merged = merge_summary(old, meta, rows)
    rows = merged["runs"]  # the table below lists the kept methods too
    atomic_write(out / "summary.json", json.dumps(merged, indent=1) + "\n")
    lines = [f"# {args.model}: 256 -> {TARGET} tokens, {args.steps} steps of `ctxext train` per method", "",
             f"In-window perplexity (default RoPE, first 256 tokens of {args.windows} held-out windows): "
             f"**{ref:.2f}**; on the last quarter's own tokens (positions {same['positions'][0]}-"
             f"{same['positions'][1] - 1}) with at most {same['context']} tokens of context: **{same['ppl']:.2f}**", "",
             "| method | spec | ppl last quarter @1024, before -> after | / in-window | / same tokens | passkey "
             "@1024, before -> after | train s | tok/s |", "|---|---|---|---:|---:|---|---:|---:|"]
    for name, r in rows.items():
        b, a = r["before"], r["after"]
        lines.append(f"| {name} | `{r['spec']}` | {b['ppl_last_quarter']:.2f} -> {a['ppl_last_quarter']:.2f} | "
                     f"{r['last_quarter_vs_in_window']:.3f} | {a['ppl_last_quarter'] / same['ppl']:.3f} | "
                     f"{b['passkey']:.0%} -> {a['passkey']:.0%} | "
                     f"{r['train_seconds']:.0f} | {r['tokens_per_second']:.0f} |")
    atomic_write(out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
