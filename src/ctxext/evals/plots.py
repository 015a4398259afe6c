"""Eval plots: perplexity by position (one line per spec, log y, the trained length marked) and passkey / niah
heatmaps (depth × length, 0–100 %, red to green, every cell annotated). Built on ctxext.plots' style."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..plots import GREY, figure, line_style, save, si_label
from .files import curve_path, load_array

CURVE_POINTS = 128  # points per plotted curve (means over equal position ranges)


def tokens_label(n: float) -> str:
    """16384 -> '16k', 1536 -> '1.5k', 1000 -> '1k' (binary k for the power-of-two lengths of long-context work)."""
    if n >= 1024 and (n * 2) % 1024 == 0:
        return f"{n / 1024:g}k"
    return si_label(n)


def _smooth(curve: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, perplexity of the bin) over CURVE_POINTS equal ranges of positions."""
    n = len(curve)
    edges = np.unique(np.linspace(1, n, min(CURVE_POINTS, n - 1) + 1).astype(int))
    xs, ys = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        seg = curve[a:b]
        seg = seg[~np.isnan(seg)]
        if len(seg):
            xs.append((a + b) / 2)
            ys.append(np.exp(seg.mean()))
    return np.asarray(xs), np.asarray(ys)


def ppl_curves(out: Path, records: list[dict[str, Any]], metric: str, trained: int | None, model: str,
               windows: int = 1) -> Path | None:
    """Perplexity vs position at the longest length each spec has, from the saved per-position curves
    (bucket records when a curve file is missing); `windows` > 1: each curve averages that many consecutive
    L-token windows of each document (ppl --windows)."""
    recs = [r for r in records if r["task"] == "ppl" and r["metric"] == metric]
    specs = list(dict.fromkeys(r["scaling"] for r in recs))
    if not specs:
        return None
    with figure() as (fig, ax):
        top, drawn = 0, 0
        for k, s in enumerate(specs):
            L = max(r["length"] for r in recs if r["scaling"] == s)
            curve = load_array(curve_path(out, metric, s, L))
            if curve is not None and len(curve) > 2:
                x, y = _smooth(curve)
            else:
                bs = sorted((r for r in recs if r["scaling"] == s and r["length"] == L and r["bucket"]),
                            key=lambda r: r["bucket"][0])
                x = np.asarray([(r["bucket"][0] + r["bucket"][1]) / 2 for r in bs])
                y = np.asarray([np.nan if r["value"] is None else r["value"] for r in bs], dtype=float)
            ok = np.isfinite(y) & (y > 0)  # a run that produced NaN (e.g. fp16 overflow) has nothing to draw
            if not ok.any():
                continue
            x, y = np.asarray(x)[ok], np.asarray(y)[ok]
            drawn += 1
            top = max(top, L, int(np.ceil(x.max())))  # the sliding protocol's curve runs to 2L
            overall = next((r["value"] for r in recs if r["scaling"] == s and r["length"] == L and not r["bucket"]), None)
            label = s + (f"  (ppl {overall:.3g} over {tokens_label(L)})" if overall is not None else "")
            ax.plot(x, y, label=label, **line_style(k))
        if not drawn:
            return None
        if trained and trained < top:
            ax.axvline(trained, color=GREY, ls="--", lw=1.2)
            ax.text(trained, 0.98, f" trained length {tokens_label(trained)}", transform=ax.get_xaxis_transform(),
                    va="top", ha="left", color="#555555", fontsize=9)
        ax.set_yscale("log")
        ax.set_xlim(0, top)
        ax.xaxis.set_major_locator(_pow2_locator(top))
        ax.xaxis.set_major_formatter(_tokens_fmt())
        several = windows > 1 and metric == "ppl"
        ax.set_xlabel(f"position in the {'window' if several else 'document'} (tokens)")
        what = ("sliding window" if metric != "ppl" else f"mean of {windows} consecutive L-token windows"
                if several else "one window of the first L tokens")
        ax.set_ylabel("perplexity (log)")
        ax.set_title(f"{model}: perplexity by position ({what})")
        ax.legend(loc="upper left")
        return save(fig, Path(out) / f"{metric}_by_position.png")


def _pow2_locator(top: float) -> Any:
    """Ticks every power-of-two step that gives 4–8 ticks (2k, 4k, … for a 16k axis)."""
    from matplotlib.ticker import MultipleLocator

    return MultipleLocator(2 ** max(0, int(np.floor(np.log2(max(top, 8) / 8)))))


def _tokens_fmt() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: tokens_label(v) if v > 0 else "0")


def heatmap(out: Path, records: list[dict[str, Any]], task: str, trained: int | None, model: str) -> Path | None:
    """Accuracy by depth (rows, 0 % on top) and length (columns), one panel per spec."""
    recs = [r for r in records if r["task"] == task and r["metric"] == "accuracy" and r["depth"] is not None]
    specs = list(dict.fromkeys(r["scaling"] for r in recs))
    if not specs:
        return None
    lengths = sorted({r["length"] for r in recs})
    depths = sorted({r["depth"] for r in recs})
    idx = {(r["scaling"], r["length"], r["depth"]): r["value"] for r in recs}
    w = max(3.2, 0.75 * len(lengths) + 1.6)
    h = max(2.6, 0.42 * len(depths) + 1.4)
    with figure(ncols=len(specs), figsize=(w * len(specs) + 0.8, h), squeeze=False, constrained_layout=True) as (fig, axes):
        im = None
        for ax, s in zip(axes[0], specs):
            grid = np.full((len(depths), len(lengths)), np.nan)
            for i, d in enumerate(depths):
                for j, L in enumerate(lengths):
                    v = idx.get((s, L, d))
                    if v is not None:
                        grid[i, j] = 100 * v
            im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
            for i in range(len(depths)):
                for j in range(len(lengths)):
                    if not np.isnan(grid[i, j]):
                        v = grid[i, j]
                        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                                color="white" if v < 20 or v > 85 else "black")
            ax.set_xticks(range(len(lengths)), [tokens_label(L) for L in lengths])
            ax.set_yticks(range(len(depths)), [f"{100 * d:g}%" for d in depths])
            for lab, L in zip(ax.get_xticklabels(), lengths):
                if trained and L > trained:
                    lab.set_color("#B2182B")
                    lab.set_fontweight("bold")
            if trained and lengths[0] <= trained < lengths[-1]:
                ax.axvline(sum(L <= trained for L in lengths) - 0.5, color="black", lw=1.5)
            ax.grid(False)
            ax.set_title(s, fontsize=10)
        axes[0][0].set_ylabel("needle depth (0% = start)")
        past = trained and lengths[-1] > trained
        fig.supxlabel("context length (tokens)" + (f"; red = past the trained length {tokens_label(trained)}"
                                                   if past else ""), fontsize=10)
        cb = fig.colorbar(im, ax=list(axes[0]), shrink=0.9)
        cb.set_label("accuracy (%)")
        fig.suptitle(f"{model}: {task} accuracy", fontweight="bold")
        return save(fig, Path(out) / f"{task}_heatmap.png")


def write_plots(out: Path, records: list[dict[str, Any]], trained: int | None, model: str,
                windows: int = 1) -> list[str]:
    """Every plot the records allow (`windows`: ppl's --windows); returns file names relative to `out`."""
    made = [ppl_curves(out, records, m, trained, model, windows) for m in ("ppl", "ppl_sliding")]
    made += [heatmap(out, records, t, trained, model) for t in ("passkey", "niah")]
    return [p.name for p in made if p is not None]
