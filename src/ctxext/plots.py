"""Shared matplotlib helpers: Agg backend (no display needed), one style, one palette, one save.

matplotlib is imported inside the functions so that commands which do not plot never pay for it.
Add a plot as one function taking plain data (or a result object) and a path.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from .theory import Plan

# Colour-blind-safe (Okabe-Ito); the first colour is the model as trained.
PALETTE = ["#333333", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
GREY = "#8C8C8C"
DASHES = ("-", "--", ":")


def line_style(k: int) -> dict[str, str]:
    """The k-th curve's colour and dash: past the palette's 8 colours the dash changes, so no two curves of one
    plot look alike (up to 24)."""
    return {"color": PALETTE[k % len(PALETTE)], "ls": DASHES[k // len(PALETTE) % len(DASHES)]}

STYLE: dict[str, Any] = {
    "figure.figsize": (9.0, 5.2),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#E5E5E5",
    "grid.linewidth": 0.7,
    "axes.axisbelow": True,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "lines.linewidth": 1.8,
}


@contextmanager
def figure(**subplots_kw: Any) -> Iterator[tuple[Any, Any]]:
    """(fig, ax) under the ctxext style on the Agg backend; closed on exit (save inside the block)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(**subplots_kw)
        try:
            yield fig, ax
        finally:
            plt.close(fig)


def save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def si_label(n: float) -> str:
    """Decimal axis ticks: 10, 100, 1k, 10k, 2.5M (tokens)."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def plan_wavelengths(plan: Plan, path: str | Path, title: str | None = None) -> Path:
    """Wavelength per rotary pair on a log axis: the model as trained, the recommended specs' scaled
    wavelengths at the target, the trained and target lengths, and the critical pair."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    from .scaling import parse_spec, resolve_rope

    L, T, c = plan.shape.original_len, plan.target, plan.critical_pair
    pairs = np.arange(plan.shape.n_pairs)
    every = c >= plan.shape.n_pairs  # the small-base regime: no critical pair, no limit (it marked pair c anyway)
    own = "as trained" if plan.shape.base == plan.trained_base else f"with base {plan.shape.base:g}"
    with figure() as (fig, ax):
        if not every:
            ax.axvspan(c, pairs[-1] + 0.5, color="#FBE9E0", zorder=0,
                       label="pairs that never turn a full period within L")
        ax.plot(pairs, plan.wavelengths, "o-", color=PALETTE[0], ms=3.5,
                label=f"{own}  (" + ("every pair turns within L: no limit" if every else
                                     f"reach {plan.extrapolation_limit:,.0f}") + ")")
        recs = [r for r in plan.recommendations if r.recommended]
        looks = {"training-free": dict(marker="o", ls="-", ms=3.5, lw=1.6, color=PALETTE[1]),
                 "fine-tuning": dict(marker="s", ls="--", ms=5.5, lw=1.4, color=PALETTE[2], mfc="none")}
        for r in sorted(recs, key=lambda r: r.recommended != "training-free"):
            spec = parse_spec(r.spec)
            lam = 2 * np.pi / resolve_rope(spec, plan.shape, T).inv_freq
            at = " at T" if spec.entry.length_dependent else ""
            ax.plot(pairs, lam, alpha=0.95, **looks[r.recommended],
                    label=f"{r.spec}{at}  ({r.recommended}, reach {r.predicted_reach:,.0f})")
        ax.axhline(L, color=PALETTE[3], ls="--", lw=1.2)
        ax.axhline(T, color=PALETTE[4], ls="--", lw=1.2)
        if not every:
            ax.axvline(c, color=GREY, ls=":", lw=1.4)
        ax.set_yscale("log")
        ax.set_xlim(-0.5, pairs[-1] + 0.5)
        trans = ax.get_yaxis_transform()
        ax.text(0.01, L, f" trained L = {L:,}", transform=trans, va="bottom", ha="left", color=PALETTE[3], fontsize=9)
        ax.text(0.01, T, f" target T = {T:,}", transform=trans, va="bottom", ha="left", color=PALETTE[4], fontsize=9)
        if not every:
            ax.annotate(f"critical pair {c}\n(d_extra = {plan.critical_dim})", xy=(c, 0.04),
                        xycoords=("data", "axes fraction"), xytext=(-6, 0), textcoords="offset points", ha="right",
                        va="bottom", fontsize=9, color="#555555")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: si_label(y)))
        ax.set_xlabel("rotary pair i (θ_i = b^(-2i/d))")
        ax.set_ylabel("wavelength 2π/θ_i  (tokens, log)")
        ax.set_title(title or f"RoPE wavelengths: d={plan.shape.rotary_dim}, b={plan.shape.base:g}, L={L:,} → T={T:,}")
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, 0.93))
        return save(fig, path)
