"""The method section: benchmarks/methods.py's results (methods/, methods_x<F>/, their _quick runs and the pooled
needle seeds), the across-factors table and plot, and the planner's picks looked up in them."""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path
from typing import Any

from . import common
from .common import ROOT, fmt_num, load_json, rerun_note, run_machines


def model_label(res: dict) -> tuple[str, str]:
    """(the model's name, how its weights were stored and run) from the path a run records in
    config.model_info.path: a GGUF file such as SmolLM2-135M-Instruct.Q4_1.gguf gives ("SmolLM2-135M-Instruct",
    "Q4_1 GGUF: 4-bit weights dequantized to fp32"): ctxext converts a GGUF once into fp32 safetensors
    (ctxext.models.names.convert_gguf). A run that did not record a path: ("the model", "")."""
    path = res["meta"]["config"].get("model_info", {}).get("path")
    if not path:
        return "the model", ""
    name = Path(path).name
    m = re.fullmatch(r"(.+?)\.((?:I?Q)(\d+)\w*)\.gguf", name, re.I)
    if m:
        return m[1], f"{m[2]} GGUF: {m[3]}-bit weights dequantized to fp32"
    if name.lower().endswith(".gguf"):
        return name[:-5], "GGUF, converted to fp32"
    return name, ""


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
    qm, fm = ppl_means(quick)[3], ppl_means(full)[3]
    return (f"`--quick` (a separate run: the same book at {_length(quick):,} tokens, {len(q)} methods) orders them by "
            f"last-quarter perplexity as {' < '.join(q)}; the full run at {_length(full):,}: {' < '.join(f)}; "
            f"same order: {same}." + rerun_note([(qm[s][1], fm[s][1]) for s in q if s in fm]))


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
    """'yes' when `ctxext export` can write the spec as a stock rope config for the run's model (qualified for
    dynamic-ntk, whose stock form differs past the window), 'no' when it refuses (self-extend, streaming,
    dynamic-yarn), '–' when the results do not record the model's RoPE shape."""
    from ctxext.errors import CtxextError
    from ctxext.scaling import hf_rope_fields, parse_spec

    shape = _rope_shape(res)
    if shape is None:
        return "–"
    from ctxext.models.attention import PLANS, CausalLengthPlan

    try:
        parsed = parse_spec(str(ROOT / spec) if spec.endswith(".json") else spec)
        hf_rope_fields(parsed, shape)
    except CtxextError:
        return "no"
    if parsed.entry.length_dependent and PLANS.get(parsed.method) is CausalLengthPlan:
        # ctxext rescales per query position; stock `dynamic` takes one base per forward: the export loads, but
        # past the window it is not what this table measured (ctxext export reports the difference)
        return "yes, not these figures past the window"
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


ACROSS_PNG = common.RES / "methods_across_factors.png"
TOP = 12.0  # the plot's ceiling: the methods a user would choose between lie below it


def across_factors_plot(runs: dict[int, dict], path: Path = ACROSS_PNG) -> Path:
    """The across-factors table as lines: far-end perplexity / the unscaled model's in-window one, per method,
    against the extension factor (both axes logarithmic; methods that remap attention dashed)."""
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


