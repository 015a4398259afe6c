"""Where perplexity breaks: the first position whose perplexity passes 2x the model's in-window value.

The measured side of the planner's `ppl2x` criterion (benchmarks/planner.py) and of `ctxext plan --calibrate`:
per-position NLL grouped in buckets of L/8 tokens; the in-window reference is the perplexity over [L/4, L) (the
first quarter is skipped: short prefixes are harder for any model); the reach is the start of the first bucket past
L/2 whose perplexity exceeds 2x the reference. A curve that never crosses is censored at its length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import CtxextError

BREAK_RATIO = 2.0
# --calibrate's default: windows enough to score this many tokens, at most MAX_WINDOWS. One window of a small
# model's curve is noisy, and its in-window part is the text's opening (title page, contents list): one 512-token
# window put tiny-rope's break at 257 (tolerance 0.73), sixteen at 353 (0.999). SmolLM2's 16k is one window.
CALIBRATE_TOKENS = 16384
MAX_WINDOWS = 16


@dataclass(frozen=True)
class PplBreak:
    reach: float  # tokens; the curve's length when censored
    censored: bool  # never crossed within the measured length
    in_window_ppl: float
    length: int  # tokens measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ppl_break(nll: np.ndarray, trained: int) -> PplBreak:
    """The break point of a per-position NLL curve (index i scores token i+1) of a model trained on `trained`."""
    nll = np.asarray(nll, dtype=np.float64)
    if trained < 8 or len(nll) + 1 <= trained:
        raise CtxextError(f"a break point needs a curve longer than the trained window ({trained} tokens); "
                          f"got {len(nll) + 1}")
    b = trained // 8
    n = -(-len(nll) // b)  # the last bucket is one token short: nll[i] scores token i+1
    padded = np.concatenate([nll, np.full(n * b - len(nll), np.nan)])
    ppl = np.exp(np.nanmean(padded.reshape(n, b), axis=1))
    ref = float(np.exp(np.nanmean(nll[trained // 4 - 1: trained - 1])))
    if len(nll) - (n - 1) * b < b // 2:  # a last bucket less than half full: too few tokens to decide alone
        n -= 1
    for k in range(n):
        if (k + 1) * b > trained // 2 and ppl[k] > BREAK_RATIO * ref:
            return PplBreak(float(k * b + 1), False, ref, len(nll) + 1)
    return PplBreak(float(len(nll) + 1), True, ref, len(nll) + 1)  # held over every measured token


def auto_windows(length: int) -> int:
    """How many windows of `length` tokens --calibrate averages by default."""
    return min(MAX_WINDOWS, max(1, -(-CALIBRATE_TOKENS // length)))


def measure_break(lm: Any, data: list[str], length: int, trained: int,
                  windows: int | None = None) -> tuple[PplBreak, str, int]:
    """Break point of `lm` as loaded (no scaling applied here), trained on `trained` tokens: NLL per position
    averaged over `windows` consecutive windows of `length` tokens of the first document under `data` that holds
    them all; -> (the break, the document's name, windows used). `windows` None: auto_windows(length), or as many
    as the first document holding one window has."""
    from ..data import load_documents, special_prefix

    prefix = special_prefix(lm.tokenizer)
    n = length - len(prefix)
    need = n * (windows or 1)
    docs = load_documents(data, lm.tokenizer)
    doc = next((d for d in docs if len(d.tokens) >= need), None)
    if doc is None:
        longest = max((len(d.tokens) for d in docs), default=0)
        raise CtxextError(f"no document under {', '.join(data)} has {need:,} tokens ({windows or 1} x {length:,}; "
                          f"longest: {longest:,}); give a longer text, fewer windows or a shorter length")
    used = windows or min(auto_windows(length), len(doc.tokens) // n)
    return ppl_break(window_nll(lm.model, doc.tokens, length, used, prefix), trained), doc.name, used


def window_nll(model: Any, tokens: Any, length: int, windows: int, prefix: Any = ()) -> np.ndarray:
    """Per-position NLL averaged over `windows` windows of `length` tokens: each is `prefix` (the tokenizer's
    start tokens) then the next consecutive piece of `tokens` from its start."""
    import torch

    from ..data import windows_of
    from .scoring import token_nll

    with torch.inference_mode():
        pieces = windows_of(tokens, np.asarray(prefix, dtype=np.int64), length, windows)
        return np.mean([token_nll(model, p) for p in pieces], axis=0)
