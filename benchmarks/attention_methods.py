"""Training-free attention methods and the ALiBi family, measured on ctxext's eval harness (issue 6 acceptance).

    python benchmarks/attention_methods.py passkey  [--trials 2] [--length 16384] [--resume]
    python benchmarks/attention_methods.py window
    python benchmarks/attention_methods.py stream   [--length 65536] [--short 32768]
    python benchmarks/attention_methods.py alibi    [--factor 4] [--sweep 1.5,2,3]
    python benchmarks/attention_methods.py {passkey,stream,alibi} --quick     # minutes each; own results file

- passkey: SmolLM2-135M, self-extend (the group/window settings of SELF_EXTEND_SWEEP) vs default RoPE, passkey at `--length` tokens,
  depths 0.1 … 0.9, `--trials` per depth (teacher-forced verdicts, shared-prefix reuse), and the model as trained at
  its own 8 192 window on the same protocol as the reference — acceptance: self-extend >= 90 % where default fails.
- window: SmolLM2 logits with self-extend on a sequence shorter than W vs the model as loaded (max |diff|).
- stream: SmolLM2 streaming perplexity (stream-ppl task, book text) at two stream lengths, each in its own
  process so peak RSS is that run's alone; default RoPE over the same text beside it (capped by the task at
  4 × the trained length: its cache and cost grow with the stream).
- alibi: the tiny-alibi fixture at 4 × its window: default vs alibi-interp vs ntk-alibi, perplexity by position
  (last quarter) and passkey; ntk-alibi also at the factors of --sweep, which trace its trade-off (flatter slopes
  find the passkey more often and cost perplexity, in the window and beyond). `--factor` other than 4 measures
  the same at that many times the window, into attention_methods_alibi_x<factor>.json.

Each part writes benchmarks/results/attention_methods_<part>.json (eval folders go under runs/attention_methods/).
--quick runs a smaller version beside it, into attention_methods_<part>_quick.json, and the README says whether it
orders the methods as the full run does: passkey, the best self-extend setting and default at the same length, one
trial at depths 0.1 / 0.5 / 0.9 (~10 min); stream, 16k and 8k streams in 2k segments (~5 min); alibi, 4 book parts
and 4 trials per depth, no sweep (under a minute).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNS = ROOT / "runs" / "attention_methods"
SMOL = "smollm2-135m"
SELF_EXTEND = "self-extend:group=4,window=2048"  # reach (8192 − 2048)·4 + 2048 = 26 624 tokens
STREAMING = "streaming:sinks=4,window=2044"  # 2 048 cache slots
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
TRAINED = 8192  # SmolLM2's trained length
STREAM_BOOK = "pg2701.txt"  # Moby Dick: the longest of the shared books, streamed from its first chapter
STREAM_START = "CHAPTER 1. Loomings.\n\nCall me Ishmael."  # skips the contents, etymology and extracts


def stream_text() -> Path:
    """Moby Dick from chapter 1 to the end of the story (homogeneous prose: segment perplexities compare text
    of one kind, not a table of contents against narrative)."""
    from ctxext.data import strip_gutenberg
    from ctxext.fixtures import books_dir

    text = strip_gutenberg((books_dir() / STREAM_BOOK).read_text(encoding="utf-8")).replace("\r\n", "\n")
    path = RUNS / "moby_dick_from_chapter_1.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text[text.index(STREAM_START):], encoding="utf-8")
    return path


QUICK_DEPTHS = (0.1, 0.5, 0.9)


def write(part: str, report: dict, quick: bool = False) -> Path:
    from ctxext.runinfo import machine, versions

    from ctxext.evals.files import atomic_write

    part += "_quick" if quick else ""
    report = {"part": part, "versions": versions(), "machine": machine(), "quick": quick, **report}
    out = HERE / "results" / f"attention_methods_{part}.json"
    atomic_write(out, json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return out


def by(records: list[dict], **kw) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in kw.items())]


# ------------------------------------------------------------------------------------------------ passkey


# W + (L - W) / G must stay within the trained 8 192 at L = 16 384. The misses of the first three were all deep needles
# (0.7, 0.9) answered by repeating the prompt; the model itself misses the same way once at 8 192 (reference). A
# larger W (more of the context at its own positions) did not help: group 4, window 5120 missed 0.5 as well (4/10);
# nor did finer groups with a wide window: group 3, window 3584 (reach 17 408) missed 0.9 twice and 0.7 once (7/10).
# Coarser groups fix the near needles (0.9, inside W) and can lose the far one (0.1): group 6 missed 0.1 twice (8/10);
# one-trial probes at 0.1 / 0.9: group 5 and 6/window 3072 missed 0.9, group 7 missed 0.1, group 8 found both.
SELF_EXTEND_BEST = "self-extend:group=8,window=4096"  # the sweep's best: 9/10, then 10/10 on fresh keys
SELF_EXTEND_SWEEP = (SELF_EXTEND, "self-extend:group=3,window=2048", "self-extend:group=4,window=4096",
                     "self-extend:group=4,window=5120", "self-extend:group=3,window=3584",
                     "self-extend:group=6,window=4096", SELF_EXTEND_BEST)


def passkey_score(records: list[dict], spec: str, length: int) -> dict:
    """Accuracy by depth and overall of one spec's passkey cells at one length."""
    recs = sorted(by(records, task="passkey", metric="accuracy", length=length, scaling=spec),
                  key=lambda r: r["depth"])  # resumed runs append cells out of order
    n = sum(r["n"] for r in recs)
    right = sum(r["value"] * r["n"] for r in recs)
    return {"accuracy_by_depth": {str(r["depth"]): r["value"] for r in recs}, "trials": n, "correct": round(right),
            "accuracy": right / n if n else None}


