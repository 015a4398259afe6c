"""results.json (flat records, rewritten atomically after every finished cell, read back by --resume) and
summary.md (a table per task: specs as rows, lengths as columns)."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from ..data import files_change
from ..errors import CtxextError
from ..runinfo import merged_machines
from ..scaling.spec import is_file_spec
from .cost import fmt_seconds
from .files import atomic_write, write_json

RESULTS = "results.json"
SUMMARY = "summary.md"
# settings whose change makes old records incomparable; a resumed run must keep them
RESUME_KEYS = ("model", "dtype", "seed", "samples", "protocol", "windows", "stride", "bucket", "max_new_tokens",
               "data", "data_files")


def _definition(spec: dict[str, Any]) -> str:
    """What a saved spec computes (method and parameters; not its provenance meta), comparable across JSON round trips."""
    return json.dumps({"method": spec.get("method"), "params": spec.get("params")}, sort_keys=True)


def cell_key(rec: dict[str, Any]) -> tuple:
    return rec["model"], rec["scaling"], rec["task"], rec["length"], rec["depth"]


def _merge_config(old: dict[str, Any], meta: dict[str, Any]) -> None:
    """A resumed run's meta describes every record in the file: the tasks, lengths and depths of all its runs, the
    data they read, and each run's command (`commands`, oldest first)."""
    before, now = old.get("config", {}), meta["config"]
    for key, order in (("tasks", None), ("lengths", sorted), ("depths", sorted)):
        both = list(dict.fromkeys([*(before.get(key) or []), *(now.get(key) or [])]))
        now[key] = (order(both) if order else both) or None
    if now.get("data") is None:
        now["data"] = before.get("data")
    now["task_versions"] = {**(before.get("task_versions") or {}), **(now.get("task_versions") or {})}
    now["resume_acting"] = sorted({*(before.get("resume_acting") or RESUME_KEYS), *(now.get("resume_acting") or [])})
    commands = old.get("commands") or ([old["command"]] if old.get("command") else [])
    meta["commands"] = commands + ([meta["command"]] if meta.get("command") else [])
    # every machine that ran cells in this file (the timings and records of all runs are kept)
    meta["machines"] = merged_machines(old, meta.get("machine"))


