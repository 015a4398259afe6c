"""Regenerate the README's result tables from benchmarks/results/ (no hand-copied numbers).

    python benchmarks/readme.py [--check]

Each table lives between `<!-- BEGIN name -->` and `<!-- END name -->` in README.md and is rebuilt from:
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
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))  # ctxext without an install; imported lazily where a section needs it


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _machine(m: dict | None) -> str:
    if not m:
        return "machine not recorded"
    return f"{m.get('cpu_count', '?')}-core {m.get('processor', 'CPU')} ({m.get('platform', '?')})"


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}" if x < 1000 else f"{x:,.0f}"


# ------------------------------------------------------------------------------------------------ methods
def _label(spec: str) -> str:
    # a searched spec is a best.json path; name the method and keep the path visible
    return f"longrope, searched (`{spec}`)" if spec.endswith(".json") else f"`{spec}`"


def late_order(res: dict) -> list[str]:
    """Specs ordered by mean perplexity over the last quarter of the longest length (best first)."""
    means = ppl_means(res)[3]
    return sorted((s for s, (_, lq) in means.items() if lq is not None), key=lambda s: means[s][1])


def _length(res: dict) -> int:
    return max(r["length"] for r in res["records"] if r["task"] in ("ppl", "stream-ppl"))


def ordering_note(full: dict, quick: dict) -> str:
    q = late_order(quick)
    f = [s for s in late_order(full) if s in q]
    same = "yes" if f == q else "**no**"
    return (f"`--quick` (a separate run: the same book at {_length(quick):,} tokens, {len(q)} methods) orders them by "
            f"last-quarter perplexity as {' < '.join(q)}; the full run at {_length(full):,}: {' < '.join(f)}; "
            f"same order: {same}.")


def _ppl_records(res: dict) -> list[dict]:
    # stream-ppl (streaming) scores the same tokens as the window protocol of ppl, bucket by bucket
    return [r for r in res["records"] if r["task"] in ("ppl", "stream-ppl") and r["metric"] == "ppl" and r["bucket"]]


def ppl_means(res: dict) -> tuple[int, int, list[tuple[int, int]], dict[str, tuple[float | None, float | None]]]:
    """(longest length, trained length, the last quarter's buckets, per spec: (mean ppl of the buckets inside the
    trained length, mean ppl of the last quarter's)) at the longest length."""
    ppl = _ppl_records(res)
    length = max((r["length"] for r in ppl), default=0)
    trained = res["meta"]["config"]["model_info"]["trained_len"]
    buckets = sorted({tuple(r["bucket"]) for r in ppl if r["length"] == length})
    late = [b for b in buckets if b[0] >= length - length // 4]
    means = {}
    for s in dict.fromkeys(r["scaling"] for r in ppl):
        val = {tuple(r["bucket"]): r["value"] for r in ppl if r["scaling"] == s and r["length"] == length}
        inw = [v for b, v in val.items() if b[1] <= trained]
        lq = [val[b] for b in late if b in val]
        means[s] = (sum(inw) / len(inw) if inw else None, sum(lq) / len(lq) if lq else None)
    return length, trained, late, means


def _passkey_records(res: dict, spec: str) -> list[dict]:
    return [r for r in res["records"] if r["scaling"] == spec and r["task"] == "passkey" and r["metric"] == "accuracy"
            and r["depth"] is not None]


def _passkey(res: dict, spec: str) -> dict[float, float]:
    """depth -> greedy passkey accuracy of one spec."""
    return {r["depth"]: r["value"] for r in _passkey_records(res, spec)}


def _passkey_count(res: dict, spec: str) -> str:
    """'correct/trials' over every depth of one spec, '–' when it has none."""
    recs = _passkey_records(res, spec)
    return f"{round(sum(r['value'] * r['n'] for r in recs))}/{sum(r['n'] for r in recs)}" if recs else "–"


def _method(spec: str) -> str:
    return "longrope, searched" if spec.endswith(".json") else spec.split(":")[0]


def _rope_shape(res: dict) -> Any:
    """The run's model RoPE shape from its results (None when not recorded)."""
    from ctxext.scaling import RopeShape

    rope = res["meta"]["config"]["model_info"].get("rope")
    return RopeShape(int(rope["rotary_dim"]), float(rope["base"]), int(rope["original_len"])) if rope else None


def far_end_ratios(means: dict[str, tuple[float | None, float | None]]) -> dict[str, float]:
    """Per spec (ppl_means' means): last-quarter perplexity over the default's in-window perplexity."""
    ref = means.get("default", (None, None))[0]
    return {s: lq / ref for s, (_, lq) in means.items() if ref and lq}


def exports(spec: str, res: dict) -> str:
    """'yes' when `ctxext export` can write the spec as a stock rope config for the run's model, 'no' when it
    refuses (self-extend, streaming, dynamic-yarn), '–' when the results do not record the model's RoPE shape."""
    from ctxext.errors import CtxextError
    from ctxext.scaling import hf_rope_fields, parse_spec

    shape = _rope_shape(res)
    if shape is None:
        return "–"
    try:
        hf_rope_fields(parse_spec(str(ROOT / spec) if spec.endswith(".json") else spec), shape)
    except CtxextError:
        return "no"
    return "yes"


Cells = dict[str, dict[int, tuple[str, float, str]]]


def best_by_factor(runs: dict[int, dict]) -> tuple[dict[int, tuple], Cells, list[str]]:
    """(ppl_means per factor, per method and factor its best spec by far-end ratio with that ratio and its passkey
    count, the methods best first at the largest factor) over the runs ({factor: results})."""
    factors = sorted(runs)
    at = {f: ppl_means(runs[f]) for f in factors}  # (length, trained, late buckets, means per spec)
    cells: Cells = {}
    for f in factors:
        for s, ratio in far_end_ratios(at[f][3]).items():
            best = cells.setdefault(_method(s), {}).get(f)
            if best is None or ratio < best[1]:
                cells[_method(s)][f] = (s, ratio, _passkey_count(runs[f], s))
    inf = float("inf")
    return at, cells, sorted(cells, key=lambda m: tuple(cells[m].get(f, (None, inf))[1] for f in reversed(factors)))


ACROSS_PNG = RES / "methods_across_factors.png"
TOP = 12.0  # the plot's ceiling: the methods a user would choose between lie below it


def across_factors_plot(runs: dict[int, dict], path: Path = ACROSS_PNG) -> Path:
    """The across-factors table as lines: far-end perplexity / the unscaled model's in-window one, per method,
    against the extension factor (both axes logarithmic; methods that remap attention dashed)."""
    sys.path.insert(0, str(ROOT / "src"))
    from ctxext.plots import PALETTE, figure, save

    factors = sorted(runs)
    _, cells, order = best_by_factor(runs)
    others = [m for m in order if m != "default"]
    with figure() as (fig, ax):
        for m in order:  # the model as trained in the palette's first colour; the rest by colour, then marker
            k = others.index(m) if m != "default" else None
            color = PALETTE[0] if k is None else PALETTE[1 + k % (len(PALETTE) - 1)]
            marker = "o" if k is None else "os^D"[k // (len(PALETTE) - 1) % 4]
            fs = [f for f in factors if f in cells[m]]
            ys = [cells[m][f][1] for f in fs]
            off = [f"{y:,.0f}×" for y in ys if y > TOP]  # where default RoPE lives: named, not drawn
            ax.plot(fs, ys, marker=marker, ms=5, color=color, ls="--" if m in ("self-extend", "streaming") else "-",
                    label=m + (f" ({', '.join(off)}: above the plot)" if off else ""))
        ax.axhline(1.0, color="#8C8C8C", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_ylim(0.9, TOP)
        ax.set_yticks([1, 1.5, 2, 3, 5, 10], ["1×", "1.5×", "2×", "3×", "5×", "10×"])
        ax.minorticks_off()
        ax.set_xticks(factors, [f"{f}×\n{ppl_means(runs[f])[0] // 1024}k" for f in factors])
        ax.set_xlabel("extension factor (target length)")
        ax.set_ylabel("last-quarter ppl / unscaled in-window ppl")
        ax.set_title("Far-end perplexity by method and factor (lower is better; 1 = nothing lost)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return save(fig, path)


def glance_table(runs: dict[int, dict]) -> str:
    """One row per method over every factor that ran ({factor: results}): at each, the last quarter's perplexity
    against the unscaled model's own in-window perplexity (what a user gives up at the far end of the document), and
    passkey trials correct; a method with several specs at a factor shows its best by that perplexity."""
    factors = sorted(runs)
    at, cells, order = best_by_factor(runs)
    head = ["method", "stock config"] + [x for f in factors for x in (f"{f}× ({at[f][0] // 1024}k) ppl", "passkey")]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for m in order:
        last = max(f for f in factors if f in cells[m])  # the spec a user would ship: the one at its largest factor
        row = [f"`{m}`" if m != "longrope, searched" else m, exports(cells[m][last][0], runs[last])]
        for f in factors:
            s, ratio, got = cells[m].get(f, (None, None, "–"))
            row += [f"{ratio:,.2f}×" if ratio is not None else "–", got]
        lines.append("| " + " | ".join(row) + " |")
    several = [(m, f, cells[m][f][0]) for m in order for f in factors if f in cells[m]
               and sum(_method(s) == m for s in at[f][3]) > 1]
    if several:
        lines += ["", "Methods run with several specs at a factor show their best: " + "; ".join(
            f"{f}× {_label(s)}" for _, f, s in several) + "."]
    lines += ["", "stock config: whether `ctxext export` writes the method as a rope config that stock transformers "
              "and vLLM load; the others run through ctxext (`ctxext eval`, or `ctxext.models.apply_spec` on a loaded "
              "model)."]
    if "streaming" in cells:
        lines += ["", "`streaming` attends to its sinks and a recent window only: its perplexity stays flat, but it "
                  "cannot retrieve what has left the window (no passkey)."]
    if picks := planner_picks(runs):
        lines += ["", "The planner's training-free pick (`ctxext plan --target T`), measured: " + "; ".join(picks) + "."]
    return "\n".join(lines)


def planner_picks(runs: dict[int, dict]) -> list[str]:
    """Per factor: the spec `ctxext plan` recommends training-free for the run's length, and where its measured
    far-end perplexity ranks among every spec of that run (or that it was not run)."""
    from ctxext.theory import plan

    out = []
    for f in sorted(runs):
        shape, (length, _, _, means) = _rope_shape(runs[f]), ppl_means(runs[f])
        if shape is None or not length:
            continue
        pick = plan(shape, length).recommended("training-free")
        if pick is None:
            continue
        ratio = far_end_ratios(means)
        if pick.spec in ratio:
            rank = 1 + sum(v < ratio[pick.spec] for v in ratio.values())
            out.append(f"{f}× `{pick.spec}` {ratio[pick.spec]:.2f}×, {rank} of {len(ratio)} specs run")
        else:
            out.append(f"{f}× `{pick.spec}` not run yet")
    return out


def methods_table(res: dict, source: str, expected: list[str] | None = None) -> str:
    """The method table; `expected`: the specs the benchmark runs at this factor, so that the ones not measured
    yet are named under it."""
    recs = res["records"]
    specs = list(dict.fromkeys(r["scaling"] for r in recs))
    # rows in the benchmark's method order (else first-run order), a spec added later beside the others of its
    # method, streaming (no passkey) last: the tables of every factor read alike whatever order the cells ran in
    family = list(dict.fromkeys(s.split(":")[0] for s in (expected or []) + specs))
    specs.sort(key=lambda s: (s.startswith("streaming"), family.index(s.split(":")[0])))
    ppl = _ppl_records(res)
    length, trained, late, means = ppl_means(res)
    depths = sorted({r["depth"] for r in recs if r["task"] == "passkey" and r["depth"] is not None})
    head = ["spec", f"ppl 0–{trained // 1024}k (mean of buckets)"] + [f"ppl {a // 1024}–{b // 1024}k" for a, b in late]
    head += ["last quarter / in-window"] + [f"passkey d={d:g}" for d in depths]
    rows = []
    for s in specs:
        val = {tuple(r["bucket"]): r["value"] for r in ppl if r["scaling"] == s and r["length"] == length}
        mean_in, mean_lq = means.get(s, (None, None))
        pk = _passkey(res, s)
        row = [_label(s), _fmt(mean_in)] + [_fmt(val.get(b)) for b in late]
        row += [_fmt(mean_lq / mean_in, 2) + "×" if mean_in and mean_lq else "–"]
        row += [f"{pk[d]:.0%}" if d in pk else "–" for d in depths]
        rows.append(row)
    dtype = res["meta"]["config"].get("dtype", "float32")
    lines = [f"SmolLM2-135M (trained {trained:,} tokens) at {length:,} tokens, held-out book "
             f"(`{source}`; {_machine(res['meta'].get('machine'))}" + (f"; {dtype}" if dtype != "float32" else "")
             + "):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if absent := [s for s in (expected or []) if s not in {r["scaling"] for r in ppl}]:
        lines += ["", f"perplexity not run yet for {len(absent)} of {len(expected)} specs: "
                  + ", ".join(_label(s) for s in absent) + "."]
    pk = [r for r in recs if r["task"] == "passkey" and r["metric"] == "accuracy"]
    if pk:
        n = sorted({r["n"] for r in pk})
        missing = [_label(s) for s in specs if s not in {r["scaling"] for r in pk}
                   and not s.startswith("streaming")]
        lines += ["", f"passkey: greedy accuracy at {max(r['length'] for r in pk):,} tokens, "
                  f"{'/'.join(map(str, n))} trial(s) per depth (standard protocol, verdicts teacher-forced)"
                  + (f"; not run yet for {len(missing)} spec(s) (–)" if missing else "") + "."]
    if timing := time_line(res["meta"].get("timings", [])):
        lines += ["", timing]
    nh = [r for r in recs if r["task"] == "niah" and r["metric"] == "accuracy"]
    if nh:
        n = sorted({r["n"] for r in nh})
        past = {}
        for r in nh:
            if r["length"] > trained:
                got, total = past.get(r["scaling"], (0, 0))
                past[r["scaling"]] = (got + round(r["value"] * r["n"]), total + r["n"])
        lines += ["", f"needle in a haystack (heatmap below): {len({r['scaling'] for r in nh})} specs at "
                  f"{', '.join(f'{x:,}' for x in sorted({r['length'] for r in nh}))} tokens, depths "
                  f"{', '.join(f'{x:g}' for x in sorted({r['depth'] for r in nh}))}, {'/'.join(map(str, n))} "
                  "trial(s) per cell (a needle sentence in the book's own text; trials differ in the key only, "
                  "the haystack and the needle's place are the same" + ("; one trial per cell is thin)."
                                                                       if n == [1] else ").")]
        if past:
            lines[-1] += " Past the trained length: " + ", ".join(
                f"{_label(s)} {g}/{t}" for s, (g, t) in past.items()) + " correct."
    return "\n".join(lines)


def time_line(timings: list[dict]) -> str:
    """What each task and length took per spec on the run's machine (meta.timings), beside the plan's estimate."""
    from ctxext.evals.cost import fmt_seconds
    from ctxext.evals.results import timing_rows

    rows = timing_rows(timings)
    if not rows:
        return ""
    parts = [f"{task} at {L:,}: {fmt_seconds(med)} per spec (median of {n_specs} timed, "
             f"{fmt_seconds(lo)}–{fmt_seconds(hi)}; estimated {fmt_seconds(est)})"
             for task, L, n_specs, _, med, lo, hi, est in rows]
    return "time on that machine: " + "; ".join(parts) + " (cells run before timings were recorded are not counted)."


def expected_specs(factor: int) -> list[str]:
    """What `benchmarks/methods.py --factor F` measures: its method set and streaming."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import methods

    return methods.specs_for(factor) + [methods.STREAMING]


def _methods_body(name: str, res: dict, pooled: dict | None = None, factor: int | None = None) -> str:
    """One method table with its plots and the --quick ordering note; pooled holds the needle cells of every seed;
    for a larger factor's table, the specs not measured yet are named."""
    if pooled:  # the needle cells with the trials of every seed (benchmarks/methods.py --seed)
        res = {**res, "records": [r for r in res["records"] if r["task"] != "niah"] + pooled["records"]}
    body = methods_table(res, f"benchmarks/results/{name}", expected_specs(factor) if factor else None)
    for png, alt in (("ppl_by_position.png", "ppl by position"), ("passkey_heatmap.png", "passkey by depth"),
                     ("niah_heatmap.png", "needle in a haystack, lengths x depths")):
        where = "methods_niah" if pooled and png.startswith("niah") else name
        if (RES / where / png).is_file():
            body += f"\n\n![{alt}](benchmarks/results/{where}/{png})"
    quick = _load(RES / f"{name}_quick" / "results.json")
    if quick:
        body += "\n\n" + ordering_note(res, quick)
    return body


def method_runs() -> dict[int, tuple[str, dict]]:
    """{factor: (results folder, results)}: 2x from methods/ (else the quick run's, else the first 16k run's), then
    each larger factor that ran (benchmarks/methods.py --factor F writes methods_xF/)."""
    runs = {}
    for name in ("methods", "methods_quick", "smollm2_16k"):
        if res := _load(RES / name / "results.json"):
            runs[2] = (name, res)
            break
    scaled = sorted((int(m[1]), d) for d in RES.glob("methods_x*") if (m := re.fullmatch(r"methods_x(\d+)", d.name)))
    for factor, d in scaled:
        if res := _load(d / "results.json"):
            runs[factor] = (d.name, res)
    return runs


def methods_section() -> str:
    """The 2x table (else the quick run's, else the first 16k run's), then one table per larger factor that ran
    (benchmarks/methods.py --factor F writes methods_xF/)."""
    parts, runs = [], method_runs()
    for factor, (name, res) in runs.items():
        if factor == 2:
            pooled = _load(RES / "methods_niah" / "results.json") if name == "methods" else None
            parts.append(_methods_body(name, res, pooled))
        else:
            parts.append(f"**At {factor}× the trained length.** " + _methods_body(name, res, factor=factor))
    runs = {f: res for f, (_, res) in runs.items()}
    if len(runs) > 1:
        parts.insert(0, "**Across factors** (from the tables below): ppl is the last quarter's perplexity over the "
                     "unscaled model's own in-window perplexity (1.00× = nothing lost at the far end of the document), "
                     "passkey the trials correct over every depth; best first at the largest factor.\n\n"
                     + glance_table(runs) + f"\n\n![far-end perplexity by factor]({ACROSS_PNG.relative_to(ROOT)})")
    return "\n\n".join(parts) or "(no method results yet: run `python benchmarks/methods.py`)"


# ------------------------------------------------------------------------------------------------ planner
def _status(row: dict) -> str:
    """'ok', 'censored' or 'fails in window' (rows written before the passkey criterion have no status)."""
    return row.get("status", "censored" if row["censored"] else "ok")


def planner_section() -> str:
    d = _load(RES / "planner.json")
    if not d:
        return "(no planner results yet: run `python benchmarks/planner.py`)"
    crit = {"ppl2x": "ppl > 2× in-window", "passkey80": "passkey < 80 %"}
    lines = [f"Predicted reach (`ctxext plan`) vs measured: `ppl2x`, the first position where perplexity exceeds 2× "
             f"the configuration's own in-window value (buckets of L/8), and `passkey80`, the first length past the "
             f"window where greedy passkey accuracy falls below 80 % (tiny-rope, 12 depths per length, lengths "
             f"256–2,048 by 128; {_machine(d.get('machine'))}). "
             f"**{d['within_25pct']} of {d['counted']}** measured configurations within ±25 %.", ""]
    if d.get("calibrated_counted"):
        lines += [f"Calibrated (what `ctxext plan --calibrate` gives: each prediction times its model's measured / "
                  f"predicted for default RoPE, one forward of the default; ppl rows, the default rows left out): "
                  f"**{d['calibrated_within_25pct']} of {d['calibrated_counted']}** within ±25 %, against "
                  f"{d['uncalibrated_within_25pct_of_those']} of those {d['calibrated_counted']} uncalibrated.", ""]
    lines += ["| configuration | criterion | predicted | measured | measured / predicted | within ±25 % "
              "| calibrated | measured / calibrated |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in d["rows"]:
        status = _status(r)
        meas = f"≥ {r['measured']:,.0f}" if status == "censored" else (
            f"< {r['measured']:,.0f}" if status == "fails in window" else f"{r['measured']:,.0f}")
        ok = status if status != "ok" else ("yes" if r["within_25pct"] else "**no**")
        ratio = f"{r['measured_over_predicted']:.2f}" if status == "ok" else "–"
        cal = f"{r['calibrated']:,.0f}" if "calibrated" in r else "–"
        cal_ratio = "–" if "measured_over_calibrated" not in r else (
            f"{r['measured_over_calibrated']:.2f}" if r["calibrated_within_25pct"]
            else f"**{r['measured_over_calibrated']:.2f}**")
        lines.append(f"| `{r['config']}` | {crit.get(r.get('criterion'), r.get('criterion'))} | {r['predicted']:,.0f} | "
                     f"{meas} | {ratio} | {ok} | {cal} | {cal_ratio} |")
    if d.get("rows_kept_from"):
        k = d["rows_kept_from"]
        lines.append(f"\nRows of {', '.join(k['models'])} are from the run of {k['date']}, kept when the other "
                     "model's rows were remeasured (`benchmarks/planner.py --only`).")
    outside = [r for r in d["rows"] if not r["censored"] and not r["within_25pct"]]
    for r in outside:
        if r.get("criterion") == "passkey80":
            acc = ", ".join(f"{int(k):,}: {100 * v:.0f} %" for k, v in r["accuracy_by_length"].items()
                            if v > 0 or int(k) <= r["measured"] + 128)
            lines.append(f"\n`{r['config']}` passkey first falls below 80 % at {r['measured_over_predicted']:.2f}× the "
                         f"prediction (accuracy by length: {acc}; 0 % beyond): retrieval, one needle read through "
                         "the slow pairs, fails before the critical pair's limit, and with 12 trials per length one "
                         "miss moves a point by 8 %.")
        elif r["spec"].startswith("dynamic"):
            lines.append(f"\n`{r['config']}` breaks early: a dynamic method rotates every query–key pair with a base "
                         "chosen for the current length, so the high-frequency pairs the model relies on inside its "
                         "window move too; the prediction only tracks the critical pair's wavelength.")
        else:
            lines.append(f"\n`{r['config']}` crosses 2× at {r['measured_over_predicted']:.2f}× the prediction: past the "
                         "predicted limit this model degrades gradually (the critical pair is one of several slow pairs "
                         "and one book window is measured), so the 2× line is reached later than the limit itself; the "
                         "tiny fixture breaks sharply at it." + (
                             f" Calibrated by its model's default: {r['measured_over_calibrated']:.2f}×."
                             if "measured_over_calibrated" in r else ""))
    if any(_status(r) == "censored" for r in d["rows"]):
        lines.append("\nCensored rows held (below 2×, or at ≥ 80 % passkey) up to the longest length measured (≥); "
                     "they agree with a prediction at or below that length but give no ratio.")
    if any(_status(r) == "fails in window" for r in d["rows"]):
        lines.append("\n\"fails in window\": passkey is already below 80 % at 256 tokens, inside the trained "
                     "window; such a configuration has no reach to compare (untuned interpolation squeezes the "
                     "positions the model retrieves by).")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- speed
def _cpus(ev: dict) -> str:
    return str((ev.get("machine") or {}).get("cpu_count", "?"))


def _variant(r: dict) -> str:
    return {"": "ctxext (gradient checkpointing, chunked loss)", "naive": "naive transformers loop",
            "naive-ckpt": "naive + transformers' checkpointing"}.get(
        " ".join(r["extra"]), "ctxext " + " ".join(r["extra"]))


def naive_ratios(tr: dict, variant: str = "naive") -> dict[int, tuple[float, float]]:
    """ctxext / baseline (tokens/s, peak memory) at each length where both were measured in the same run."""
    done = [r for r in tr["runs"] if "tokens_per_second" in r and r.get("run")]
    out = {}
    for ours in (r for r in done if not r["extra"]):
        base = next((n for n in done if n["extra"] == [variant] and n["length"] == ours["length"]
                     and n["run"] == ours["run"]), None)
        if base:
            out[ours["length"]] = (ours["tokens_per_second"] / base["tokens_per_second"],
                                   ours["peak_memory_gib"] / base["peak_memory_gib"])
    return out


def speed_ratios(ev: dict | None, tr: dict | None) -> dict[str, tuple[int, float]]:
    """ctxext / the naive loop, by figure: (length, ratio); training at the shortest length with a same-run pair."""
    out = {}
    if ev and "ppl" in ev:
        o, n = ev["ppl"]["ours"], ev["ppl"]["naive"]
        out["eval tokens/s"] = (ev["length"], o["tokens_per_s"] / n["tokens_per_s"])
        out["eval peak RSS"] = (ev["length"], o["process_peak_mb"] / n["process_peak_mb"])
    if tr and (pairs := naive_ratios(tr)):
        length = min(pairs)
        out["training tokens/s"] = (length, pairs[length][0])
        out["training peak memory"] = (length, pairs[length][1])
    return out


def speed_ordering_note(full: dict[str, tuple[int, float]], quick: dict[str, tuple[int, float]]) -> str:
    """Does --quick put ctxext on the same side of the naive loop (ratio above or below 1) as the full runs?"""
    keys = [k for k in quick if k in full]
    if not keys:
        return ""
    same = all((quick[k][1] > 1) == (full[k][1] > 1) for k in keys)
    cells = [f"{k} {quick[k][1]:.2f}× at {quick[k][0]:,} (full: {full[k][1]:.2f}× at {full[k][0]:,})" for k in keys]
    return (f"`--quick` (`eval_speed.py --quick`, `train_speed.py --quick`, separate runs), ctxext / naive: "
            + "; ".join(cells) + f". Same order as the full runs (each ratio on the same side of 1): "
            + ("yes" if same else "**no**") + ".")


def train_speed_lines(tr: dict) -> list[str]:
    """One row per run, and ctxext / naive ratios where both were measured at a length in the same run."""
    meta = tr["meta"]
    peak = meta.get("peak_bf16_flops")  # set on a GPU: the last column is then model FLOPs utilisation
    model = meta["model"]
    if "random" in Path(model).name:  # the GPU speed model (benchmarks/gpu_carry.py init): say what it is
        model = f"SmolLM2-135M's shape with random weights (`{model}`)"
    where = _machine(meta.get("machine")) + (f", {meta['device']}" if meta.get("device", "cpu") != "cpu" else "")
    lines = [f"Training {model} (full fine-tuning, `{meta['scaling']}`{', bf16 autocast' if peak else ''}; "
             f"{where}; `benchmarks/train_speed.py`):", "",
             "| length | run | tokens/s | peak memory | ctxext's estimate | "
             + (f"MFU (bf16 dense peak {peak / 1e12:.0f} TFLOP/s) |" if peak else "useful FLOP/s ÷ matmul rate |"),
             "|---:|---|---:|---:|---:|---:|"]
    pairs = {v: naive_ratios(tr, v) for v in ("naive", "naive-ckpt")}
    for length in sorted({r["length"] for r in tr["runs"]}):
        rows = [r for r in tr["runs"] if r["length"] == length]
        for r in rows:
            if "tokens_per_second" not in r:
                lines.append(f"| {length:,} | {_variant(r)} | – | {r['error']} | – | – |")
                continue
            est, frac = r.get("memory_estimate_gib"), r.get("mfu" if peak else "fraction_of_matmul_rate")
            lines.append(f"| {length:,} | {_variant(r)} | {_fmt(r['tokens_per_second'])} | {r['peak_memory_gib']:.2f} GiB "
                         f"| {'–' if est is None else f'{est:.2f} GiB'} | {'–' if frac is None else f'{frac:.2f}'} |")
        for v, ratio in pairs.items():
            if length in ratio:
                lines.append(f"| {length:,} | **ratio** ctxext / {_variant({'extra': [v]})} (same run) | "
                             f"**{ratio[length][0]:.2f}×** | **{ratio[length][1]:.2f}×** | | |")
    runs = sorted({r["run"] for r in tr["runs"] if r.get("run")})
    if len(runs) > 1:  # rows merged from several runs: say which, since the machine's speed differs between them
        said = ["{} ({})".format(run, ", ".join(f"{r['length']:,} {_variant(r)}" for r in tr["runs"]
                                                if r.get("run") == run)) for run in runs]
        lines += ["", f"Rows from {len(runs)} runs: " + "; ".join(said) + "."]
    rates = sorted({round(r["fp32_matmul_flops"] / 1e9) for r in tr["runs"] if r.get("fp32_matmul_flops")})
    lines += ["", "tokens/s over the steps after the first; peak memory is "
              + ("torch.cuda.max_memory_allocated" if peak else "the process's peak RSS") + " after loading the "
              "model; useful work is 6·N + 12·layers·hidden·T FLOPs per token (recomputation not counted)"
              + (f", against the fp32 matmul rate measured in the same run ({'/'.join(map(str, rates))} GFLOP/s)"
                 if rates else "") + ". The naive loop is `model(input_ids=x, labels=x).loss.backward()` with torch's "
              "AdamW (full-vocabulary logits, no checkpointing); \"+ transformers' checkpointing\" adds "
              "`gradient_checkpointing_enable()`. A baseline that outgrows the memory available is stopped by a watchdog."]
    return lines


def train_memory_lines(tm: dict) -> list[str]:
    """Peak RSS of a training step with ctxext's allocator setting and with glibc's defaults, same run, by length."""
    threads = "/".join(str(t) for t in sorted({r["torch_threads"] for r in tm["runs"] if "torch_threads" in r}))
    lines = [f"Training memory by allocator ({tm['meta']['model']}, full fine-tuning, {threads} torch thread(s); "
             f"{_machine(tm['meta'].get('machine'))}; `benchmarks/train_memory.py`):", "",
             "| length | peak, ctxext (mmap threshold 1 MiB) | peak, glibc defaults | ratio | tokens/s ratio "
             "| ctxext's estimate (current code) |", "|---:|---:|---:|---:|---:|---:|"]
    for length in sorted({r["length"] for r in tm["runs"]}):
        rows = {r.get("variant"): r for r in tm["runs"] if r["length"] == length}
        ours, base = rows.get("tuned"), rows.get("glibc")
        cell = lambda r: "–" if r is None else r.get("error") or f"{r['peak_gib']:.2f} GiB"  # noqa: E731
        ratio = (ours or {}).get("vs_glibc_default")
        est = "–" if not ours or "error" in ours else f"{ours['estimate_gib']:.2f} GiB"
        lines.append(f"| {length:,} | {cell(ours)} | {cell(base)} | "
                     + (f"**{ratio['peak']:.2f}×** | {ratio['tokens_per_second']:.2f}× |" if ratio else "– | – |")
                     + f" {est} |")
    timed = sorted({(r.get("steps_run", 2) - 1, r["length"]) for r in tm["runs"] if "error" not in r})
    by_steps: dict[int, list[str]] = {}
    for n, length in timed:
        by_steps.setdefault(n, []).append(f"{length:,}")
    lines += ["", "Peak RSS of any step (the highest of the forward, backward and optimizer phases); tokens/s from the "
              "steps after the first (" + "; ".join(f"{n} timed step(s) at {', '.join(ls)}" for n, ls in by_steps.items())
              + ", so the speed ratio is a rough figure)."
              + (f" Both variants side by side, one core each (the same load on both): {', '.join(side)}."
                 if (side := [f"{r['length']:,}" for r in tm["runs"]
                              if (r.get("vs_glibc_default") or {}).get("side_by_side")]) else "")
              + (f" Measured before ctxext train also asked torch for transparent huge pages (THP_MEM_ALLOC_ENABLE, "
                 f"fewer page faults on the fresh mappings): {', '.join(old)}."
                 if (old := [f"{r['length']:,}" for r in tm["runs"] if r.get("variant") == "tuned"
                             and "error" not in r and not r.get("thp_mem_alloc")]) else "")
              + " glibc raises its mmap threshold to 32 MiB as large blocks are freed, so "
              "activations below that land on a heap it never returns; ctxext train fixes the threshold on the CPU "
              "(`CTXEXT_NO_MALLOC_TUNING=1` keeps glibc's defaults)."]
    return lines


GPU = "nvidia-h200"  # the lent device's results (benchmarks/gpu_run.sh): train_speed-<GPU>*.json, eval-<GPU>.json


def profile_figures(text: str) -> dict[str, float]:
    """From a benchmarks/profile_train_step.py table: steps, wall s/step, device s/step (the table's own kernel
    total, which counts each kernel once), kernel launches/step."""
    steps, wall = re.match(r"(\d+) optimizer steps profiled: wall ([\d.]+) s", text).groups()
    value, unit = re.search(r"Self CUDA time total: ([\d.]+)(ms|us|s)", text).groups()
    device = float(value) / {"s": 1, "ms": 1e3, "us": 1e6}[unit]
    launches = sum(int(m) for m in re.findall(r"^\s*(?:cudaLaunchKernel|cuLaunchKernelEx)\s.*?(\d+)\s*$",
                                               text.split("by device time:")[0], re.M))
    n = int(steps)
    return {"steps": n, "wall": float(wall), "device": device / n, "launches": launches / n}


def gpu_speed_lines() -> list[str]:
    """The GPU training table, the same lengths from the lease's shorter first run (how far 2 timed steps wander),
    and what the eval path took there."""
    tr = _load(RES / f"train_speed-{GPU}.json")
    if not tr:
        return []
    lines = train_speed_lines(tr)
    first = _load(RES / f"train_speed-{GPU}-3steps.json")
    if first:
        ours = {r["length"]: r for r in first["runs"] if not r["extra"] and "tokens_per_second" in r}
        lines += ["", f"The same lease's first run ({first['meta']['steps']} steps, so 2 timed; "
                  f"`train_speed-{GPU}-3steps.json`) gave ctxext " + ", ".join(
                      f"{r['tokens_per_second']:,.0f} tokens/s at {L:,} (steps {', '.join(f'{x:.2f}' for x in r['step_seconds'])} s)"
                      for L, r in sorted(ours.items())) + ": with 2 timed steps one slow step skews the figure, hence the "
                  f"{tr['meta']['steps']}-step run above."]
    profiles = sorted((int(f.stem.rsplit("-", 1)[1]), profile_figures(f.read_text()))
                      for f in (RES / "gpu_logs").glob("profile_train_step-*.txt"))
    if profiles:
        lines += ["", "Where a ctxext step's time goes (`benchmarks/profile_train_step.py`, torch.profiler over "
                  f"{profiles[0][1]['steps']:.0f} steps, `gpu_logs/profile_train_step-*.txt`): " + "; ".join(
                      f"at {L:,} the GPU is busy {p['device']:.3f} s of a {p['wall']:.3f} s step "
                      f"({p['device'] / p['wall']:.0%}, {p['launches']:,.0f} kernel launches a step)"
                      for L, p in profiles)
                  + ". The profiler slows the host, so its wall times are above the table's: a short row's step is "
                  "bound by launching kernels (checkpointed layers and LM-head chunks launch each again in the "
                  "backward), a long row's by the GPU, where ctxext's cost over the naive loop is the recomputation "
                  "that buys its memory (the naive loop with transformers' checkpointing runs at about the same speed)."]
    es = _load(RES / f"eval_speed-{GPU}.json")
    if es and "ppl" in es:
        o, n = es["ppl"]["ours"], es["ppl"]["naive"]
        lines += ["", f"Eval, `ppl` at {es['length']:,} tokens on the GPU (`benchmarks/eval_speed.py --device cuda`, fp32 "
                  f"weights, same run): ctxext {o['tokens_per_s']:,.0f} tokens/s, device peak "
                  f"{o['device_peak_mb'] / 1024:.2f} GiB; naive loop {n['tokens_per_s']:,.0f} tokens/s, "
                  f"{n['device_peak_mb'] / 1024:.2f} GiB; ratio **{o['tokens_per_s'] / n['tokens_per_s']:.2f}×** "
                  f"tokens/s, **{o['device_peak_mb'] / n['device_peak_mb']:.2f}×** memory."]
    ev = _load(RES / f"eval-{GPU}.json")
    if ev:
        cells = [t for t in ev["meta"]["timings"] if t["seconds"] > 0.1]  # a prefix scored inside a longer forward costs ~0
        lines += ["", "`ctxext eval --device cuda` on the same model (fp32 weights, the default dtype; "
                  f"`eval-{GPU}.json`): " + "; ".join(
                      f"{t['task']} at {t['length']:,} tokens {t['seconds']:.1f} s (estimate {t['estimated_seconds']:.1f} s)"
                      for t in sorted(cells, key=lambda t: (t["task"] != "ppl", t["length"])))
                  + ". Random weights: only the times mean anything."]
    return lines


def speed_section() -> str:
    lines = []
    ev, tr = _load(RES / "eval_speed.json"), _load(RES / "train_speed-cpu.json")
    full = speed_ratios(ev, tr)
    if ev:
        o, n = ev["ppl"]["ours"], ev["ppl"]["naive"]
        rate = ev["ppl"].get("fp32_matmul_gflops", ev["fp32_matmul_gflops"])  # the rate of the run that measured ppl
        lines += [f"Eval, `ppl` on {ev['model']} at {ev['length']:,} tokens ({_machine(ev.get('machine'))}; fp32 matmul "
                  f"measured {rate:.0f} GFLOP/s in the same run):", "",
                  "| | tokens/s | peak RSS | fraction of matmul rate |", "|---|---:|---:|---:|",
                  f"| ctxext (logits only where scored) | {o['tokens_per_s']:.1f} | {o['process_peak_mb'] / 1024:.2f} GB | "
                  f"{o['fraction_of_matmul_peak']:.2f} |",
                  f"| naive `model(ids, labels=ids).loss` | {n['tokens_per_s']:.1f} | {n['process_peak_mb'] / 1024:.2f} GB | "
                  f"{n['fraction_of_matmul_peak']:.2f} |",
                  f"| ratio | **{full['eval tokens/s'][1]:.2f}×** | **{full['eval peak RSS'][1]:.2f}×** | |"]
        pr = ev.get("prefix_reuse")
        if pr:
            load = pr.get("loadavg_1min")
            lines += ["", f"Passkey grid at {pr['length']:,} tokens, {len(pr['depths'])} depths × {pr['trials']} trials: "
                      f"shared-prefix reuse costs {pr['cost_ratio']:.2f}× the time of independent forwards "
                      f"({pr['token_ratio']:.2f}× the tokens, {pr['flop_ratio']:.2f}× the FLOPs; best of "
                      f"{len(pr['rounds']['reuse'])} alternating rounds, {pr.get('threads', '?')} threads"
                      + (f", 1-min load average {load[0]:.1f} → {load[1]:.1f} on {_cpus(ev)} cores" if load else "")
                      + f"), same verdicts: {pr['same_verdicts']}."]
            pairs = [r["seconds"] / i["seconds"] for r, i in zip(pr["rounds"]["reuse"], pr["rounds"]["independent"])]
            if len(pairs) > 1:  # the spread says how much the best-of figure owes to a quiet round
                lines[-1] += f" Round by round: {', '.join(f'{x:.2f}' for x in pairs)}."
    if tr:
        lines += [""] + train_speed_lines(tr)
    note = speed_ordering_note(full, speed_ratios(_load(RES / "eval_speed_quick.json"),
                                                  _load(RES / "train_speed-cpu-quick.json")))
    if note:
        lines += ["", note]
    tm = _load(RES / "train_memory-cpu.json")
    if tm:
        lines += [""] + train_memory_lines(tm)
    if gpu := gpu_speed_lines():
        lines += [""] + gpu
    return "\n".join(lines) or "(no speed results yet)"


# ---------------------------------------------------------------------------------------------- attention
def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def _selfextend_lines(pk: dict) -> list[str]:
    depths = [str(d) for d in pk["depths"]]
    ref = pk.get("reference_in_window")
    rows = ([(f"`{ref['spec']}` at {ref['length']:,} (in its window)", ref)] if ref else []) + \
        [(f"`{s}`", v) for s, v in pk["specs"].items()]
    lines = [f"Passkey on {pk['model']} at {pk['length']:,} tokens, {pk['trials_per_depth']} trials per depth "
             f"(`benchmarks/attention_methods.py passkey`; {_machine(pk.get('machine'))}):", "",
             "| spec | " + " | ".join(f"d={d}" for d in depths) + " | accuracy |",
             "|---|" + "---:|" * (len(depths) + 1)]
    conf = pk.get("confirmation")
    if conf:  # the best setting again, on trials the choice was not made on
        rows.insert(len(rows) - 1 if rows[-1][0] == "`default`" else len(rows),
                    (f"`{conf['spec']}`, fresh trials (seed {conf['seed']})", conf))
    for label, v in rows:
        by = v["accuracy_by_depth"]
        lines.append(f"| {label} | " + " | ".join(_pct(by.get(d)) for d in depths)
                     + f" | **{v['correct']}/{v['trials']}** |")
    if conf:
        lines += ["", f"The best setting was chosen on the seed-0 trials above; the fresh-trials row scores it on "
                  f"other pass keys (seed {conf['seed']})."]
    return lines


def _stream_lines(st: dict) -> list[str]:
    lines = [f"Streaming perplexity on {st['model']} over {st['book']}, {st['segment_tokens']:,}-token segments "
             f"(`benchmarks/attention_methods.py stream`; {_machine(st.get('machine'))}):", "",
             "| run | tokens scored | ppl | worst segment / in-window | cache tokens | peak RSS |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in st["runs"].items():
        lines.append(f"| `{name}` | {r['tokens_scored']:,.0f} | {_fmt(r['ppl_overall'])} | "
                     f"{r['max_segment_over_in_window']:.2f}× | {r['max_cache_tokens']:,.0f} | "
                     f"{r['peak_rss_mb'] / 1024:.2f} GB |")
    return lines


def _alibi_lines(al: dict) -> list[str]:
    lines = [f"ALiBi family on the {al['model']} fixture at {al['length'] // al['window']}× its {al['window']}-token "
             f"window (held-out {al['book']}; `benchmarks/attention_methods.py alibi`; {_machine(al.get('machine'))}):",
             "", f"| spec | slopes | ppl in window ({al['window']}) | ppl last quarter | passkey in window | "
             f"passkey at {al['length']:,} |", "|---|---|---:|---:|---:|---:|"]
    for s, v in al["specs"].items():
        slopes = ", ".join(f"{x:.3g}" for x in al["slopes"][s])
        lines.append(f"| `{s}` | {slopes} | {_fmt(v['ppl_in_window'])} | {_fmt(v['ppl_last_quarter'])} | "
                     f"{_pct(v['passkey_in_window'])} | "
                     f"{_pct(v['passkey'])} ({v['passkey_trials']} trials) |")
    if (ref := al.get("ppl_last_quarter_window_context")) is not None:
        lines.append(f"| `default`, context cut to the {al['window']}-token window | – | – | {_fmt(ref)} | – | – |")
        lines += ["", "The last row scores the same last-quarter tokens with each seeing only the trained window before "
                  "it: what reading past the window adds (a spec below that figure uses the far context; one above it "
                  "would do better not reading it)."]
    return lines


def ranked(values: dict[str, float | None], higher_better: bool) -> str:
    """'a > b = c': best first, equal values tied (a quick run must reproduce ties as well as order)."""
    known = sorted(((v, k) for k, v in values.items() if v is not None), key=lambda x: -x[0] if higher_better else x[0])
    out = ""
    for i, (v, k) in enumerate(known):
        out += (("" if i == 0 else " = " if v == known[i - 1][0] else " > " if higher_better else " < ")
                + f"`{k.split(' @ ')[0]}`")
    return out


def _stream_worst(st: dict) -> dict[str, float]:
    """Worst segment / in-window per spec at the run's longest stream."""
    longest = max(r["length"] for r in st["runs"].values())
    return {r["spec"]: r["max_segment_over_in_window"] for r in st["runs"].values() if r["length"] == longest}


def _quick_orders(name: str, full: dict, quick: dict) -> list[tuple[str, str, str]]:
    """(what, quick order, full order over the quick run's specs) for one attention_methods part."""
    if name == "passkey":
        specs = list(quick["specs"])
        return [(f"passkey at {quick['length']:,}",
                 *(ranked({s: d["specs"][s]["accuracy"] for s in specs if s in d["specs"]}, True)
                   for d in (quick, full)))]
    if name == "stream":
        q, f = _stream_worst(quick), _stream_worst(full)
        return [("streaming worst segment / in-window", ranked(q, False), ranked({s: f[s] for s in q if s in f}, False))]
    specs = [s for s in quick["specs"] if s in full["specs"]]
    x = f"ALiBi {quick['length'] // quick['window']}×"
    return [(f"{x} last-quarter ppl", *(ranked({s: d["specs"][s]["ppl_last_quarter"] for s in specs}, False)
                                         for d in (quick, full))),
            (f"{x} passkey", *(ranked({s: d["specs"][s]["passkey"] for s in specs}, True) for d in (quick, full)))]


def order_note(intro: str, rows: list[tuple[str, str, str]], ref: str, noise: str = "") -> str:
    """One sentence: each (what, quick order, full order) row, whether the two agree, and what the full run itself
    cannot tell apart (noise)."""
    cells = "; ".join(f"{w}: {q}" + (f" ({ref}: the same)" if q == f else f" ({ref}: {f})") for w, q, f in rows)
    same = "yes" if all(q == f for _, q, f in rows) else "**no**"
    return f"{intro} {cells}. Same order: {same}" + (f" ({noise})." if noise else ".")


def attention_quick_note() -> str:
    """Does each `attention_methods.py <part> --quick` order the methods as its full run does?"""
    rows = []
    for qf in sorted(RES.glob("attention_methods_*_quick.json")):
        full = _load(qf.with_name(qf.name.replace("_quick", "")))
        if full:
            rows += _quick_orders(qf.stem.split("_")[2], full, _load(qf))
    if not rows:
        return ""
    return order_note("`--quick` (`attention_methods.py passkey|stream|alibi --quick`: separate, smaller runs) against "
                      "the full runs above:", rows, "full")


def attention_section() -> str:
    alibi = sorted((d for f in RES.glob("attention_methods_alibi*.json") if not f.stem.endswith("_quick")
                    and (d := _load(f))),
                   key=lambda d: d["length"] / d["window"])  # 4x (the acceptance's) first, then longer reaches
    parts = [fn(d) for fn, d in ((_selfextend_lines, _load(RES / "attention_methods_passkey.json")),
                                  (_stream_lines, _load(RES / "attention_methods_stream.json")),
                                  *((_alibi_lines, d) for d in alibi)) if d]
    if note := attention_quick_note():
        parts.append([note])
    return "\n\n".join("\n".join(p) for p in parts) or "(no attention-method results yet)"


# -------------------------------------------------------------------------------------------------- train
def _train_data(meta: dict) -> str:
    """What a train_tiny run trained on, from its recorded arguments (and the mix's share of the data, when the
    run recorded it: the books are cycled beside the mix, so its share grows with steps x batch tokens)."""
    args, mix = meta.get("args", {}), meta.get("pretrain_mix")
    data = "books"
    if args.get("pretrain_mix"):
        share = f"{mix['share_of_data']:.0%} of the data" if mix else f"{args['pretrain_mix']:g} x tokens trained"
        data += f" + passkey docs ≥ {args.get('mix_min_len') or 48} tok ({share})"
    return f"{data}; lr {args.get('lr', 1e-3):g}, {args.get('batch_tokens', 4096):,} tok/step"


def train_section() -> str:
    lines = []
    for path in sorted(RES.glob("train_tiny*/summary.json")):
        if path.parent.name.endswith("_quick"):  # read by the ordering note below
            continue
        res = _load(path)
        runs = res["runs"]
        if not lines:
            first = next(iter(runs.values()))
            lines += [f"`ctxext train` on the {res['meta']['model']} fixture, 256 → {res['meta']['target']:,} tokens, "
                      f"{first['steps']} steps per run ({_machine(res['meta'].get('machine'))}; in-window perplexity "
                      f"{first['in_window_ppl']:.2f}). Bars: last-quarter ppl within 1.10× of in-window, passkey ≥ 90 %.",
                      "", "| results | data | spec | ppl last quarter, before → after | / in-window | passkey at "
                      "1,024, before → after |", "|---|---|---|---|---:|---|"]
        for name, r in runs.items():
            b, a = r["before"], r["after"]
            lines.append(f"| `{path.parent.name}` | {_train_data(res['meta'])} | `{r['spec']}` | "
                         f"{b['ppl_last_quarter']:.2f} → {a['ppl_last_quarter']:.2f} | "
                         f"{r['last_quarter_vs_in_window']:.3f} | {_pct(b['passkey'])} → **{_pct(a['passkey'])}** |")
    full, quick = _load(RES / "train_tiny" / "summary.json"), _load(RES / "train_tiny_quick" / "summary.json")
    if lines and full and quick:
        lines += ["", train_quick_note(full, quick)]
    return "\n".join(lines) or "(no training results yet)"


def train_quick_note(full: dict, quick: dict) -> str:
    """Does `train_tiny.py --quick` order the methods after training as the full `train_tiny` run does?"""
    rows, close = [], []
    specs = {x["spec"] for x in quick["runs"].values()}
    # (what, key, higher is better, how close two full-run figures are to be called within noise, its unit)
    for what, key, higher, tol, unit in (("last-quarter ppl", "ppl_last_quarter", False, 0.01, "relative"),
                                         ("passkey", "passkey", True, 0.05, "points")):
        q = ranked({r["spec"]: r["after"][key] for r in quick["runs"].values()}, higher)
        vals = {r["spec"]: r["after"][key] for r in full["runs"].values() if r["spec"] in specs}
        rows.append((what, q, ranked(vals, higher)))
        pairs = sorted(vals.items(), key=lambda kv: kv[1])
        for (s1, v1), (s2, v2) in zip(pairs, pairs[1:]):
            gap = (v2 - v1) / v1 if unit == "relative" else v2 - v1
            if gap < tol:
                close.append(f"`{s1}` and `{s2}` {what} {100 * gap:.1f}{' %' if unit == 'relative' else ' points'} apart")
    a = quick["meta"]["args"]
    note = order_note(f"`--quick` (`train_tiny.py --quick`: {a['steps']} steps, {a['windows']} held-out windows, "
                      f"{a['trials']} passkey trials per depth) orders the methods after training by", rows,
                      "`train_tiny`", f"within noise in `train_tiny` itself: {'; '.join(close)}" if close else "")
    return note + (" " + at_step if (at_step := _full_at_quick_steps(full, quick, rows)) else "")


def _full_at_quick_steps(full: dict, quick: dict, rows: list[tuple[str, str, str]]) -> str:
    """The full run's own evaluation at the quick run's step count (its curve), ordered like the quick run: a quick
    run trains fewer steps, so methods whose curves cross later can be ordered differently at the end only."""
    steps = quick["meta"]["args"]["steps"]
    specs = {x["spec"] for x in quick["runs"].values()}
    at = {r["spec"]: p for r in full["runs"].values() if r["spec"] in specs
          for p in r.get("curve", []) if p["step"] == steps}
    if steps >= full["meta"]["args"]["steps"] or set(at) != specs:
        return ""
    orders = [ranked({s: p["ppl_last_quarter"] for s, p in at.items()}, False),
              ranked({s: p["passkey"] for s, p in at.items()}, True)]
    same = all(o == q for o, (_, q, _) in zip(orders, rows))
    return (f"At step {steps}, the full run's own evaluation orders them by last-quarter ppl {orders[0]} and by "
            f"passkey {orders[1]}: {'the' if same else 'not the'} quick run's order.")


def search_lines(name: str, res: dict) -> list[str]:
    """Rows of one search: YaRN at the same factor and the searched spec on the held-out book."""
    cfg, ho = res["search"]["config"], res.get("heldout")
    if not ho:
        return []
    rows = ho["rows"]
    window = next(int(k.split("@")[1]) for k in rows["default"] if k.startswith("ppl@") and
                  int(k.split("@")[1]) < cfg["target"])
    t = cfg["target"]
    yarn = next(k for k in rows if k.startswith("yarn"))
    head = (f"| `{name}` | {cfg['model']}, {window:,} → {t:,} | {cfg['fitness']} | {res['search']['spent']:.1f} / "
            f"{cfg['budget']:g} | {ho['ppl_documents']} / {ho['needle_trials']} |")
    def cell(key: str, col: str) -> str:  # the lower of the two in bold
        v = rows[key][col]
        return f"**{v:.2f}**" if v < rows["searched" if key == yarn else yarn][col] else f"{v:.2f}"

    # attention factor m: YaRN's 0.1·ln(s) + 1; the searched one is capped by the in-window guard
    m = {yarn: 0.1 * math.log(t / window) + 1, "searched": res["search"]["best"]["attention_factor"]}
    out = []
    for label, key in ((f"`{yarn}`", yarn), ("searched", "searched")):
        vs = rows[key][f"ppl@{window}"] / rows["default"][f"ppl@{window}"] - 1
        out.append(f"{head if not out else '| | | | | |'} {label} | {m[key]:.3f} | {vs:+.1%} | "
                   f"{cell(key, f'ppl@{t}')} | {cell(key, f'needle-ppl@{t}')} |")
    return out


def search_section() -> str:
    lines = []
    for path in sorted(RES.glob("search_*/summary.json")):
        if path.parent.name.endswith("_quick"):  # read by the ordering note below
            continue
        res = _load(path)
        if not lines:
            lines += ["`ctxext search` (no fine-tuning) against YaRN at the same factor, both measured afterwards on "
                      "pg84, a book the search did not see. Budget in full-length-evaluation equivalents; held-out "
                      "samples = ppl documents / needle trials (few on SmolLM2: a 16k forward takes minutes on the "
                      "CPU). m = attention factor (YaRN: 0.1·ln s + 1; searched: at most what keeps ppl inside the trained window "
                      "within +1 % on the search data, the search's guard). In-window = ppl at the trained length vs "
                      "default RoPE on the held-out book.", "",
                      "| results | model, window → target | fitness | budget spent | held-out samples | spec | m | "
                      "in-window | ppl @ target | needle-ppl @ target |", "|---|---|---|---|---|---|---:|---:|---:|---:|"]
        lines += search_lines(path.parent.name, res)
    full, quick = _load(RES / "search_tiny_rope" / "summary.json"), _load(RES / "search_tiny_rope_quick" / "summary.json")
    if lines and full and quick:
        lines += ["", search_quick_note(full, quick)]
    return "\n".join(lines) or "(no search results yet)"


def search_quick_note(full: dict, quick: dict) -> str:
    """Does `search_tiny.py --quick` order YaRN and the searched factors on the held-out book as the full search?"""
    t = quick["search"]["config"]["target"]
    rows = [(f"{col} @ {t:,}", *(ranked({k: v[f"{col}@{t}"] for k, v in d["heldout"]["rows"].items()}, False)
                                  for d in (quick, full)))
            for col in ("ppl", "needle-ppl")]
    c, h = quick["search"]["config"], quick["heldout"]
    return order_note(f"`--quick` (`search_tiny.py --quick`: budget {c['budget']:g}, {h['ppl_documents']} held-out "
                      f"documents / {h['needle_trials']} needle trials) orders them", rows, "`search_tiny_rope`")


# ------------------------------------------------------------------------------------------------ registry
KINDS = ("RoPE frequencies", "attention positions (training-free)", "ALiBi slopes")


def registry_rows(registry: dict) -> list[tuple[str, str, str, str]]:
    """(name, kind, keys, summary) of every scaling method, grouped by kind in registry order, default first."""
    from ctxext.scaling.attention import model_rope

    def kind(m: Any) -> str:
        if "rope" not in m.encodings:
            return KINDS[2]
        # self-extend and streaming keep the model's frequencies and move positions in the attention layers
        return KINDS[1] if m.rope is model_rope else KINDS[0]

    rows = [(m.name, kind(m), ", ".join(m.keys), m.summary) for m in registry.values()]
    return sorted(rows, key=lambda r: (r[0] != "default", KINDS.index(r[1])))


def registry_section() -> str:
    from ctxext.scaling import REGISTRY

    lines = ["| method | kind | keys | what it does |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {k} | {f'`{keys}`' if keys else ''} | {summ} |" for n, k, keys, summ in registry_rows(REGISTRY)]
    return "\n".join(lines)


SECTIONS = {"methods": methods_section, "planner": planner_section, "speed": speed_section,
            "attention": attention_section, "train": train_section, "search": search_section,
            "registry": registry_section}


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
    if len(runs := method_runs()) > 1:
        print(f"wrote {across_factors_plot({f: res for f, (_, res) in runs.items()}).relative_to(ROOT)}")
    print("README.md tables regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
