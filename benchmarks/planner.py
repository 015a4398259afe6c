"""Planner vs measurement: the reach `ctxext plan` predicts for a model + scaling spec, against where perplexity
really breaks.

    python benchmarks/planner.py [--quick] [--out benchmarks/results/planner.json]

Predicted: ctxext.theory.predicted_reach (2π/θ'_c at the critical pair; the critical dimension is the one
learned with the trained base). Measured ("ppl2x"): per-position NLL averaged over non-overlapping windows of
the held-out book (pg84, unseen by the fixtures), grouped in buckets of L/8 tokens; the reach is the start of
the first bucket past L/2 whose perplexity exceeds 2x the same configuration's perplexity over [L/4, L).
A configuration that never crosses within the measured length is reported as censored (measured >= length)
and not counted in the ±25 % tally.
Measured ("passkey80", tiny-rope only): greedy passkey accuracy (ctxext.fixtures.build.passkey_accuracy, 12
depths from 0 to 1) at lengths 256, 384, ..., 2048; the reach is the first length past the trained window whose
accuracy is below 80 %. A configuration already below 80 % at 256 (inside the window) has no reach to compare
("fails in window") and is not counted; one that holds to 2048 is censored. A SmolLM2 passkey sweep over
lengths is beyond this CPU's budget.

--quick: the tiny-rope fixture only (ppl and passkey rows, about five minutes on one thread), written to
planner_quick.json (an --out given with it is kept), so it never replaces the full run's rows. Full: adds
SmolLM2-135M at 16k tokens (one forward per configuration, ~2 min each on a 2-core CPU), at 32k (~7 min) for
the configurations that 16k did not break. --only MODEL (--tiny-only: tiny-rope) remeasures that model's rows and
keeps the other models' rows of the results file (after a fixture change, or to add longer SmolLM2 runs). Curves are
cached in benchmarks/results/planner_curves/, so an interrupted run resumes; a curve's file name holds a short hash of
what it was measured on (the model's config, tokenizer and weights, by content; the held-out book's name and text;
for passkey curves the lengths, trials and prompt text), so a changed fixture or book is measured again, never read
from a stale curve.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# (model, spec, length measured, windows). Changed bases (abf) are applied without tuning: the prediction keeps
# the trained critical dimension and moves its wavelength, which is what a base change does to that pair.
TINY = [("tiny-rope", s, 2048, 8) for s in (
    "default", "linear:factor=2", "linear:factor=4", "ntk:factor=2", "ntk:factor=4", "yarn:factor=2",
    "yarn:factor=4", "abf:base=20000", "abf:base=40000", "dynamic-ntk:factor=4")]
# SmolLM2 at 16k, and at 32k where 16k did not reach the break (censored at 16k: yarn, ntk and the raised base)
SMOL = [("smollm2-135m", s, L, 1) for s, L in (
    ("default", 16384), ("yarn:factor=2", 32768), ("ntk:factor=2", 32768), ("abf:base=200000", 32768),
    ("abf:base=50000", 16384))]
RATIO_OK = 0.25
PASSKEY_LENGTHS = tuple(range(256, 2049, 128))
PASSKEY_TRIALS, PASSKEY_OK = 12, 0.8
PASSKEY_SEED = 0  # passkey_accuracy's default seed (its keys)
# what a model's curves depend on in its folder: config, tokenizer and weights (not fixture.json's measurements)
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def short_hash(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:10]


@functools.lru_cache(maxsize=None)
def _file_sha(path: str, size: int, mtime_ns: int) -> str:  # keyed by size and mtime: a rewritten file is read again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha(path: Path) -> str:
    st = path.stat()
    return _file_sha(str(path), st.st_size, st.st_mtime_ns)


def model_fingerprint(folder: Path) -> str:
    """A short hash of a model folder's config, tokenizer and weight files by content (hashed once per process)."""
    files = sorted(f for f in Path(folder).iterdir() if f.is_file()
                   and (f.name in MODEL_FILES or f.suffix in WEIGHT_SUFFIXES))
    if not any(f.suffix in WEIGHT_SUFFIXES for f in files):
        raise SystemExit(f"{folder}: no weights file to key the planner's curve cache on")
    return short_hash(*(f"{f.name}:{file_sha(f)}" for f in files))


