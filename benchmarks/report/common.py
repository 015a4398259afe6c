"""What every README section shares: where the results live, how a number, a machine and an ordering are written."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[2]
RES = ROOT / "benchmarks" / "results"  # read at call time (common.RES), so tests can point it at a folder of their own
sys.path.insert(0, str(ROOT / "src"))  # ctxext without an install; imported lazily where a section needs it


def load_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def full_runs(pattern: str) -> Iterator[tuple[Path, Any]]:
    """(path, results) of each file under RES matching pattern, --quick runs left out (the ordering notes read
    those beside their full run)."""
    for path in sorted(RES.glob(pattern)):
        if not path.parent.name.endswith("_quick"):
            yield path, load_json(path)


def machine_text(m: dict | None) -> str:
    if not m:
        return "machine not recorded"
    return f"{m.get('cpu_count', '?')}-core {m.get('processor', 'CPU')} ({m.get('platform', '?')})"


def run_machines(d: dict | None) -> str:
    """The machine(s) a results file was built on: its `machines` (every run of a resumed or merged file, oldest
    first) when it has them, else its `machine`. Several of one kind: the kind once, each platform listed."""
    d = d or {}
    ms = [m for m in (d.get("machines") or [d.get("machine")]) if m]
    texts = list(dict.fromkeys(machine_text(m) for m in ms))
    if len(texts) <= 1:
        return texts[0] if texts else machine_text(None)
    kinds = {(m.get("cpu_count"), m.get("processor")) for m in ms}
    if len(kinds) == 1:
        platforms = list(dict.fromkeys(str(m.get("platform", "?")) for m in ms))
        return (f"{ms[0].get('cpu_count', '?')}-core {ms[0].get('processor', 'CPU')} ({len(platforms)} machines "
                f"over its runs: {'; '.join(platforms)})")
    return "; ".join(texts)


def fmt_num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}" if x < 1000 else f"{x:,.0f}"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def ranked(values: dict[str, float | None], higher_better: bool) -> str:
    """'a > b = c': best first, equal values tied (a quick run must reproduce ties as well as order)."""
    known = sorted(((v, k) for k, v in values.items() if v is not None), key=lambda x: -x[0] if higher_better else x[0])
    out = ""
    for i, (v, k) in enumerate(known):
        out += (("" if i == 0 else " = " if v == known[i - 1][0] else " > " if higher_better else " < ")
                + f"`{k.split(' @ ')[0]}`")
    return out


def order_note(intro: str, rows: list[tuple[str, str, str]], ref: str, noise: str = "") -> str:
    """One sentence: each (what, quick order, full order) row, whether the two agree, and what the full run itself
    cannot tell apart (noise)."""
    cells = "; ".join(f"{w}: {q}" + (f" ({ref}: the same)" if q == f else f" ({ref}: {f})") for w, q, f in rows)
    same = "yes" if all(q == f for _, q, f in rows) else "**no**"
    return f"{intro} {cells}. Same order: {same}" + (f" ({noise})." if noise else ".")


def rerun_note(pairs: list[tuple[float, float]]) -> str:
    """When every figure a --quick run shares with its full run is identical, the quick run measured the same cells
    again: say that its agreement shows the benchmark reruns to the same figures, not an order that holds on other
    samples."""
    if pairs and all(q == f for q, f in pairs):
        return (f" Its {len(pairs)} shared figures equal the full run's exactly (the same cells, measured again): this "
                "shows the run reproduces, not that the order holds on other text.")
    return ""


def and_list(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def machines_text(groups: list[tuple[str, dict | None]], rest: str = "") -> str:
    """Each distinct machine with what ran on it: groups are (what, machine) pairs, those of one machine joined. One
    machine: just it. With `rest`, the machine that ran the most groups (when several) comes last as "<rest> on
    ..." instead of listing them."""
    by: dict[str, list[str]] = {}
    for what, m in groups:
        by.setdefault(machine_text(m), []).append(what)
    if len(by) <= 1:
        return next(iter(by), machine_text(None))
    items = list(by.items())
    if rest:
        big = max(items, key=lambda kv: len(kv[1]))
        if len(big[1]) > 1:
            items = [kv for kv in items if kv is not big] + [(big[0], [rest])]
    return ", ".join(f"{and_list(whats)} on {m}" for m, whats in items)
