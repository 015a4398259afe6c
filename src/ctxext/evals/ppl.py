"""Long-document perplexity: a per-position loss curve, reported per length bucket, in two protocols
(METHODS.md): `window` scores the first L tokens of each document (token p is predicted from the p tokens
before it, so the curve shows what position does), or with --windows W its first W consecutive L-token
windows; `sliding` moves an L-token window with a stride over the first 2L tokens and scores each token once,
with at least L − stride tokens of context (PI / YaRN's protocol). Each document starts with the tokenizer's
start tokens (BOS for Llama-style tokenizers, none for SmolLM2 or the fixtures), as the model saw documents in
training; so does each window. Documents shorter than L are skipped and said so.

Records: metric `ppl` (window) / `ppl_sliding`, one per bucket [start, end) of token positions plus one
overall (bucket null); n = windows scored (documents, or documents × --windows). The mean loss per position
is saved in DIR/curves/ for plots and fit.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np

from ..data import Document, documents_at_least, lead, special_prefix, windows_of
from ..errors import CtxextError
from .files import curve_path, save_array
from .scoring import token_nll
from .tasks import Cell, Settings, Task, TaskContext, register

SLIDING_SPAN = 2  # the sliding protocol scores the first SLIDING_SPAN × L tokens of a document


def stride_of(settings: Settings, length: int) -> int:
    return min(settings.stride or max(1, length // 2), length)


def sliding_ends(length: int, span: int, stride: int) -> list[int]:
    """Window ends: the first window is [0, L); each next one ends `stride` later; the last ends at span."""
    ends = list(range(length, span + 1, stride))
    if ends[-1] != span:
        ends.append(span)
    return ends


def sliding_nll(model: Any, tokens: np.ndarray, length: int, stride: int) -> np.ndarray:
    """NLL per document position over the first min(len, 2L) tokens (position 0: NaN, never predicted)."""
    span = min(len(tokens), SLIDING_SPAN * length)
    out = np.full(span, np.nan)
    scored = 0  # positions < scored are done
    for e in sliding_ends(length, span, stride):
        s = e - length
        nll = token_nll(model, tokens[s:e])  # predicts positions s+1 … e-1
        lo = max(scored, s + 1)
        out[lo:e] = nll[lo - s - 1:]
        scored = e
    return out


def bucket_records(ctx: TaskContext, metric: str, length: int, sums: np.ndarray, counts: np.ndarray,
                   n_docs: int) -> list[dict[str, Any]]:
    """One record per bucket of positions [b, b + width) that holds scored tokens, plus the overall figure."""
    w, recs = ctx.bucket, []
    for b in range(0, len(sums), w):
        c = counts[b:b + w].sum()
        if c > 0:
            recs.append(ctx.record("ppl", length, None, metric, math.exp(sums[b:b + w].sum() / c), n_docs,
                                   (b, min(b + w, len(sums)))))
    recs.append(ctx.record("ppl", length, None, metric, math.exp(sums.sum() / counts.sum()), n_docs))
    return recs


def read_as_model(ctx: TaskContext) -> list[Document]:
    """The documents as the model reads them: the tokenizer's start tokens (BOS) first."""
    prefix = special_prefix(ctx.tokenizer)
    return [Document(d.name, lead(prefix, d.tokens)) for d in ctx.docs or []]


def _usable(ctx: TaskContext, all_docs: list[Document], length: int) -> list[Document]:
    docs, short = documents_at_least(all_docs, length)
    if short:
        names = ", ".join(f"{d.name} ({len(d)})" for d in short[:3]) + (" …" if len(short) > 3 else "")
        ctx.log(f"ppl @ {length}: skipped {len(short)} document(s) shorter than {length} tokens: {names}")
    n = ctx.settings.samples_for(TASK)
    if 0 < len(docs) < n:  # one book as --data gives one document: the figure is not the average asked for
        ctx.log(f"ppl @ {length}: {len(docs)} document(s) of at least {length} tokens for the {n} asked "
                "(--samples); the figure averages those")
    return docs[:n]


def _windows(ctx: TaskContext, docs: list[Document], length: int) -> list[tuple[str, int, np.ndarray]]:
    """(document, window index, tokens) of every window the window protocol scores at `length`: up to --windows
    consecutive windows of each document, each led by the start tokens. One window of a short model's curve is
    the book's opening (title page, contents): --windows averages what the text says, not how it starts."""
    prefix = special_prefix(ctx.tokenizer)
    asked = ctx.settings.windows or 1
    out, short = [], []
    for d in docs:
        pieces = windows_of(d.tokens[len(prefix):], prefix, length, asked)
        out += [(d.name, w, p) for w, p in enumerate(pieces)]
        if len(pieces) < asked:
            short.append(f"{d.name} ({len(pieces)})")
    if short:
        ctx.log(f"ppl @ {length}: {len(short)} document(s) hold fewer than the {asked} windows asked (--windows): "
                + ", ".join(short[:3]) + (" …" if len(short) > 3 else ""))
    return out


