"""Regenerate the README's result tables from benchmarks/results/ (no hand-copied numbers).

    python benchmarks/readme.py [--check]

Each table lives between `<!-- BEGIN name -->` and `<!-- END name -->` in README.md and is rebuilt by a module of
benchmarks/report/ from:
  methods  benchmarks/results/methods/results.json (else methods_quick/, else smollm2_16k/): ppl per bucket, passkey
  planner  benchmarks/results/planner.json
  speed    benchmarks/results/eval_speed.json, train_speed-cpu.json and train_memory-cpu.json
  attention  benchmarks/results/attention_methods_{passkey,stream,alibi*}.json (Self-Extend, streaming, ALiBi family;
           their *_quick.json beside them give the --quick ordering note)
  train    benchmarks/results/train_tiny*/summary.json (tiny-rope extended 4x by `ctxext train`, one row per run)
  search   benchmarks/results/search_*/summary.json (`ctxext search` vs YaRN on a held-out book, one row per search)
  registry the scaling methods ctxext registers (ctxext.scaling.REGISTRY: name, keys, summary), not a benchmark
--check exits 1 when README.md is not what the results give (for CI or a pre-commit hook).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the report package, also when loaded by path
from report import attention, methods, planner, registry, search, speed, train  # noqa: E402
from report.common import ROOT  # noqa: E402

SECTIONS = {"methods": methods.methods_section, "planner": planner.planner_section, "speed": speed.speed_section,
            "attention": attention.attention_section, "train": train.train_section,
            "search": search.search_section, "registry": registry.registry_section}


def render(text: str) -> str:
    for name, fn in SECTIONS.items():
        pat = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if pat.search(text):
            body = fn()
            text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md is out of date: run python benchmarks/readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    if len(runs := methods.method_runs()) > 1:
        print(f"wrote {methods.across_factors_plot({f: res for f, (_, res) in runs.items()}).relative_to(ROOT)}")
    print("README.md tables regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
