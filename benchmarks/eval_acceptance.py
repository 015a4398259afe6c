"""SmolLM2 at 16 384 tokens on one book: default RoPE vs YaRN ×2, perplexity per 2k bucket (issue: eval harness,
acceptance). Runs `ctxext eval` through its Python API and checks the two figures the issue names:

- default: perplexity of the last 4k bucket (12k–16k) more than 10× its own mean over the 0–8k buckets;
- yarn:factor=2: the same ratio within 1.5×.

    python benchmarks/eval_acceptance.py [--book PATH] [--out benchmarks/results/smollm2_16k] [--resume]

Writes the eval folder (results.json, summary.md, plots) and benchmarks/results/eval_acceptance.json (with another
--out, <out>/acceptance.json), with the book, machine and versions of the run.
About two 16k forwards of SmolLM2 in fp32 (~100 s each on an idle 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECS = ("default", "yarn:factor=2")
LENGTH = 16384


def ratios(records: list[dict], spec: str) -> dict:
    """exp(mean NLL) over the 12k–16k positions vs the mean of the per-bucket perplexities over 0–8k."""
    buckets = sorted((r for r in records if r["scaling"] == spec and r["metric"] == "ppl" and r["bucket"]),
                     key=lambda r: r["bucket"][0])
    early = [r["value"] for r in buckets if r["bucket"][1] <= 8192]
    late = [r["value"] for r in buckets if r["bucket"][0] >= LENGTH - 4096]
    late_ppl = math.exp(sum(math.log(v) for v in late) / len(late))  # equal-width buckets: mean NLL
    early_mean = sum(early) / len(early)
    return {"buckets": {f"{r['bucket'][0]}-{r['bucket'][1]}": r["value"] for r in buckets},
            "ppl_0_8k_bucket_mean": early_mean, "ppl_last_4k": late_ppl, "ratio": late_ppl / early_mean}


DEFAULT_OUT = HERE / "results" / "smollm2_16k"


def acceptance_path(out: str) -> Path:
    """The committed record for the default eval folder (results/eval_acceptance.json); any other --out keeps its
    own, acceptance.json inside it, so a run on another book never replaces the committed one."""
    if Path(out).resolve() == DEFAULT_OUT:
        return HERE / "results" / "eval_acceptance.json"
    return Path(out) / "acceptance.json"


def main(argv: list[str] | None = None) -> None:
    from ctxext import runinfo
    from ctxext.evals import run_eval
    from ctxext.evals.files import atomic_write
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--book", default=str(books_dir() / HELD_OUT_BOOK))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    t = time.perf_counter()
    res = run_eval("smollm2-135m", list(SPECS), ["ppl"], [LENGTH], samples=1, data=[args.book], out=args.out,
                   bucket=2048, resume=args.resume, command="python benchmarks/eval_acceptance.py")
    report = {"model": "smollm2-135m", "length": LENGTH, "book": Path(args.book).name, "book_path": args.book,
              "eval_out": args.out, "seconds": time.perf_counter() - t, "machine": runinfo.machine(),
              "versions": runinfo.versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "specs": {s: ratios(res["records"], s) for s in SPECS}}
    d, y = report["specs"]["default"]["ratio"], report["specs"]["yarn:factor=2"]["ratio"]
    report["checks"] = {"default_last4k_over_0_8k_gt_10": d > 10, "yarn2_last4k_over_0_8k_within_1.5": y <= 1.5}
    out = acceptance_path(args.out)
    atomic_write(out, json.dumps(report, indent=1) + "\n")
    print(f"default: last-4k ppl / 0-8k mean = {d:.1f}; yarn:factor=2: {y:.2f}; checks {report['checks']}; wrote {out}")


if __name__ == "__main__":
    main()