def book_fingerprint(book: Path) -> str:
    return short_hash(Path(book).name, file_sha(Path(book)))


def curve_key(model: str, spec_text: str, length: int, windows: int, model_fp: str, book_fp: str) -> str:
    """The file name (no suffix) of a perplexity curve: what was measured, and a hash of the model and the book."""
    name = re.sub(r"[^A-Za-z0-9=.]+", "_", f"{model}-{spec_text}-{length}x{windows}")
    return f"{name}-{short_hash(model_fp, book_fp)}"


def passkey_key(model: str, spec_text: str, model_fp: str, lengths=PASSKEY_LENGTHS, trials: int = PASSKEY_TRIALS,
                seed: int = PASSKEY_SEED) -> str:
    """The file name (no suffix) of a passkey curve: model, spec, trials, and a hash of the model, the lengths, the
    seed and the prompt's text (its filler, needle and question)."""
    from ctxext.fixtures.build import FILLER_SENTENCES, QUESTION, needle

    prompt = short_hash(*FILLER_SENTENCES, QUESTION, needle(12345))
    return (re.sub(r"[^A-Za-z0-9=.]+", "_", f"passkey-{model}-{spec_text}-x{trials}")
            + f"-{short_hash(model_fp, tuple(lengths), seed, prompt)}")


def lm_fingerprint(lm) -> str:
    from ctxext.models.names import resolve_model_path

    return model_fingerprint(resolve_model_path(lm.name))


def curve(lm, spec_text: str, length: int, windows: int, cache: Path) -> np.ndarray:
    """Mean per-position NLL over `windows` non-overlapping windows of the held-out book (cached on disk)."""
    from ctxext.data import load_documents, special_prefix
    from ctxext.evals.files import save_array
    from ctxext.evals.reach import window_nll
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir
    from ctxext.models.apply import apply_spec
    from ctxext.scaling import parse_spec

    book = books_dir() / HELD_OUT_BOOK
    path = cache / f"{curve_key(lm.name, spec_text, length, windows, lm_fingerprint(lm), book_fingerprint(book))}.npy"
    if path.is_file():
        return np.load(path)
    doc = load_documents([book], lm.tokenizer)[0]
    if len(doc.tokens) < length * windows:
        raise SystemExit(f"{doc.name}: {len(doc.tokens)} tokens, need {length * windows}")
    apply_spec(lm, parse_spec(spec_text))
    nll = window_nll(lm.model, doc.tokens, length, windows, special_prefix(lm.tokenizer))
    save_array(path, nll)  # float32, written atomically: an interrupted write leaves no half curve to load
    return nll


def passkey_curve(lm, spec_text: str, cache: Path) -> dict[int, float]:
    """Greedy passkey accuracy per length (PASSKEY_TRIALS depths each), cached on disk."""
    from ctxext.evals.files import atomic_write
    from ctxext.fixtures.build import passkey_accuracy
    from ctxext.models.apply import apply_spec
    from ctxext.scaling import parse_spec

    path = cache / f"{passkey_key(lm.name, spec_text, lm_fingerprint(lm))}.json"
    if path.is_file():
        return {int(k): v for k, v in json.loads(path.read_text()).items()}
    apply_spec(lm, parse_spec(spec_text))
    acc = {L: passkey_accuracy(lm.model, lm.tokenizer, L, PASSKEY_TRIALS, seed=PASSKEY_SEED) for L in PASSKEY_LENGTHS}
    atomic_write(path, json.dumps(acc))
    return acc