def methods_table(res: dict, source: str, expected: list[str] | None = None, niah_heatmap: bool = True) -> str:
    """The method table; `expected`: the specs the benchmark runs at this factor, so that the ones not measured
    yet are named under it; `niah_heatmap`: whether the needle heatmap follows (not when it is stale)."""
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
        row = [_label(s), fmt_num(mean_in)] + [fmt_num(val.get(b)) for b in late]
        row += [fmt_num(mean_lq / mean_in, 2) + "×" if mean_in and mean_lq else "–"]
        row += [f"{pk[d]:.0%}" if d in pk else "–" for d in depths]
        rows.append(row)
    dtype = res["meta"]["config"].get("dtype", "float32")
    name, how = model_label(res)
    lines = [f"{name} ({how + '; ' if how else ''}trained {trained:,} tokens) at {length:,} tokens, held-out book "
             f"(`{source}`; {run_machines(res['meta'])}" + (f"; {dtype}" if dtype != "float32" else "")
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
        n_specs = len({r["scaling"] for r in nh})
        lines += ["", f"needle in a haystack{' (heatmap below)' if niah_heatmap else ''}: {n_specs} spec{'s' if n_specs > 1 else ''} at "
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
    """What each task and length took per cell on the run's machine(s) (meta.timings), beside the plan's estimate."""
    from ctxext.evals.cost import fmt_seconds
    from ctxext.evals.results import timing_rows

    rows = timing_rows(timings)
    if not rows:
        return ""
    parts = [f"{task} at {L:,}: {fmt_seconds(med)} per cell (median of {n} timed over {n_specs} spec(s), "
             f"{fmt_seconds(lo)}–{fmt_seconds(hi)}; estimated {fmt_seconds(est)})"
             for task, L, n_specs, n, med, lo, hi, est in rows]
    return "time on the machine(s) its table names: " + "; ".join(parts) + " (cells run before timings were recorded are not counted)."


def expected_specs(factor: int) -> list[str]:
    """What `benchmarks/methods.py --factor F` measures: its method set and streaming."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import methods

    return methods.specs_for(factor) + [methods.STREAMING]


def pooled_niah() -> dict | None:
    """The needle cells of methods/ and of every methods_niah_seed*/ run pooled per cell now, as
    benchmarks/methods.py's merge_niah pools them (so cells a run added show even before methods_niah/ is rebuilt);
    None when fewer than two runs hold needle cells. `heatmap_current`: methods_niah/results.json holds these very
    cells, so its heatmap shows them."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import methods

    found = methods.niah_sets(methods.niah_sources(common.RES))
    if found is None:
        return None
    records = methods.pool_cells(found[2])
    drawn = load_json(common.RES / "methods_niah" / "results.json")
    return {"records": records, "heatmap_current": bool(drawn) and drawn["records"] == records}


def _methods_body(name: str, res: dict, pooled: dict | None = None, factor: int | None = None) -> str:
    """One method table with its plots and the --quick ordering note; pooled holds the needle cells of every seed
    (pooled_niah); for a larger factor's table, the specs not measured yet are named."""
    if pooled:  # the needle cells with the trials of every seed (benchmarks/methods.py --seed)
        res = {**res, "records": [r for r in res["records"] if r["task"] != "niah"] + pooled["records"]}
    body = methods_table(res, f"benchmarks/results/{name}", expected_specs(factor) if factor else None,
                         niah_heatmap=not pooled or pooled["heatmap_current"])
    for png, alt in (("ppl_by_position.png", "ppl by position"), ("passkey_heatmap.png", "passkey by depth"),
                     ("niah_heatmap.png", "needle in a haystack, lengths x depths")):
        where = "methods_niah" if pooled and png.startswith("niah") else name
        if pooled and png.startswith("niah") and not pooled["heatmap_current"]:
            body += ("\n\n(needle heatmap not shown: `benchmarks/results/methods_niah/` was drawn from other cells "
                     "than the table's; `python benchmarks/methods.py --tasks niah` pools and draws it again)")
        elif (common.RES / where / png).is_file():
            body += f"\n\n![{alt}](benchmarks/results/{where}/{png})"
    quick = load_json(common.RES / f"{name}_quick" / "results.json")
    if quick:
        body += "\n\n" + ordering_note(res, quick)
    return body


def method_runs() -> dict[int, tuple[str, dict]]:
    """{factor: (results folder, results)}: 2x from methods/ (else the quick run's, else the first 16k run's), then
    each larger factor that ran (benchmarks/methods.py --factor F writes methods_xF/)."""
    runs = {}
    for name in ("methods", "methods_quick", "smollm2_16k"):
        if res := load_json(common.RES / name / "results.json"):
            runs[2] = (name, res)
            break
    scaled = sorted((int(m[1]), d) for d in common.RES.glob("methods_x*") if (m := re.fullmatch(r"methods_x(\d+)", d.name)))
    for factor, d in scaled:
        if res := load_json(d / "results.json"):
            runs[factor] = (d.name, res)
    return runs


def methods_section() -> str:
    """The 2x table (else the quick run's, else the first 16k run's), then one table per larger factor that ran
    (benchmarks/methods.py --factor F writes methods_xF/)."""
    parts, runs = [], method_runs()
    for factor, (name, res) in runs.items():
        if factor == 2:
            pooled = pooled_niah() if name == "methods" else None
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


def results_model_section() -> str:
    """One sentence for the results' intro: which weights `smollm2-135m` is, from the path every method run records
    (config.model_info.path)."""
    paths = list(dict.fromkeys(p for _, res in method_runs().values()
                               if (p := res["meta"]["config"].get("model_info", {}).get("path"))))
    if not paths:
        return "(no method results yet: run `python benchmarks/methods.py`)"
    said, quantized = [], False
    for path in paths:
        name, how = model_label({"meta": {"config": {"model_info": {"path": path}}}})
        quantized |= "dequantized" in how
        said.append(f"{name} as the installed package `{Path(path).parent.name}` holds it, `{Path(path).name}`"
                    + (f" ({how}, once, into a cached safetensors folder)" if how else ""))
    from .speed import gpu_devices  # GPU speed runs use a random model of the same shape (gpu_carry.py init)

    speed = [load_json(common.RES / f"train_speed-{gpu}.json") for gpu in gpu_devices()]
    random = any(s and "random" in Path(s["meta"]["model"]).name for s in speed)
    return ("`smollm2-135m`, the SmolLM2 of every table below"
            + (" (the random-weight GPU speed rows aside)" if random else "") + ", is " + common.and_list(said)
            + (": the scores are the quantized model's, not those of the original unquantized weights." if quantized
               else "."))


def _short(spec: str) -> str:
    return "the searched longrope" if spec.endswith(".json") else f"`{spec}`"


def _specs_text(specs: list[str]) -> str:
    return common.and_list([_short(s) for s in specs])


def _depths_text(depths: tuple[float, ...]) -> str:
    if not depths:
        return "none yet"
    return common.and_list([f"{d:g}" for d in depths]) + (" only" if len(depths) == 1 else "")


def _range(lo: float, hi: float) -> str:
    """'3.2–23.5 min' (the unit once when both share it)."""
    from ctxext.evals.cost import fmt_seconds

    a, b = fmt_seconds(lo), fmt_seconds(hi)
    return f"{a.rsplit(' ', 1)[0]}–{b}" if a.rsplit(" ", 1)[1] == b.rsplit(" ", 1)[1] else f"{a}–{b}"


def _spread(cells: list[dict], total: int) -> str:
    """Per-cell wall time of some timed cells (meta.timings entries): the range, how many of the `total` cells were
    timed, and which spec is the slow end, beside the slowest cell of every other spec."""
    from ctxext.evals.cost import fmt_seconds

    if not cells:
        return ""
    secs = sorted(c["seconds"] for c in cells)
    out = (f"{_range(secs[0], secs[-1])} a cell" if len(secs) > 1 else f"{fmt_seconds(secs[0])} a cell")
    if len(cells) < total:
        out += f" ({len(cells)} of {total} timed)"
    slow = max(cells, key=lambda c: c["seconds"])
    others = [c["seconds"] for c in cells if c["scaling"] != slow["scaling"]]
    if others:
        at = f" (d={slow['depth']:g})" if slow.get("depth") is not None else ""
        every = "every other timed spec" if len(cells) < total else "every other spec"  # not the untimed ones
        out += (f", the slow end {_short(slow['scaling'])} at {fmt_seconds(slow['seconds'])}{at}, {every} at "
                f"most {fmt_seconds(max(others))}")
    return out


def _trials(n: list[int]) -> str:
    return f"{'/'.join(map(str, n))} trial{'' if n == [1] else 's'} per cell"


def _grid() -> Any:
    """benchmarks/methods.py, for its method grid (NIAH, picked, specs_for, STREAMING)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import methods

    return methods


def _factor_scope(factor: int, name: str, res: dict) -> tuple[str, list[str]]:
    """What one larger factor's run holds (a few sentences: per task, which specs and depths, what a cell took; the
    needle heatmap's specs, lengths and time), and what of the benchmark's grid it lacks."""
    from ctxext.evals.cost import fmt_seconds

    grid, recs, timings = _grid(), res["records"], res["meta"].get("timings", [])
    length = factor * res["meta"]["config"]["model_info"]["trained_len"]
    expected = expected_specs(factor)
    streaming = lambda s: _method(s) == "streaming"  # noqa: E731  (no passkey: it cannot retrieve past its window)
    specs = expected + [s for s in dict.fromkeys(r["scaling"] for r in recs) if s not in expected]
    family = list(dict.fromkeys(_method(s) for s in specs))
    specs.sort(key=lambda s: family.index(_method(s)))  # the table's order: a spec added later beside its method
    k = f"{length // 1024}k"
    out, missing = [], []
    # perplexity (streaming's is its stream)
    ppl = [s for s in specs if any(r["scaling"] == s and r["task"] in ("ppl", "stream-ppl") and r["length"] == length
                                   for r in recs)]
    text = (f"Perplexity: every spec ({len(ppl)}{', streaming included' if any(map(streaming, ppl)) else ''})"
            if len(ppl) == len(specs) else f"Perplexity: {len(ppl)} of {len(specs)} specs")
    cells = [t for t in timings if t["task"] in ("ppl", "stream-ppl") and t["length"] == length]
    out.append(text + (f", {spread}" if (spread := _spread(cells, len(ppl))) else "") + ".")
    if absent := [s for s in expected if s not in ppl]:
        missing.append(f"perplexity for {_specs_text(absent)}")
    # passkey: the depths each spec that can retrieve has, grouped
    pk = [r for r in recs if r["task"] == "passkey" and r["metric"] == "accuracy" and r["length"] == length
          and r["depth"] is not None]
    if pk:
        grid_depths = tuple(sorted({r["depth"] for r in pk}))
        retrieving = [s for s in specs if not streaming(s)]
        have = {s: tuple(sorted({r["depth"] for r in pk if r["scaling"] == s})) for s in retrieving}
        groups: dict[tuple, list[str]] = {}
        for s in retrieving:
            groups.setdefault(have[s], []).append(s)
        most = max(groups, key=lambda d: (len(groups[d]), len(d)))
        if not most:  # most specs have no passkey yet: name those that have, by depths
            text = "Passkey: " + "; ".join(
                f"depth{'s' if len(d) > 1 else ''} {_depths_text(d).removesuffix(' only')} for {_specs_text(ss)}"
                for d, ss in groups.items() if d) + f"; none yet for the other {len(groups[most])} specs that can retrieve"
        else:
            text = (f"Passkey: depth{'s' if len(most) > 1 else ''} {_depths_text(most).removesuffix(' only')} for "
                    f"every spec that can retrieve")
            if len(groups) == 1:
                text += f" ({len(retrieving)}; streaming cannot)"
            else:
                text += " except " + "; ".join(f"{_specs_text(ss)} ({_depths_text(d)})" for d, ss in groups.items()
                                               if d != most)
        text += ", " + _trials(sorted({r["n"] for r in pk}))
        cells = [t for t in timings if t["task"] == "passkey" and t["length"] == length]
        out.append(text + (f", {spread}" if (spread := _spread(cells, len(pk))) else "") + ".")
        lacking: dict[tuple, list[str]] = {}
        for s in expected:
            if not streaming(s) and (gap := tuple(d for d in grid_depths if d not in have[s])):
                lacking.setdefault(gap, []).append(s)
        missing += [f"passkey at {_depths_text(gap).removesuffix(' only')} for {_specs_text(ss)}"
                    for gap, ss in lacking.items()]
    # the needle heatmap: which specs, over which lengths, and what it took
    nh = [r for r in recs if r["task"] == "niah" and r["metric"] == "accuracy"]
    heat = [s for s in specs if any(r["scaling"] == s for r in nh)]
    if nh:
        lengths = sorted({r["length"] for r in nh})
        text = (f"Needle heatmap: {lengths[0]:,}–{lengths[-1]:,} tokens ({len(lengths)} lengths × "
                f"{len({r['depth'] for r in nh})} depths, {_trials(sorted({r['n'] for r in nh}))}) for "
                + _specs_text(heat) + (" only" if len(heat) == 1 else ""))
        if beside := [s for s in specs if s not in heat and _method(s) in {_method(h) for h in heat}]:
            text += f", not {_specs_text(beside)}"  # the same method at another setting has none
        depths = {r["depth"] for r in nh}
        for s in heat:  # a spec whose run stopped part-way: the lengths it lacks a cell at
            have = {(r["length"], r["depth"]) for r in nh if r["scaling"] == s}
            if gap := [L for L in lengths if any((L, d) not in have for d in depths)]:
                at = common.and_list([f"{L:,}" for L in gap])
                text += f" ({_specs_text([s])} not yet at {at})"
                missing.append(f"the needle heatmap at {at} tokens for {_specs_text([s])}")
        cells = [t for t in timings if t["task"] == "niah" and t["length"] in lengths]
        if cells:
            text += (f"; {fmt_seconds(sum(c['seconds'] for c in cells))} in all"
                     + (f" ({len(cells)} of its {len(nh)} cells timed)" if len(cells) < len(nh) else ""))
        out.append(text + ".")
    if absent := [s for s in grid.picked(expected, grid.NIAH) if s not in heat]:
        missing.append(f"the needle heatmap for {_specs_text(absent)}")
    total = sum(t["seconds"] for t in timings)
    head = (f"**At {k}** (`{name}`, on the machine(s) its table names"
            + (f"; {fmt_seconds(total)} of timed cells in all" if total else "") + ").")
    return " ".join([head, *out]), [f"at {k} " + m for m in missing]


def _search_for(length: int) -> tuple[str, dict] | None:
    """The search run at `length` (search_*/summary.json whose target it is), if any."""
    return next(((p.parent.name, r) for p, r in common.full_runs("search_*/summary.json")
                 if r and r["search"]["config"]["target"] == length), None)


def scope_section() -> str:
    """The 4x/8x runs in a paragraph: which tasks and depths each has for which specs, what a cell took, the needle
    heatmap's specs, lengths and time, the search of each length (or that there is none), and what of the benchmark's
    grid is left for a GPU. Rebuilt from the results, so it follows the cells as they are added."""
    from ctxext.evals.cost import fmt_seconds

    runs = {f: v for f, v in method_runs().items() if f > 2}
    if not runs:
        return "(no 4× or 8× method results yet: run `python benchmarks/methods.py --factor 4`)"
    trained = {f: res["meta"]["config"]["model_info"]["trained_len"] for f, (_, res) in runs.items()}
    lens = {f: f * trained[f] for f in runs}
    searches = []
    for f, (_, res) in runs.items():
        L, k = lens[f], f"{lens[f] // 1024}k"
        found = _search_for(L)
        if found:
            name, r = found
            s = r["search"]
            origin = s["best"]["origin"]
            origin = f"the {origin.split(':', 1)[1]} seed," if origin.startswith("seed:") else f"`{origin}`,"
            cap = (s.get("guard") or {}).get("cap")
            m = s["best"]["attention_factor"]
            gens = s["generations"]
            searches.append(
                f"at {k}, `{name}` (`search_smollm2.py --target {L}`): {s['evaluations']} evaluations in {gens} "
                f"generation{'' if gens == 1 else 's'}"
                + (f" ({fmt_seconds(s['evaluation_seconds'])} of evaluation)" if s.get("evaluation_seconds") else "")
                + f"; its best is {origin}"
                + (f" at the guard's attention factor {m:.3f}" if cap is not None and abs(cap - m) < 5e-4
                   else f" at attention factor {m:.3f}"))
        else:
            ppl = sorted(t["seconds"] for t in res["meta"].get("timings", []) if t["task"] == "ppl"
                         and t["length"] == L)
            searches.append(f"none at {k}" + (f", where one perplexity evaluation of the method table took "
                                              f"{fmt_seconds(statistics.median(ppl))} (median of {len(ppl)})" if ppl else ""))
    factors = sorted(runs)
    intro = (f"`benchmarks/methods.py --factor F` runs the 2× table's methods at F× the trained length: "
             + common.and_list([f"{lens[f]:,} tokens for {f}×" for f in factors])
             + " (each method's factor scaled, abf at the planner's critical base for that length, self-extend groups "
             "that reach it, and the factors of a search at that length where one ran); their tables follow the 2× one. "
             "Searches: " + "; ".join(searches) + ".")
    sentences, missing = [intro], []
    for f in factors:
        text, gaps = _factor_scope(f, *runs[f])
        sentences.append(text)
        missing += gaps
    if any(r["n"] == 1 for _, res in runs.values() for r in res["records"] if r["task"] in ("passkey", "niah")):
        missing.insert(0, "more than one trial per passkey and needle cell")
    missing += [f"a search at {lens[f] // 1024}k" for f in factors if not _search_for(lens[f])]
    if missing:
        sentences.append("Not measured yet, for a GPU: " + "; ".join(missing) + ".")
    return "\n\n".join(sentences)
