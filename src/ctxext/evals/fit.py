"""Fit LLaMA 2 Long's law L(c) = (α/c)^β + γ (Xiong et al. 2023, https://arxiv.org/abs/2309.16039) to a ppl
curve: c is the context a token was predicted with (its position), L the mean loss there (nats).

For a fixed β the law is linear in A = α^β and γ, so a grid over β with closed-form least squares for (A, γ),
refined by golden-section search on β, finds the global least-squares fit without scipy. A curve that does not
fall with context (A ≤ 0) is reported with α = 0 (no context benefit), β null (it shapes nothing then) and γ the
mean of the binned losses (each log-spaced bin weighs the same). A least-squares
result at the edge of β's range or with γ < 0 is not a fit of the law: it is logged, not recorded.
Records: metrics `alpha`, `beta`, `gamma`, `rmse` per (spec, length), n = documents of the curve.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from .files import curve_path, load_array
from .tasks import Cell, Settings, Task, TaskContext, register

MIN_CONTEXT = 16  # positions before this are dominated by the document's opening, not by context length
BINS = 64
BETA_RANGE = (0.01, 3.0)  # β searched here; a fit at either end is no fit (no_fit_reason)


def _solve(c: np.ndarray, y: np.ndarray, w: np.ndarray, beta: float) -> tuple[float, float, float]:
    """(A, γ, weighted SSE) of y ≈ A·c^-β + γ, A >= 0."""
    x = c ** -beta
    sw = w.sum()
    xm, ym = (w * x).sum() / sw, (w * y).sum() / sw
    var = (w * (x - xm) ** 2).sum()
    a = max(0.0, (w * (x - xm) * (y - ym)).sum() / var) if var > 0 else 0.0
    g = ym - a * xm
    return a, g, float((w * (a * x + g - y) ** 2).sum())


def fit_law(c: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> dict[str, float]:
    """Least-squares α, β, γ of L(c) = (α/c)^β + γ, and the weighted RMSE."""
    c, y = np.asarray(c, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = np.ones_like(c) if w is None else np.asarray(w, dtype=np.float64)
    grid = np.linspace(*BETA_RANGE, 300)
    sse = [_solve(c, y, w, b)[2] for b in grid]
    k = int(np.argmin(sse))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # golden-section search on β inside the best grid bracket
        m1, m2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if _solve(c, y, w, m1)[2] < _solve(c, y, w, m2)[2]:
            hi = m2
        else:
            lo = m1
    beta = (lo + hi) / 2
    a, g, s = _solve(c, y, w, beta)
    alpha = a ** (1 / beta) if a > 0 else 0.0
    return {"alpha": alpha, "beta": beta, "gamma": g, "rmse": math.sqrt(s / w.sum())}


def no_fit_reason(res: dict[str, float]) -> str | None:
    """Why a least-squares result is not a fit of the law, or None. A curve that keeps falling like log(c) drives β
    to the bottom of its range, α to ~1e222 and γ below zero (a negative loss floor); publishing those as α, β, γ
    would read as a result."""
    if res["alpha"] == 0.0:  # no context benefit: β is moot, γ the mean loss
        return None
    if res["beta"] <= BETA_RANGE[0] * 1.01 or res["beta"] >= BETA_RANGE[1] * 0.99:
        return f"β ran to the edge of its range {BETA_RANGE[0]}–{BETA_RANGE[1]} ({res['beta']:.3g})"
    if not math.isfinite(res["alpha"]):
        return "α is not finite"
    if res["gamma"] < 0:
        return f"γ = {res['gamma']:.3g} < 0, a negative loss floor"
    return None


def law(c: np.ndarray | float, alpha: float, beta: float, gamma: float) -> np.ndarray | float:
    return (alpha / np.asarray(c, dtype=np.float64)) ** beta + gamma


def binned(curve: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-spaced bins of a per-position loss curve -> (context, mean loss, tokens per bin)."""
    pos = np.arange(len(curve), dtype=np.float64)
    ok = ~np.isnan(curve) & (pos >= MIN_CONTEXT)
    pos, curve = pos[ok], curve[ok]
    if len(pos) == 0:
        return pos, curve, pos
    edges = np.unique(np.round(np.geomspace(pos[0], pos[-1] + 1, BINS + 1)))
    idx = np.clip(np.searchsorted(edges, pos, side="right") - 1, 0, len(edges) - 2)
    cnt = np.bincount(idx, minlength=len(edges) - 1).astype(np.float64)
    keep = cnt > 0
    mean = np.bincount(idx, weights=curve, minlength=len(edges) - 1)[keep] / cnt[keep]
    ctx = np.bincount(idx, weights=pos, minlength=len(edges) - 1)[keep] / cnt[keep]
    return ctx, mean, cnt[keep]


def run(ctx: TaskContext, cells: list[Cell]) -> Iterator[tuple[Cell, list[dict[str, Any]]]]:
    for length in sorted({L for L, _ in cells}):
        hit = ctx.memo.get(("ppl", length))
        if hit is None:  # ppl ran in an earlier (resumed) run: its saved curve and record
            n = next((r["n"] for r in ctx.memo.get("records", []) if r["task"] == "ppl" and r["metric"] == "ppl"
                      and r["length"] == length and r["bucket"] is None), 0)
            hit = load_array(curve_path(ctx.out, "ppl", ctx.spec.text, length)), n
        curve, n = hit
        if curve is None:
            ctx.log(f"fit @ {length}: no ppl curve for '{ctx.spec.text}' (run the ppl task with the window protocol)")
            continue
        c, y, _ = binned(curve)
        if len(c) < 4:
            ctx.log(f"fit @ {length}: too few positions to fit")
            continue
        res = fit_law(c, y)  # bins weigh equally: log-spaced, so short and long context count alike
        reason = no_fit_reason(res)
        if reason is not None:
            ctx.log(f"fit @ {length}: the law does not fit the ppl curve of '{ctx.spec.text}' ({reason}); no fit recorded")
            continue
        if res["alpha"] == 0.0:
            ctx.log(f"fit @ {length}: the loss of '{ctx.spec.text}' does not fall with context (α = 0); β recorded "
                    "as null")
            res = {**res, "beta": None}
        yield (length, None), [ctx.record("fit", length, None, k, v, n) for k, v in res.items()]


def cost(mc: Any, length: int, depths: list[float], s: Settings) -> tuple[float, float]:
    return 0.0, 0.0


TASK = register(Task(
    name="fit", summary="fit LLaMA 2 Long's L(c) = (α/c)^β + γ to the ppl curve (α, β, γ)",
    run=run, cost=cost, metric="beta", requires=("ppl",),
))
