"""What a search leaves in DIR besides history.jsonl: best.json (a `longrope` spec file that `--scaling` and
`ctxext export` accept, plus provenance), results.json, summary.md, and two PNGs (best factors per pair against
PI / NTK / YaRN with the critical pair marked; best fitness against cost)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .space import Candidate, Space

BEST = "best.json"
FACTORS_PNG = "factors.png"
CURVE_PNG = "fitness_vs_cost.png"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def best_spec(c: Candidate, scale: float, original_len: int, provenance: dict[str, Any]) -> dict[str, Any]:
    """The spec-file dict: method + params (parse_spec reads these) + meta, and top-level provenance keys
    (model, target, fitness, cost …) that parse_spec ignores."""
    params: dict[str, Any] = {"factor": scale, "long_factor": list(c.factors), "attention_factor": c.attention_factor,
                              "start_tokens": c.start_tokens, "original_max_position_embeddings": original_len}
    return {"method": "longrope", "params": params, **provenance, "meta": {"search": provenance}}


def write_best(out: Path, c: Candidate, scale: float, original_len: int, provenance: dict[str, Any]) -> Path:
    path = out / BEST
    _write_json(path, best_spec(c, scale, original_len, provenance))
    return path


def plot_factors(path: Path, space: Space, best: Candidate, refs: dict[str, np.ndarray], title: str) -> Path:
    from matplotlib.ticker import MaxNLocator

    from ..plots import GREY, PALETTE, figure, save

    pairs = np.arange(space.n_pairs)
    with figure() as (fig, ax):
        ax.fill_between(pairs, space.lo, space.hi, step="mid", color="#EEF3F8", label="search bounds", zorder=0)
        for (name, f), col in zip(refs.items(), PALETTE[1:]):
            ax.plot(pairs, f, "o--", ms=3, lw=1.2, color=col, alpha=0.85, label=name)
        ax.plot(pairs, best.factors, "o-", ms=4.5, lw=2.2, color=PALETTE[0], label="searched (best)")
        c = space.critical_pair
        ax.axvline(c - 0.5, color=GREY, ls=":", lw=1.4)
        ax.annotate(f"critical pair {c}", xy=(c - 0.5, 0.96), xycoords=("data", "axes fraction"), xytext=(4, 0),
                    textcoords="offset points", ha="left", va="top", fontsize=9, color="#555555")
        ax.axhline(space.scale, color=GREY, lw=0.8, ls="--")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("rotary pair i")
        ax.set_ylabel("rescale factor f_i  (θ'_i = θ_i / f_i)")
        ax.set_title(title)
        ax.legend(loc="upper left")
        return save(fig, path)


def plot_curve(path: Path, curve: list[tuple[float, float]], refs: dict[str, float], title: str,
               ylabel: str) -> Path:
    from ..plots import PALETTE, figure, save

    with figure() as (fig, ax):
        if curve:
            x, y = zip(*curve)
            ax.step(x, y, where="post", color=PALETTE[0], label="best so far")
        for (name, v), col in zip(refs.items(), PALETTE[1:]):
            ax.axhline(v, color=col, ls="--", lw=1.2, label=f"{name} ({v:.4g})")
        if curve and refs:  # focus on where the search is: the best so far and the references near it
            near = [v for v in refs.values() if v <= 1.5 * min(min(refs.values()), y[-1])] + [y[-1]]
            lo, hi = min(near), max(near)  # the search's best is always in view, references near it with it
            span = max(hi - lo, 0.05 * abs(lo), 1e-6)  # one value alone: a band of ±1e-9 hid every line
            ax.set_ylim(lo - 0.3 * span, hi + 0.7 * span)
        ax.set_xlabel("cost (full-length-evaluation equivalents)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc="upper right", framealpha=0.9, frameon=True)
        return save(fig, path)


def write_summary(out: Path, results: dict[str, Any]) -> Path:
    r, cfg = results, results["config"]
    lines = [f"# ctxext search: {cfg['model']} → {cfg['target']:,} tokens", "",
             f"- command: `{r['meta'].get('command') or 'python API'}`",
             f"- fitness: {cfg['fitness']} at {cfg['target']:,} tokens, {cfg['samples']} samples, seed {cfg['seed']}; "
             f"data: {', '.join(cfg['data'])}",
             f"- rungs (length × samples, cost each): " + ", ".join(
                 f"{x['length']:,} × {x['samples']} ({x['cost']:.3g})" for x in r["rungs"]),
             f"- spent {r['spent']:.2f} of budget {cfg['budget']:g} full-length-evaluation equivalents in "
             f"{r['evaluations']} evaluations ({r['generations']} generations; stopped: {r['stopped']}); "
             + (f"all {r['replayed']} replayed from history.jsonl by --resume (none run again)"
                if r['replayed'] == r['evaluations'] else f"{r['replayed']} replayed from history.jsonl"),
             ]
    g = r.get("guard")
    if g:
        lines.append(f"- in-window guard: perplexity at the trained length with m = 1 (the model as trained) "
                     f"{g['baseline']:.5g}; attention factor capped at {g['cap']:.4g} to stay within "
                     f"{100 * g['tolerance']:g} % ({len(g['probes'])} evaluations, cost {r['guard_cost']:.3g})")
    if r.get("reference_cost"):
        lines.append(f"- fitness both = max(needle-ppl / needle-ppl_ref, ppl / ppl_ref) with the reference "
                     f"{r['reference']['spec']} measured at every rung (cost {r['reference_cost']:.3g}, in the budget)")
    lines += ["", "| candidate | fitness (lower is better) | parts |", "|---|---|---|"]
    def parts(p: dict) -> str:
        return ", ".join(f"{k} {v:.5g}" for k, v in p.items()) if p and len(p) > 1 else ""

    for name, v in sorted(r["seeds"].items(), key=lambda kv: kv[1]):
        lines.append(f"| seed {name} | {v:.6g} | {parts(r.get('seed_parts', {}).get(name, {}))} |")
    ref = r.get("reference")
    if ref:
        lines.append(f"| {ref['spec']} (exact, reference) | {ref['fitness']:.6g} | {parts(ref.get('parts', {}))} |")
    lines += [f"| **searched best** | **{r['best']['fitness']:.6g}** | {parts(r['best'].get('parts', {}))} |", "",
              f"Best found at cost {r['best']['found_at_cost']:.2f}; first better than the YaRN seed at cost "
              + (f"{r['beat_yarn_at_cost']:.2f}" if r.get("beat_yarn_at_cost") is not None else "— (never)")
              + (f"; better than exact {ref['spec']} at cost " + (f"{ref['beaten_at_cost']:.2f}." if
                 ref.get("beaten_at_cost") is not None else "— (never).") if ref else "."),
              f"Real critical pair of the best (first pair with f ≥ s): {r['best']['real_critical_pair']} "
              f"(theory: {r['space']['critical_pair']}).", "",
              "Factors: " + ", ".join(f"{x:g}" for x in r["best"]["factors"]) + f"; attention factor "
              f"{r['best']['attention_factor']:.6g}; start tokens {r['best']['start_tokens']}.", "",
              f"Use it: `--scaling {out / BEST}` (ctxext eval / train / export).", "",
              f"![factors]({FACTORS_PNG})", "", f"![fitness vs cost]({CURVE_PNG})", ""]
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path