class Results:
    """The records of one --out folder. A cell is finished once any of its records is stored: a cell's records
    are always added together, in one atomic rewrite."""

    def __init__(self, out: Path, meta: dict[str, Any], resume: bool, acting: set[str] | None = None):
        """`acting`: the resume keys this run's tasks act on (None: all); the others keep the folder's values (a
        needle-ppl cell added to a folder run with --max-new-tokens 12 does not depend on it)."""
        self.path = Path(out) / RESULTS
        self.records: list[dict[str, Any]] = []
        self.meta = meta
        if self.path.is_file():
            if not resume:
                raise CtxextError(f"{self.path} already exists; pass --resume to continue that run, or choose "
                                  "another --out")
            try:
                old = json.loads(self.path.read_text())
                old_meta, self.records = old["meta"], list(old["records"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise CtxextError(f"cannot resume from {self.path}: not a ctxext results file ({e})") from None
            before = old_meta.get("config", {}).get("resume_keys", {})
            now = meta["config"]["resume_keys"]
            # data is None for tasks that read none (passkey): such cells do not depend on it, so adding them to
            # a folder of ppl cells is no conflict, and the folder keeps the data its other cells were run on
            for k in ("data", "data_files"):
                if now.get(k) is None and before.get(k) is not None:
                    now[k] = before[k]
            for k in RESUME_KEYS:
                if acting is not None and k not in acting and k in before:
                    now[k] = before[k]
            # keys no cell of the folder acted on (recorded null; folders from before resume_acting: every key acted)
            # take any value; a null a task did act on is its default (ppl's 4 documents), compared like any value
            old_acting = set(old_meta.get("config", {}).get("resume_acting") or RESUME_KEYS)
            # windows acts exactly when the folder holds ppl cells; folders from before --windows have no such key
            # (their ppl cells read one window a document) nor, once resumed with other tasks, list it as acting
            before = {"windows": None, **before}
            if "ppl" in (old_meta.get("config", {}).get("tasks") or []):
                old_acting.add("windows")
            else:
                old_acting.discard("windows")
            unused = {k for k in RESUME_KEYS if before.get(k) is None and (k not in old_acting or k.startswith("data"))}
            diff = [f"data files (names and sizes) differ: {files_change(before[k], now[k])}" if k == "data_files"
                    else f"{k} {before[k]!r} -> {now[k]!r}" for k in RESUME_KEYS
                    if k in before and k not in unused and before[k] != now.get(k)]
            if diff:
                raise CtxextError(f"cannot resume {self.path}: it was run with other settings ({'; '.join(diff)}); "
                                  "use another --out")
            old_specs = old_meta.get("config", {}).get("specs", {})
            self._drop_redefined(old_specs, meta["config"]["specs"])
            self._drop_older_protocols(old_meta.get("config", {}).get("task_versions") or {},
                                       meta["config"].get("task_versions") or {})
            _merge_config(old_meta, meta)
            meta["created"] = old_meta.get("created", meta.get("created"))
            meta["runs"] = int(old_meta.get("runs", 1)) + 1
            meta["config"]["specs"] = {**old_specs, **meta["config"]["specs"]}
            kept = {r["scaling"] for r in self.records}  # a redefined spec's old timings go with its records
            meta["timings"] = [t for t in old_meta.get("timings", []) if t.get("scaling") in kept]
        self.done = {cell_key(r) for r in self.records}

    def _drop_redefined(self, before: dict[str, Any], now: dict[str, Any]) -> None:
        """A spec file (e.g. a search's best.json) may be rewritten between runs under the same name: its old cells
        measured other factors, so they are dropped and measured again rather than served as this spec's."""
        stale = {s for s, d in now.items()
                 if s in before and is_file_spec(s) and _definition(before[s]) != _definition(d)}
        self._measure_again("scaling", stale, "{} changed")

    def _drop_older_protocols(self, before: dict[str, int], now: dict[str, int]) -> None:
        """A task whose protocol changed since the folder's cells were measured (Task.version; files without one
        are version 1): its old cells do not compare with new ones, so they are measured again."""
        stale = {t for t, v in now.items() if before.get(t, 1) != v and any(r["task"] == t for r in self.records)}
        self._measure_again("task", stale, "the {} protocol changed")

    def _measure_again(self, field: str, stale: set[str], what: str) -> None:
        """Drop the records whose `field` is in `stale` (they are measured again), and say so."""
        if stale:
            n = sum(r[field] in stale for r in self.records)
            self.records = [r for r in self.records if r[field] not in stale]
            print(f"resume: {what.format(', '.join(sorted(stale)))} since its {n} record(s) in {self.path} were "
                  "measured; they are measured again", file=sys.stderr)

    def finished(self, model: str, scaling: str, task: str, length: int, depth: float | None) -> bool:
        return (model, scaling, task, length, depth) in self.done

    def timed(self, timing: dict[str, Any]) -> None:
        """A finished cell's wall time beside the plan's estimate (meta.timings, kept across resumed runs); written
        with the cell's records by the next add."""
        self.meta.setdefault("timings", []).append(timing)

    def add(self, records: list[dict[str, Any]]) -> None:
        for r in records:  # NaN / inf (an fp16 overflow, a window with no token to score) is JSON null: no value
            if isinstance(r.get("value"), float) and not math.isfinite(r["value"]):
                r["value"] = None
        self.records += records
        self.done |= {cell_key(r) for r in records}
        self.write()

    def write(self) -> None:
        write_json(self.path, self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "records": self.records}


# --------------------------------------------------------------------------------------------- summary


def bucket_label(b: tuple[int, int]) -> str:
    """[2048, 4096) -> '2k–4k' (ends that are multiples of 512), else the token counts: [1280, 1500) -> '1,280–1,500'
    (':g' of b/1024 wrote '1.25k–1.46484k')."""
    if b[1] >= 1024 and b[0] % 512 == 0 and b[1] % 512 == 0:
        return f"{b[0] / 1024:g}k–{b[1] / 1024:g}k"
    return f"{b[0]:,}–{b[1]:,}"


def fmt_value(metric: str, v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if metric == "accuracy":
        return f"{100 * v:.0f} %"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.2f}"


def _table(rows: list[Any], cols: list[Any], cell: Any, corner: str, col_name: Any = str,
           row_name: Any = lambda r: f"`{r}`") -> list[str]:
    lines = [f"| {corner} | " + " | ".join(col_name(c) for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for r in rows:
        lines.append(f"| {row_name(r)} | " + " | ".join(cell(r, c) for c in cols) + " |")
    return lines + [""]


def _index(records: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    return {(r["scaling"], r["task"], r["metric"], r["length"], r["depth"],
             tuple(r["bucket"]) if r["bucket"] is not None else None): r for r in records}


def summary_markdown(meta: dict[str, Any], records: list[dict[str, Any]], plots: list[str]) -> str:
    """Human summary: one table per task and metric (specs × lengths), ppl by position bucket, depth grids."""
    from .tasks import get_task

    cfg = meta.get("config", {})
    idx = _index(records)
    all_specs = list(dict.fromkeys(r["scaling"] for r in records))  # first-seen order, the same in every table
    trained = cfg.get("model_info", {}).get("trained_len")
    out = [f"# ctxext eval: {cfg.get('model', '?')}", ""]
    commands = meta.get("commands") or ([meta["command"]] if meta.get("command") else [])
    if len(commands) > 1:
        out += [f"{len(commands)} runs (--resume), oldest first:", ""] + [f"- `{c}`" for c in commands] + [""]
    elif commands:
        out += [f"`{commands[0]}`", ""]
    v = meta.get("versions", {})
    out += [f"ctxext {v.get('ctxext', '?')}, torch {v.get('torch', '?')}, transformers {v.get('transformers', '?')}; "
            f"seed {meta.get('seed')}; trained length {trained}; {len(records)} records.", ""]

    def lab(L: int) -> str:
        return f"{L:,}" + (" ▲" if trained and L > trained else "")

    for task in dict.fromkeys(r["task"] for r in records):
        recs = [r for r in records if r["task"] == task]
        # a spec with no record in this task was not asked of it (streaming has no passkey): no row of dashes
        specs = [s for s in all_specs if any(r["scaling"] == s for r in recs)]
        try:
            t = get_task(task)
            title = f"## {task}: {t.summary}"
        except CtxextError:
            title = f"## {task}"
        out += [title, ""]
        lengths = sorted({r["length"] for r in recs})
        for metric in dict.fromkeys(r["metric"] for r in recs):
            mrecs = [r for r in recs if r["metric"] == metric]
            if any(r["depth"] is not None for r in mrecs):  # depth sweep: mean over depths, then a grid per spec
                def mean_cell(s: str, L: int, m: str = metric) -> str:
                    vals = [r["value"] for r in mrecs if r["scaling"] == s and r["length"] == L
                            and r["value"] is not None]
                    if not vals:
                        return "–"
                    return fmt_value(m, sum(vals) / len(vals))

                out += [f"**{metric}**, mean over depths (▲ = past the trained length)", ""]
                out += _table(specs, lengths, mean_cell, "spec \\ length", lab)
                depths = sorted({r["depth"] for r in mrecs})
                for s in specs:
                    if any(r["scaling"] == s for r in mrecs):
                        out += [f"`{s}`: {metric} by depth", ""]
                        out += _table(depths, lengths, lambda d, L, s=s, m=metric: fmt_value(
                            m, idx.get((s, task, m, L, d, None), {}).get("value")), "depth \\ length", lab,
                            lambda d: f"{100 * d:g} %")
                continue
            out += [f"**{metric}** (▲ = past the trained length)", ""]
            out += _table(specs, lengths, lambda s, L, m=metric: fmt_value(
                m, idx.get((s, task, m, L, None, None), {}).get("value")), "spec \\ length", lab)
            for L in lengths:
                bl = sorted({tuple(r["bucket"]) for r in mrecs if r["bucket"] is not None and r["length"] == L})
                if len(bl) > 1:
                    out += [f"{metric} by position bucket at length {L:,} (tokens [start, end))", ""]
                    out += _table(specs, bl, lambda s, b, m=metric, L=L: fmt_value(
                        m, idx.get((s, task, m, L, None, b), {}).get("value")), "spec \\ bucket",
                        bucket_label)
    out += timing_lines(meta.get("timings", []))
    if plots:
        out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(out)


def timing_rows(timings: list[dict[str, Any]]) -> list[tuple[str, int, int, int, float, float, float, float]]:
    """Per (task, length), tasks in the order they ran: (task, length, specs, cells, then the median, least and most
    measured seconds per cell and the median estimated seconds per cell). Per cell, not per spec: specs often have
    different numbers of depths run (one here, three there, from separate runs), and a per-spec sum then moves its
    median with whichever spec got more cells. Cells of one run that share a prefix split its time unevenly (see
    runner: each cell is timed since the previous one), so a single cell's figure is rough; their sum is exact."""
    per: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for t in timings:
        per.setdefault((t["task"], int(t["length"])), []).append(t)
    rows = []
    order = list(dict.fromkeys(task for task, _ in per))
    for (task, L), cells in sorted(per.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        got = [float(t["seconds"]) for t in cells]
        est = [float(t["estimated_seconds"]) for t in cells]
        rows.append((task, L, len({t["scaling"] for t in cells}), len(cells), statistics.median(got), min(got),
                     max(got), statistics.median(est)))
    return rows


def timing_lines(timings: list[dict[str, Any]]) -> list[str]:
    """The time section of summary.md: what each task took per spec and length, beside the plan's estimate."""
    rows = timing_rows(timings)
    if not rows:
        return []
    out = ["## Time", "", "Wall time per cell (one task, length and depth) on the machine "
           "that ran them, beside the plan's estimate; cells kept from runs before timings were recorded are not "
           "counted.", "", "| task | length | specs | cells | measured (median) | range | estimated (median) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for task, L, n_specs, n, med, lo, hi, est in rows:
        out.append(f"| {task} | {L:,} | {n_specs} | {n} | {fmt_seconds(med)} | {fmt_seconds(lo)} – {fmt_seconds(hi)} | "
                   f"{fmt_seconds(est)} |")
    return out + [""]


def write_summary(out: Path, meta: dict[str, Any], records: list[dict[str, Any]], plots: list[str]) -> Path:
    path = Path(out) / SUMMARY
    atomic_write(path, summary_markdown(meta, records, plots))
    return path
