"""The in-window guard: the largest attention factor m that keeps perplexity inside the original window within a
tolerance (default 1 %) of the model as trained.

Why: a `longrope` config (Hugging Face, vLLM) multiplies cos and sin by m at every length, also inside the original
window, where the short factors (1) otherwise leave the model exactly as trained; LongRoPE's default
m = sqrt(1 + ln s / ln L) is tuned for fine-tuned models and can cost a training-free model a few percent of
in-window perplexity. In-window perplexity depends on m alone (not on the long factors), so one bisection before
the search bounds m for every candidate: no candidate is ever made that breaks the guard.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

GUARD = "guard.json"


def bisect_cap(short_ppl: Callable[[float], float], m_hi: float, tolerance: float = 0.01, steps: int = 7
               ) -> dict[str, Any]:
    """Largest m in [1, m_hi] (to 1e-4) with short_ppl(m) <= (1 + tolerance)·short_ppl(1), assuming short_ppl
    grows with m past the best value; -> {"cap", "baseline", "limit", "probes": [[m, ppl], …]}."""
    base = short_ppl(1.0)
    limit = base * (1 + tolerance)
    probes = [[1.0, base]]
    if m_hi <= 1.0:
        return {"cap": 1.0, "baseline": base, "limit": limit, "probes": probes}
    v = short_ppl(m_hi)
    probes.append([m_hi, v])
    if v <= limit:
        return {"cap": m_hi, "baseline": base, "limit": limit, "probes": probes}
    lo, hi = 1.0, m_hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        v = short_ppl(mid)
        probes.append([mid, v])
        lo, hi = (mid, hi) if v <= limit else (lo, mid)
    return {"cap": int(lo * 1e4) / 1e4, "baseline": base, "limit": limit, "probes": probes}


def attention_cap(out: Path, short_ppl: Callable[[float], float], m_hi: float, tolerance: float,
                  resume: bool) -> dict[str, Any]:
    """bisect_cap, stored in DIR/guard.json; a resumed search reuses it (the same cap, so the same space)."""
    path = out / GUARD
    if resume and path.is_file():
        old = json.loads(path.read_text())
        if old.get("m_hi") == m_hi and old.get("tolerance") == tolerance:
            return old
    res = {**bisect_cap(short_ppl, m_hi, tolerance), "m_hi": m_hi, "tolerance": tolerance}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, path)
    return res
