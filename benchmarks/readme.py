"""Regenerate the README's result tables from benchmarks/results/ (no hand-copied numbers).

    python benchmarks/readme.py [--check]

Each table lives between `<!-- BEGIN name -->` and `<!-- END name -->` in README.md and is rebuilt by a module of
benchmarks/report/ from:
  results-model  the model_info.path the method runs below record (which weights `smollm2-135m` is)
  methods-scope  benchmarks/results/methods_x<F>/results.json (records per spec, task, length and depth; meta.timings,
           seconds per cell) and search_*/summary.json (a search at that length): what the 4x / 8x runs hold, what a
           cell took, and what of benchmarks/methods.py's grid is missing
  methods  benchmarks/results/methods/results.json (else methods_quick/, else smollm2_16k/): ppl per bucket, passkey;
           methods_niah/ (the needle seeds pooled), methods_x<F>/ and the *_quick/ runs beside them
  planner  benchmarks/results/planner.json (its machine, and rows_kept_from's for the rows an earlier run measured)
  speed    benchmarks/results/eval_speed.json, train_speed-cpu.json, train_memory-cpu.json and their --quick files
           (eval_speed_quick.json, train_speed-cpu-quick.json); per lent GPU, train_speed-nvidia-*.json (and its
           -3steps first run), eval_speed-nvidia-*.json and eval-nvidia-*.json; gpu_logs/profile_train_step-*.txt
  attention  benchmarks/results/attention_methods_{passkey,stream,alibi*}.json (Self-Extend, streaming, ALiBi family;
           their *_quick.json beside them give the --quick ordering note)
  train    benchmarks/results/train_tiny*/summary.json (tiny-rope extended 4x by `ctxext train`, one row per run)
  search   benchmarks/results/search_*/summary.json (`ctxext search` vs YaRN on a held-out book, one row per search)
  registry the scaling methods ctxext registers (ctxext.scaling.REGISTRY: name, keys, summary), not a benchmark
--check exits 1 when README.md is not what the results give (for CI or a pre-commit hook); both exit 1, writing
nothing, when a section's BEGIN/END marker pair is missing, misspelled or repeated.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the report package, also when loaded by path
from report import attention, methods, planner, registry, search, speed, train  # noqa: E402
from report.common import ROOT  # noqa: E402

SECTIONS = {"results-model": methods.results_model_section, "methods-scope": methods.scope_section,
            "methods": methods.methods_section, "planner": planner.planner_section, "speed": speed.speed_section,
            "attention": attention.attention_section, "train": train.train_section,
            "search": search.search_section, "registry": registry.registry_section}


def marker_faults(text: str) -> list[str]:
    """Each section of SECTIONS whose `<!-- BEGIN name -->` / `<!-- END name -->` pair is missing, misspelled or
    repeated: such a section would go unrendered, and --check would call the README up to date."""
    faults = []
    for name in SECTIONS:
        begin, end = text.count(f"<!-- BEGIN {name} -->\n"), text.count(f"<!-- END {name} -->")
        if (begin, end) != (1, 1) or text.index(f"<!-- BEGIN {name} -->") > text.index(f"<!-- END {name} -->"):
            faults.append(f"{name} ({begin} BEGIN, {end} END marker(s))")
    return faults


def render(text: str) -> str:
    if faults := marker_faults(text):
        raise ValueError("README.md: sections without exactly one BEGIN/END marker pair: " + ", ".join(faults))
    for name, fn in SECTIONS.items():
        pat = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        body = fn()
        text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    readme = ROOT / "README.md"
    old = readme.read_text()
    if faults := marker_faults(old):  # a section the README lost: neither rewritten nor reported as up to date
        print("README.md: sections without exactly one BEGIN/END marker pair: " + ", ".join(faults), file=sys.stderr)
        return 1
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