def passkey_reach(acc: dict[int, float], trained: int) -> tuple[float, str]:
    """(first length past the window with accuracy < PASSKEY_OK, status: 'ok', 'censored' or 'fails in window')."""
    lengths = sorted(acc)
    if acc[lengths[0]] < PASSKEY_OK:
        return float(lengths[0]), "fails in window"
    for L in lengths:
        if L > trained and acc[L] < PASSKEY_OK:
            return float(L), "ok"
    return float(lengths[-1]), "censored"


def ppl2x(lm, spec_text: str, length: int, windows: int, cache: Path) -> tuple[float, str, dict]:
    """(reach, status, extra row fields) from the perplexity curve."""
    shape = lm.info.rope_shape
    from ctxext.evals.reach import ppl_break

    brk = ppl_break(curve(lm, spec_text, length, windows, cache), shape.original_len)
    return brk.reach, "censored" if brk.censored else "ok", {
        "in_window_ppl": round(brk.in_window_ppl, 3), "rope_base": shape.base, "rotary_dim": shape.rotary_dim,
        "length_measured": length, "windows": windows}


def passkey80(lm, spec_text: str, length: int, windows: int, cache: Path) -> tuple[float, str, dict]:
    """(reach, status, extra row fields) from the passkey accuracy by length."""
    acc = passkey_curve(lm, spec_text, cache)
    meas, status = passkey_reach(acc, lm.info.rope_shape.original_len)
    return meas, status, {"accuracy_by_length": {str(k): round(v, 3) for k, v in sorted(acc.items())},
                          "trials": PASSKEY_TRIALS}


CRITERIA = {"ppl2x": ppl2x, "passkey80": passkey80}