def sliced_lengths(lengths: list[int], same_freqs: Callable[[int, int], bool]) -> set[int]:
    """The lengths whose first windows run() reads from a longer length's forward: lengths go longest first, and one
    is a slice of the last length computed when forwards of the two rotate shared positions alike."""
    sliced, computed = set(), None
    for L in sorted(set(lengths), reverse=True):
        if computed is not None and same_freqs(L, computed):
            sliced.add(L)
        else:
            computed = L
    return sliced


def shared(mc: Any, lengths: list[int], s: Settings, same_freqs: Callable[[int, int], bool]) -> dict[int, float]:
    if s.protocol == "sliding":
        return {}
    return {L: s.samples_for(TASK) * mc.flops(L, scored=L) for L in sliced_lengths(lengths, same_freqs)}


def run(ctx: TaskContext, cells: list[Cell]) -> Iterator[tuple[Cell, list[dict[str, Any]]]]:
    s = ctx.settings
    firsts: dict[str, np.ndarray] = {}  # document -> NLL of its first tokens (longest first window computed so far)
    all_docs = read_as_model(ctx)
    for length in sorted({L for L, _ in cells}, reverse=True):  # longest first: shorter windows are slices
        docs = _usable(ctx, all_docs, length)
        recs: list[dict[str, Any]] = []
        if s.protocol in ("window", "both"):
            sums, counts = np.zeros(length), np.zeros(length)
            pieces = _windows(ctx, docs, length)
            for name, w, tokens in pieces:
                prev = firsts.get(name) if w == 0 else None
                if prev is not None and len(prev) >= length - 1 and ctx.same_freqs(length, len(prev) + 1):
                    nll = prev[:length - 1]  # the first L positions of a longer causal forward are this forward
                else:
                    nll = token_nll(ctx.model, tokens)
                    if w == 0:
                        firsts[name] = nll
                    ctx.tick(ctx.cost.flops(length, scored=length))  # estimated work done (the bar's unit)
                sums[1:] += nll
                counts[1:] += 1
            curve = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            save_array(curve_path(ctx.out, "ppl", ctx.spec.text, length), curve)
            ctx.memo[("ppl", length)] = (curve, len(pieces))
            recs += bucket_records(ctx, "ppl", length, sums, counts, len(pieces))
        if s.protocol in ("sliding", "both"):
            stride = stride_of(s, length)
            sums, counts = np.zeros(SLIDING_SPAN * length), np.zeros(SLIDING_SPAN * length)
            for d in docs:
                nll = sliding_nll(ctx.model, d.tokens, length, stride)
                ok = ~np.isnan(nll)
                sums[:len(nll)][ok] += nll[ok]
                counts[:len(nll)][ok] += 1
                ctx.tick(len(sliding_ends(length, len(nll), stride)) * ctx.cost.flops(length, scored=stride))
            used = int(np.nonzero(counts)[0].max()) + 1
            sums, counts = sums[:used], counts[:used]
            save_array(curve_path(ctx.out, "ppl_sliding", ctx.spec.text, length),
                       np.where(counts > 0, sums / np.maximum(counts, 1), np.nan))
            recs += bucket_records(ctx, "ppl_sliding", length, sums, counts, len(docs))
        yield (length, None), recs


def cost(mc: Any, length: int, depths: list[float], s: Settings) -> tuple[float, float]:
    n = s.samples_for(TASK)
    flops = 0.0
    if s.protocol in ("window", "both"):
        flops += n * (s.windows or 1) * mc.flops(length, scored=length)
    if s.protocol in ("sliding", "both"):
        stride = stride_of(s, length)
        flops += n * len(sliding_ends(length, SLIDING_SPAN * length, stride)) * mc.flops(length, scored=stride)
    return flops, mc.peak_forward(length)


def check(docs: list[Document], lengths: list[int]) -> None:
    longest = max((len(d) for d in docs), default=0)
    too_long = [L for L in lengths if L > longest]
    if too_long:
        what = "every length" if len(too_long) == len(lengths) else f"length(s) {', '.join(map(str, too_long))}"
        raise CtxextError(f"ppl: no document is long enough for {what} (the longest has {longest} tokens); "
                          "give longer documents or shorter --lengths")


TASK = register(Task(
    name="ppl", summary="per-position perplexity curve over long documents (window / sliding protocols)",
    run=run, cost=cost, metric="ppl", needs_data=True, default_samples=4, check=check,
    options=("samples", "protocol", "windows", "stride", "bucket"), samples_are_documents=True, shared=shared,
))