def passkey(args: argparse.Namespace) -> None:
    """Each spec at --length in its own run folder (so one can be added or rerun alone), plus the reference: the model
    as trained, inside its own window (8 192), on the same protocol — what a position method can at best keep."""
    from ctxext.evals import run_eval
    from ctxext.evals.files import slug

    if args.quick:  # the committed best self-extend setting against default, one trial at three depths
        specs, depths, args.trials = [SELF_EXTEND_BEST, "default"], list(QUICK_DEPTHS), 1
    else:
        specs, depths = list(args.specs or (*SELF_EXTEND_SWEEP, "default")), list(DEPTHS)
    t = time.perf_counter()
    cmd = f"python benchmarks/attention_methods.py passkey --trials {args.trials} --length {args.length}" + \
        (" --quick" if args.quick else "")
    runs = [(s, args.length) for s in specs] + ([] if args.quick else [("default", TRAINED)])
    report = {"model": SMOL, "length": args.length, "depths": depths, "trials_per_depth": args.trials,
              "specs": {}, "reference_in_window": None}
    for s, length in runs:
        out = RUNS / f"passkey{length}{'_quick' if args.quick else ''}" / slug(s)
        res = run_eval(SMOL, [s], ["passkey"], [length], depths=depths, samples=args.trials, out=out,
                       resume=args.resume, command=cmd)
        answers = out / "answers" / f"passkey-{slug(s)}-{length}.jsonl"
        row = {"length": length, **passkey_score(res["records"], s, length),
               "answers": [json.loads(x) for x in answers.read_text().splitlines()] if answers.is_file() else None}
        if length == args.length:
            report["specs"][s] = row
        else:
            report["reference_in_window"] = {"spec": s, **row}
    report["seconds_this_run"] = round(time.perf_counter() - t, 1)
    if args.quick:
        write("passkey", report, quick=True)
        return
    if args.add:  # keep the specs of the committed file that this run did not rerun (same length and trials)
        old = json.loads((HERE / "results" / "attention_methods_passkey.json").read_text())
        if (old["length"], old["trials_per_depth"]) != (args.length, args.trials):
            raise SystemExit(f"--add: the committed file is at {old['length']} tokens, {old['trials_per_depth']} "
                             "trials per depth; run with the same --length and --trials")
        merged = {**{k: v for k, v in old["specs"].items() if k not in report["specs"]}, **report["specs"]}
        report["specs"] = dict(sorted(merged.items(), key=lambda kv: kv[0] == "default"))  # default last
        report["runs_merged"] = old.get("runs_merged", 1) + 1
        from ctxext.runinfo import machine, merged_machines

        report["machines"] = merged_machines(old, machine())  # the kept specs ran on the earlier ones
    se = {s: r for s, r in report["specs"].items() if s.startswith("self-extend")}
    best = max(se, key=lambda s: se[s]["accuracy"] or 0)
    report["best_self_extend"] = best
    if args.confirm_seed is not None:  # the best was picked on these trials: score it again on fresh ones
        out = RUNS / f"passkey{args.length}" / f"{slug(best)}-seed{args.confirm_seed}"
        res = run_eval(SMOL, [best], ["passkey"], [args.length], depths=list(DEPTHS), samples=args.trials, out=out,
                       resume=args.resume, seed=args.confirm_seed, command=cmd + f" --confirm-seed {args.confirm_seed}")
        report["confirmation"] = {"spec": best, "seed": args.confirm_seed,
                                  **passkey_score(res["records"], best, args.length)}
    report["checks"] = {"self_extend_ge_90pct": (se[best]["accuracy"] or 0) >= 0.9,
                        "trials_ge_10": se[best]["trials"] >= 10,
                        "default_fails": (report["specs"]["default"]["accuracy"] or 0) < 0.5}
    if "confirmation" in report:
        report["checks"]["best_ge_90pct_on_fresh_trials"] = (report["confirmation"]["accuracy"] or 0) >= 0.9
    write("passkey", report)


