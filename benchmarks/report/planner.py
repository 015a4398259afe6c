"""The planner section: benchmarks/planner.py's predicted vs measured reach (planner.json)."""

from __future__ import annotations

from . import common
from .common import and_list, load_json, machines_text


def _status(row: dict) -> str:
    """'ok', 'censored' or 'fails in window' (rows written before the passkey criterion have no status)."""
    return row.get("status", "censored" if row["censored"] else "ok")


def planner_machines(d: dict) -> str:
    """Where the rows were measured: the run's machine, and for the models whose rows were kept from an earlier run
    (`benchmarks/planner.py --only`), that run's."""
    kept = d.get("rows_kept_from") or {}
    models = list(dict.fromkeys(r["model"] for r in d["rows"]))
    return machines_text([(f"{m} rows", kept.get("machine") if m in kept.get("models", []) else d.get("machine"))
                          for m in models])


def _lengths(row: dict) -> list[int]:
    """The passkey lengths a passkey80 row measured (its accuracy_by_length keys), shortest first."""
    return sorted(int(k) for k in row["accuracy_by_length"])


def passkey_setup(d: dict) -> tuple[str, int, tuple[int, int, int]]:
    """(models, trials per length, (first, last, step) of the lengths) of planner.json's passkey80 rows, read from
    their `trials` and `accuracy_by_length`; a clear error when no row records them or the rows disagree (the
    header states one setup for all of them)."""
    rows = [r for r in d["rows"] if r.get("criterion") == "passkey80"]
    if not rows:
        raise ValueError("planner.json has no passkey80 rows: the planner header cannot state their trials and lengths")
    lacking = [r["config"] for r in rows if "trials" not in r or not r.get("accuracy_by_length")]
    if lacking:
        raise ValueError(f"planner.json: passkey80 rows without trials / accuracy_by_length: {', '.join(lacking)}")
    trials, grids = {r["trials"] for r in rows}, {tuple(_lengths(r)) for r in rows}
    if len(trials) > 1 or len(grids) > 1:
        raise ValueError(f"planner.json: the passkey80 rows disagree on trials ({sorted(trials)}) or lengths "
                         f"({sorted(grids)}); the planner header states one setup")
    lengths = grids.pop()
    steps = {b - a for a, b in zip(lengths, lengths[1:])}
    if len(steps) != 1:
        raise ValueError(f"planner.json: passkey lengths {list(lengths)} are not one evenly spaced grid")
    return and_list(list(dict.fromkeys(r["model"] for r in rows))), trials.pop(), (lengths[0], lengths[-1], steps.pop())


def planner_section() -> str:
    d = load_json(common.RES / "planner.json")
    if not d:
        return "(no planner results yet: run `python benchmarks/planner.py`)"
    pk_models, pk_trials, (pk_first, pk_last, pk_step) = passkey_setup(d)
    crit = {"ppl2x": "ppl > 2× in-window", "passkey80": "passkey < 80 %"}
    lines = [f"Predicted reach (`ctxext plan`) vs measured: `ppl2x`, the first position where perplexity exceeds 2× "
             f"the configuration's own in-window value (buckets of L/8), and `passkey80`, the first length past the "
             f"window where greedy passkey accuracy falls below 80 % ({pk_models}, {pk_trials} depths per length, "
             f"lengths {pk_first:,}–{pk_last:,} by {pk_step:,}; {planner_machines(d)}). "
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
                            if v > 0 or int(k) <= r["measured"] + pk_step)
            lines.append(f"\n`{r['config']}` passkey first falls below 80 % at {r['measured_over_predicted']:.2f}× the "
                         f"prediction (accuracy by length: {acc}; 0 % beyond): retrieval, one needle read through "
                         f"the slow pairs, fails before the critical pair's limit, and with {r['trials']} trials per "
                         f"length one miss moves a point by {100 / r['trials']:.0f} %.")
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
        lines.append(f"\n\"fails in window\": passkey is already below 80 % at {pk_first:,} tokens, inside the "
                     "trained window; such a configuration has no reach to compare (untuned interpolation squeezes the "
                     "positions the model retrieves by).")
    return "\n".join(lines)