def run(configs: list[tuple[str, str, int, int]], cache: Path, criterion: str = "ppl2x") -> list[dict]:
    from ctxext.models import load_model
    from ctxext.scaling import parse_spec
    from ctxext.theory import predicted_reach

    rows, lm = [], None
    for model, spec_text, length, windows in configs:
        if lm is None or lm.name != model:
            lm = None  # free the previous model before loading the next
            lm = load_model(model)
        t0 = time.perf_counter()
        meas, status, extra = CRITERIA[criterion](lm, spec_text, length, windows, cache)
        shape = lm.info.rope_shape
        pred = predicted_reach(parse_spec(spec_text), shape)
        ratio = meas / pred.tokens
        row = {"config": f"{model} {spec_text}", "model": model, "spec": spec_text, "criterion": criterion,
               "predicted": round(pred.tokens, 1), "predicted_capped": pred.capped, "measured": meas,
               "censored": status != "ok", "status": status, "measured_over_predicted": round(ratio, 3),
               "within_25pct": status == "ok" and abs(ratio - 1) <= RATIO_OK, **extra,
               "trained_len": shape.original_len, "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        flag = status if status != "ok" else ("ok" if row["within_25pct"] else "outside")
        print(f"{row['config']:<40} {criterion:<9} predicted {pred.tokens:>9,.0f}  measured {meas:>8,.0f}  "
              f"ratio {ratio:5.2f}  {flag}", flush=True)
    return rows


def calibrate(rows: list[dict]) -> list[dict]:
    """Add what `ctxext plan --calibrate` would predict to each ppl2x row: the prediction carried by its model's
    default measured / predicted (ctxext.theory.Calibration). The default rows are the calibration itself and get
    nothing; nor do rows of a model whose default was censored. Passkey rows are not calibrated (plan calibrates
    by perplexity)."""
    from ctxext.theory import Calibration

    cals = {r["model"]: Calibration(r["predicted"], r["measured"], r["censored"]) for r in rows
            if r["criterion"] == "ppl2x" and r["spec"] == "default" and not r["censored"]}
    for r in rows:
        for k in ("calibrated", "measured_over_calibrated", "calibrated_within_25pct"):
            r.pop(k, None)
        c = cals.get(r["model"])
        if c is None or r["criterion"] != "ppl2x" or r["spec"] == "default" or r["predicted_capped"]:
            continue
        r["calibrated"] = round(c.reach(r["predicted"]), 1)
        if not r["censored"]:
            ratio = r["measured"] / r["calibrated"]
            r["measured_over_calibrated"] = round(ratio, 3)
            r["calibrated_within_25pct"] = abs(ratio - 1) <= RATIO_OK
    return rows


def tallies(rows: list[dict]) -> dict:
    """Counts of the results file: uncensored rows within ±25 %, raw and (ppl2x, default rows left out) calibrated."""
    cal = [r for r in rows if "calibrated_within_25pct" in r]
    return {"within_25pct": sum(r["within_25pct"] for r in rows), "counted": sum(not r["censored"] for r in rows),
            "calibrated_within_25pct": sum(r["calibrated_within_25pct"] for r in cal),
            "calibrated_counted": len(cal),
            "uncalibrated_within_25pct_of_those": sum(r["within_25pct"] for r in cal)}


def kept_rows_from(old: dict, models: list[str]) -> dict:
    """When and where the rows kept from `old` (of `models`) were measured: old's own run, unless old had kept
    those models' rows from an earlier run itself (a second --only for the same model), whose record stays."""
    earlier = old.get("rows_kept_from") or {}
    if models and set(models) <= set(earlier.get("models") or []):
        return {**earlier, "models": models}
    return {"date": old.get("date"), "machine": old.get("machine"), "models": models}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny-rope only (minutes), into planner_quick.json")
    p.add_argument("--out", type=Path, default=RESULTS / "planner.json")
    p.add_argument("--only", choices=("tiny-rope", "smollm2-135m"), default=None,
                   help="remeasure this model's rows only and keep the other models' rows of --out as they are "
                        "(their date is kept in rows_kept_from)")
    p.add_argument("--tiny-only", action="store_true", help="the same as --only tiny-rope")
    p.add_argument("--rescore", action="store_true",
                   help="measure nothing: recompute --out's calibrated columns and tallies from its rows")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from ctxext.evals.files import atomic_write
    from ctxext.runinfo import machine, override_defaults, versions

    if args.quick:  # its own file: a quick run's tiny-rope rows never replace the full run's
        override_defaults(p, args, {"out": RESULTS / "planner_quick.json"}, sys.argv[1:] if argv is None else argv)

    if args.rescore:
        out = json.loads(args.out.read_text())
        out["rows"] = calibrate(out["rows"])
        out.update(tallies(out["rows"]))
        atomic_write(args.out, json.dumps(out, indent=1) + "\n")
        print(f"{out['within_25pct']} of {out['counted']} within ±25 %; calibrated: {out['calibrated_within_25pct']} "
              f"of {out['calibrated_counted']}; {args.out}")
        return 0

    only = "tiny-rope" if args.tiny_only else args.only
    t0 = time.time()
    cache = RESULTS / "planner_curves"
    rows = [] if only == "smollm2-135m" else run(TINY, cache) + run(TINY, cache, "passkey80")
    if not args.quick and only != "tiny-rope":
        rows += run(SMOL, cache)
    kept_from = None
    if only and args.out.is_file():
        old = json.loads(args.out.read_text())
        models = {r["model"] for r in rows}
        kept = [r for r in old["rows"] if r["model"] not in models]
        rows = kept + rows if only == "smollm2-135m" else rows + kept
        kept_from = kept_rows_from(old, sorted({r["model"] for r in kept}))
    rows = calibrate(rows)
    out = {"what": "planner predicted reach vs measured (ppl 2x in-window; passkey < 80 %), benchmarks/planner.py",
           "quick": args.quick, "machine": machine(), "versions": versions(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - t0, 1),
           **tallies(rows), "rows_kept_from": kept_from, "rows": rows}
    atomic_write(args.out, json.dumps(out, indent=1) + "\n")
    print(f"{out['within_25pct']} of {out['counted']} uncensored configurations within ±25 % (calibrated by the "
          f"default: {out['calibrated_within_25pct']} of {out['calibrated_counted']}); {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