# ------------------------------------------------------------------------------------------------- window


def window(args: argparse.Namespace) -> None:
    import torch

    from ctxext.data import load_documents
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir
    from ctxext.models import apply_spec, load_model
    from ctxext.scaling import parse_spec

    lm = load_model(SMOL)
    doc = load_documents([books_dir() / HELD_OUT_BOOK], lm.tokenizer)[0]
    ids = torch.as_tensor(doc.tokens[:args.tokens].astype("int64"))[None]
    with torch.inference_mode():
        before = lm.model(ids).logits
        apply_spec(lm, parse_spec(SELF_EXTEND))
        after = lm.model(ids).logits
    diff = float((after - before).abs().max())
    write("window", {"model": SMOL, "spec": SELF_EXTEND, "tokens": int(ids.shape[1]), "max_abs_logit_diff": diff,
                     "identical": diff == 0.0})


# ------------------------------------------------------------------------------------------------- stream


def stream_child(args: argparse.Namespace) -> None:
    """One stream-ppl run in this process; writes its records, peak RSS and time to <run folder>/child.json."""
    import torch

    from ctxext.evals import run_eval

    torch.set_num_threads(int(os.environ.get("CTXEXT_THREADS", torch.get_num_threads())))
    out = RUNS / f"stream-{args.spec.split(':')[0]}-{args.length}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: its peak RSS is what is measured
    t = time.perf_counter()
    res = run_eval(SMOL, [args.spec], ["stream-ppl"], [args.length], data=[stream_text()], out=out, bucket=args.bucket,
                   command=f"python benchmarks/attention_methods.py stream ({args.spec}, "
                                           f"{args.length} tokens)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    summary = {"records": res["records"], "peak_rss_bytes": rss, "seconds": time.perf_counter() - t}
    from ctxext.evals.files import atomic_write

    atomic_write(out / "child.json", json.dumps(summary) + "\n")  # its presence means done (_child reuses it)


def _child(spec: str, length: int, bucket: int, reuse: bool) -> dict:
    done = RUNS / f"stream-{spec.split(':')[0]}-{length}" / "child.json"
    if reuse and done.is_file():
        print(f"reusing {done}", flush=True)
    else:
        cmd = [sys.executable, __file__, "_stream_child", "--spec", spec, "--length", str(length),
               "--bucket", str(bucket)]
        print("running:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads(done.read_text())


def stream(args: argparse.Namespace) -> None:
    if args.quick:
        args.length, args.short, args.bucket = 16384, 8192, 2048
    runs = {}
    for spec, length in ((STREAMING, args.short), (STREAMING, args.length), ("default", args.length)):
        r = _child(spec, length, args.bucket, args.reuse)
        recs = r["records"]
        seg = sorted(by(recs, metric="ppl"), key=lambda x: (x["bucket"] or [1e18])[0])
        in_win = by(recs, metric="ppl_in_window")[0]["value"]
        segs = {f"{x['bucket'][0]}-{x['bucket'][1]}": x["value"] for x in seg if x["bucket"]}
        runs[f"{spec} @ {length}"] = {
            "spec": spec, "length": length, "tokens_scored": by(recs, metric="tokens")[0]["value"],
            "ppl_overall": next(x["value"] for x in seg if not x["bucket"]), "ppl_in_window": in_win,
            "ppl_by_segment": segs, "max_segment_over_in_window": max(segs.values()) / in_win,
            "max_cache_tokens": by(recs, metric="max_cache_tokens")[0]["value"],
            "peak_rss_mb": round(r["peak_rss_bytes"] / 2**20, 1), "seconds": round(r["seconds"], 1)}
    short, long = runs[f"{STREAMING} @ {args.short}"], runs[f"{STREAMING} @ {args.length}"]
    full = runs[f"default @ {args.length}"]
    # the same segments under full attention while default RoPE is still inside its trained length
    inside = {k: v for k, v in full["ppl_by_segment"].items() if int(k.split("-")[1]) <= TRAINED}
    long["over_default_same_segment_inside_8k"] = {k: long["ppl_by_segment"][k] / v for k, v in inside.items()}
    default_in_window = full["ppl_in_window"]  # default RoPE over its first 8 192 tokens of this text
    long["max_segment_over_default_in_window"] = max(long["ppl_by_segment"].values()) / default_in_window
    report = {"model": SMOL, "book": STREAM_BOOK + " from chapter 1", "segment_tokens": args.bucket, "runs": runs,
              "checks": {
                  "streaming_segments_within_1.3x_own_in_window": long["max_segment_over_in_window"] <= 1.3,
                  "streaming_segments_within_1.3x_default_in_window": long["max_segment_over_default_in_window"] <= 1.3,
                  "streaming_peak_rss_flat_within_5pct": long["peak_rss_mb"] <= 1.05 * short["peak_rss_mb"],
                  "streamed_tokens_ge_64k": long["tokens_scored"] >= 65536}}
    write("stream", report, args.quick)


# -------------------------------------------------------------------------------------------------- alibi


def book_parts(book: Path, n: int) -> Path:
    """The book (held out from the fixtures' training) as `n` documents of equal size cut at paragraph breaks, so
    the ppl task averages n windows instead of reading only the book's opening."""
    from ctxext.data import strip_gutenberg

    text = strip_gutenberg(book.read_text(encoding="utf-8")).replace("\r\n", "\n")
    cuts, size = [0], len(text) // n
    for k in range(1, n):
        cuts.append(text.index("\n\n", k * size) + 2)
    cuts.append(len(text))
    path = RUNS / f"{book.stem}_{n}_parts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": text[a:b]}) + "\n" for a, b in zip(cuts[:-1], cuts[1:])))
    return path


def window_context_ppl(model: str, data: Path, samples: int, length: int, window: int) -> float:
    """Perplexity of the last quarter of each document's first `length` tokens when every token sees only the
    trained window before it (windows of `window` tokens in steps of window/4, each scoring its last quarter:
    3/4 to all of the window as context). The bar for a scaling method: what reading past the window adds
    over not reading it."""
    import numpy as np

    from ctxext.data import documents_at_least, load_documents
    from ctxext.evals import token_nll
    from ctxext.models import load_model

    lm = load_model(model)
    docs = documents_at_least(load_documents([data], lm.tokenizer), length)[0][:samples]
    step, total = window // 4, []
    for d in docs:
        for e in range(3 * length // 4 + step, length + 1, step):
            total.append(token_nll(lm.model, d.tokens[e - window:e])[-step:])
    return math.exp(float(np.concatenate(total).mean()))


def alibi(args: argparse.Namespace) -> None:
    from ctxext.evals import run_eval
    from ctxext.fixtures import HELD_OUT_BOOK, WINDOW, books_dir, fixture_path
    from ctxext.models import model_info
    from ctxext.scaling import alibi_slopes, parse_spec, resolve_alibi

    a = args.factor
    if args.quick:
        args.samples, args.sweep = 4, []
    specs = ["default", f"alibi-interp:factor={a}", f"ntk-alibi:factor={a}"]
    specs += [f"ntk-alibi:factor={x:g}" for x in args.sweep if x != a]  # the trade-off between the two bars
    L = a * WINDOW
    t = time.perf_counter()
    out = RUNS / f"alibi{L}{'_quick' if args.quick else ''}"
    if not args.resume:
        shutil.rmtree(out, ignore_errors=True)
    parts = book_parts(books_dir() / HELD_OUT_BOOK, args.samples)
    res = run_eval(str(fixture_path("tiny-alibi")), specs, ["ppl", "passkey"], [WINDOW, L], depths=list(DEPTHS),
                   samples=args.samples, data=[parts], out=out,
                   bucket=L // 4,
                   resume=args.resume, seed=args.seed,
                   command=f"python benchmarks/attention_methods.py alibi --factor {a} "
                           f"--sweep {','.join(f'{x:g}' for x in args.sweep)}" + (" --quick" if args.quick else ""))
    recs = res["records"]
    heads = model_info(str(fixture_path("tiny-alibi"))).n_heads
    report = {"model": "tiny-alibi", "window": WINDOW, "length": L, "factor": a, "book": HELD_OUT_BOOK,
              "book_parts": args.samples, "passkey_trials_per_depth": args.samples,
              "seconds_this_run": round(time.perf_counter() - t, 1),
              "slopes": {s: [float(x) for x in (alibi_slopes(heads) if s == "default"
                                                 else resolve_alibi(parse_spec(s), heads))] for s in specs},
              # the same tokens with the context cut to the trained window: what not extending at all gives
              "ppl_last_quarter_window_context": window_context_ppl(str(fixture_path("tiny-alibi")), parts,
                                                                    args.samples, L, WINDOW),
              # shorter cuts: how much this model gains from context at all, so what reading past W could add
              "ppl_last_quarter_shorter_context": {
                  str(w): window_context_ppl(str(fixture_path("tiny-alibi")), parts, args.samples, L, w)
                  for w in (WINDOW // 8, WINDOW // 4, WINDOW // 2)},
              "specs": {}}
    for s in specs:
        q = by(recs, scaling=s, task="ppl", metric="ppl", length=L)
        last = next(r["value"] for r in q if r["bucket"] == [3 * L // 4, L])
        pk, pk_in = passkey_score(recs, s, L), passkey_score(recs, s, WINDOW)
        q_in = by(recs, scaling=s, task="ppl", metric="ppl", length=WINDOW, bucket=None)
        report["specs"][s] = {
            "ppl_last_quarter": last, "ppl_overall": next(r["value"] for r in q if r["bucket"] is None),
            "ppl_in_window": q_in[0]["value"],
            "ppl_by_quarter": {f"{r['bucket'][0]}-{r['bucket'][1]}": r["value"] for r in q if r["bucket"]},
            "passkey": pk["accuracy"], "passkey_trials": pk["trials"], "passkey_in_window": pk_in["accuracy"]}
    n, i, d = (report["specs"][s] for s in (specs[2], specs[1], specs[0]))
    report["checks"] = {
        "ntk_alibi_ppl_beats_default_and_interp": n["ppl_last_quarter"] < min(d["ppl_last_quarter"],
                                                                              i["ppl_last_quarter"]),
        "ntk_alibi_ppl_beats_window_context": n["ppl_last_quarter"] < report["ppl_last_quarter_window_context"],
        "ntk_alibi_passkey_beats_default_and_interp": n["passkey"] > max(d["passkey"], i["passkey"])}
    write("alibi" if a == 4 else f"alibi_x{a}", report, args.quick)  # 4x is the acceptance's; others beside it


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    p = sub.add_parser("passkey")
    p.add_argument("--trials", type=int, default=2, help="trials per depth (5 depths)")
    p.add_argument("--specs", nargs="*", help="specs at --length (default: the self-extend sweep and default)")
    p.add_argument("--add", action="store_true",
                   help="merge these specs into the committed results instead of replacing them")
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--confirm-seed", type=int, default=None,
                   help="also run the best self-extend setting on fresh trials (this passkey seed)")
    p.add_argument("--quick", action="store_true", help=f"{SELF_EXTEND_BEST} and default, 1 trial at "
                   f"depths {', '.join(map(str, QUICK_DEPTHS))}, into attention_methods_passkey_quick.json")
    p = sub.add_parser("window")
    p.add_argument("--tokens", type=int, default=2000, help="sequence length, below the window W = 2048")
    p = sub.add_parser("stream")
    p.add_argument("--length", type=int, default=65536)
    p.add_argument("--short", type=int, default=32768, help="the second stream length for the memory comparison")
    p.add_argument("--bucket", type=int, default=4096, help="segment width in tokens")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs (their child.json) instead of rerunning")
    p.add_argument("--quick", action="store_true", help="16,384 and 8,192 tokens in 2,048-token segments, into "
                   "attention_methods_stream_quick.json")
    p = sub.add_parser("_stream_child")
    p.add_argument("--spec", required=True)
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--bucket", type=int, required=True)
    p = sub.add_parser("alibi")
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--samples", type=int, default=8, help="book parts (ppl) and trials per depth (passkey)")
    p.add_argument("--sweep", type=lambda v: [float(x) for x in v.split(",") if x], default=[1.5, 2, 3],
                   help="more ntk-alibi factors at the same length (comma-separated; empty for none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quick", action="store_true", help="4 book parts / trials per depth, no sweep, into "
                   "attention_methods_alibi[_xF]_quick.json")
    args = ap.parse_args()
    {"passkey": passkey, "window": window, "stream": stream, "_stream_child": stream_child, "alibi": alibi}[args.part](args)


if __name__ == "__main__":
    main()
