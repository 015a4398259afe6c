"""What passkey, niah and needle-ppl share: prompt pieces as tokens, random keys, the depth sweep that turns
probes into per-cell accuracy records, and its cost.

A length's probes (all pending depths × trials) share one haystack `base`; each probe inserts its needle at a
position of it. `Scorer.scores` runs them by increasing needle position over one cache, so the haystack is
encoded once per length and each probe pays only for what follows its needle.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..data import jsonl_lines
from ..errors import CtxextError
from .files import atomic_write, slug
from .scoring import Probe, Scorer, check_budget
from .tasks import Cell, Settings, TaskContext

Builder = Callable[[TaskContext, int, list[Cell]], tuple[np.ndarray, list[Probe], list[Cell]]]


def encode(tokenizer: Any, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


def key_rng(seed: int, task: str, length: int, depth: float | None, trial: int) -> np.random.Generator:
    """A generator that depends only on the cell and trial, so a resumed or reordered run draws the same keys."""
    tag = sum(ord(c) * 31 ** i for i, c in enumerate(task)) % 2**31
    d = -1 if depth is None else int(round(depth * 1e6))
    return np.random.default_rng([seed, tag, length, d + 1, trial])


def random_number(rng: np.random.Generator, digits: int) -> str:
    return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


def sizing_cells(ctx: TaskContext, length: int, cells: list[Cell]) -> list[Cell]:
    """The cells a length's haystack is sized for: every depth of the run, not only the pending ones, so a resumed or
    partial sweep builds the prompts an uninterrupted run does (keys that tokenize to more tokens shrink it)."""
    return sorted({*cells, *((length, d) for d in ctx.depths)}, key=lambda c: (c[1] is None, c[1] or 0.0))


def room(task: str, length: int, fixed: int, probes: list[Probe], unit: int = 1) -> int:
    """Haystack tokens left in `length` after the fixed pieces and the longest needle + question + answer."""
    extra = max(p.extra() for p in probes)
    left = length - fixed - extra
    if left < unit:
        raise CtxextError(f"{task}: length {length} is too short for the prompt ({fixed + extra + unit} tokens "
                          "without any haystack); use a longer length")
    return left


Draft = Callable[[Any, Settings, int, list[Cell]], tuple[int, list[Probe], int]]


def prompt_check(task: str, draft: Draft) -> Callable[..., None]:
    """Task.check_prompt from `draft(tokenizer, settings, length, cells)` -> (fixed tokens, probes, haystack unit):
    the probes' prompt must leave haystack room in `length`, and their answers fit the decoding budget."""
    def check(tokenizer: Any, settings: Settings, length: int, cells: list[Cell], data: Any = None) -> None:
        fixed, probes, unit = draft(tokenizer, settings, length, cells)
        room(task, length, fixed, probes, unit)
        check_budget(probes, settings.max_new_tokens)
    return check


def run_probes(ctx: TaskContext, task: str, cells: list[Cell], build: Builder
               ) -> Iterator[tuple[Cell, list[dict[str, Any]]]]:
    """Per length: build its probes, score them over one shared haystack, yield each cell's accuracy as soon
    as its trials are done."""
    scorer = Scorer(ctx.model, ctx.tokenizer, ctx.settings.max_new_tokens,
                    reusable=lambda prefix, total: ctx.same_freqs(1, total))
    for length in sorted({L for L, _ in cells}):
        base, probes, owners = build(ctx, length, [c for c in cells if c[0] == length])
        trials = Counter(owners)
        left = trials.copy()
        right: dict[Cell, int] = defaultdict(int)
        rows: dict[Cell, list[dict[str, Any]]] = defaultdict(list)
        seen: Counter = Counter()
        trial_of = []  # probe -> its trial index within its cell
        for c in owners:
            trial_of.append(seen[c])
            seen[c] += 1
        decoded = 0
        for i, res, new, past in scorer.scores(base, probes, ctx.settings.reuse_prefix):
            ctx.tick(ctx.cost.flops(new, past, scored=len(probes[i].answer) + 1))
            cell = owners[i]
            right[cell] += bool(res.correct)
            decoded += res.generated > 0
            left[cell] -= 1
            rows[cell].append({"trial": trial_of[i], "depth": cell[1], "needle_at": probes[i].at,
                               "prompt_tokens": len(probes[i].prompt(base)),  # NIAH cuts at a sentence start
                               "target": probes[i].target, "answer": ctx.tokenizer.decode(list(res.tokens)),
                               "correct": bool(res.correct), "greedy_steps": res.generated})
            if left[cell] == 0:
                n = trials[cell]
                write_answers(ctx, task, length, cell[1], sorted(rows.pop(cell), key=lambda r: r["trial"]))
                yield cell, [ctx.record(task, length, cell[1], "accuracy", right[cell] / n, n)]
        if decoded:
            ctx.log(f"{task} @ {length}: {decoded}/{len(probes)} verdicts needed greedy decoding past the "
                    "teacher-forced answer")


def answers_path(out: Path, task: str, spec_text: str, length: int) -> Path:
    return Path(out) / "answers" / f"{task}-{slug(spec_text)}-{length}.jsonl"


def write_answers(ctx: TaskContext, task: str, length: int, depth: float | None, rows: list[dict[str, Any]]) -> None:
    """Every trial of a finished cell (target, what greedy decoding answered, verdict) into
    OUT/answers/<task>-<spec>-<length>.jsonl, replacing that depth's earlier rows (a resumed run rewrites none of the
    cells it skips)."""
    path = answers_path(ctx.out, task, ctx.spec.text, length)
    old = [json.loads(x) for x in jsonl_lines(path) if x.strip()] if path.is_file() else []
    keep = [r for r in old if r.get("depth") != depth]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in sorted(keep + rows, key=lambda r: (r["depth"], r["trial"]))))


def depth_cost(mc: Any, length: int, depths: list[float], trials: int, s: Settings) -> tuple[float, float]:
    """FLOPs per depth cell and peak bytes of a depth sweep at one length."""
    d = sorted(depths) or [0.0]
    if s.reuse_prefix:
        total = mc.flops(int(max(d) * length)) + trials * sum(
            mc.flops(length - int(x * length), int(x * length), scored=8) for x in d)
    else:
        total = trials * len(d) * mc.flops(length, scored=8)
    return total / len(d), mc.peak_branches(length) if s.reuse_prefix else mc.peak_cached(length, plain=True)


CJK_CLOSERS = "」』）”’\"')]】〕"


def sentence_starts(tokenizer: Any, ids: np.ndarray) -> np.ndarray:
    """Indices i (0 < i < len) where a sentence has just ended before ids[i] (so a needle sentence inserted at i
    sits between two sentences), plus 0 and len(ids). Latin terminators (. ! ?) count when whitespace follows;
    CJK ones (。！？ and full-width ．) when no closing quote or bracket follows, as CJK text puts no space after
    them."""
    import re

    end = re.compile(r"[.!?][\"'”’)\]]*$")
    end_ws = re.compile(r"[.!?][\"'”’)\]]*\s+$")
    end_cjk = re.compile(r"[。！？．][\"'”’)\]」』）]*\s*$")
    uniq = np.unique(ids)
    texts = {int(t): tokenizer.decode([int(t)]) for t in uniq}
    ends = {t for t, s in texts.items() if end.search(s)}
    ends_ws = {t for t, s in texts.items() if end_ws.search(s)}
    starts_ws = {t for t, s in texts.items() if s[:1].isspace()}
    prev, nxt = ids[:-1], ids[1:]
    ok = np.isin(prev, list(ends_ws)) | (np.isin(prev, list(ends)) & np.isin(nxt, list(starts_ws)))
    # CJK: a token that ends in a terminator, or (byte-level vocabularies split many CJK characters, ！？ in
    # SmolLM2's, over tokens that decode to U+FFFD alone) one that does with the two before it
    cjk = np.isin(prev, [t for t, s in texts.items() if end_cjk.search(s) and t not in ends_ws])
    partial = [t for t, s in texts.items() if "\ufffd" in s]
    decoded: dict[tuple[int, ...], str] = {}

    def text(a: int, b: int) -> str:
        key = tuple(int(x) for x in ids[max(0, a):b])
        if key not in decoded:
            decoded[key] = tokenizer.decode(list(key))
        return decoded[key]

    for i in np.nonzero(np.isin(prev, partial))[0] if partial else ():
        cjk[i] |= bool(end_cjk.search(text(i - 2, i + 1)))
    def closes(a: int) -> bool:  # does the text from token a on start with a closing quote or bracket?
        first = text(a, a + 3)[:1]
        return bool(first) and first in CJK_CLOSERS

    for i in np.nonzero(cjk)[0]:  # 「…。」: the sentence ends after the closers, which later tokens may carry
        if not closes(i + 1):
            ok[i] = True
            continue
        for j in range(i + 1, min(i + 4, len(prev))):
            run = text(i + 1, j + 1)
            if run and "\ufffd" not in run and all(c in CJK_CLOSERS for c in run) and not closes(j + 1):
                ok[j] = True
                break
    return np.concatenate([[0], np.nonzero(ok)[0] + 1, [len(ids)]]).astype(np.int64)


def haystack_stream(ctx: TaskContext, task: str, length: int) -> np.ndarray:
    """All documents as one token stream, separated by a blank line."""
    docs = ctx.docs or []
    sep = encode(ctx.tokenizer, "\n\n")
    parts: list[np.ndarray] = []
    for d in docs:
        parts += [np.asarray(d.tokens, dtype=np.int64), sep]
    stream = np.concatenate(parts[:-1]) if parts else np.zeros(0, np.int64)
    if len(stream) < length:
        raise CtxextError(f"{task}: the data holds {len(stream)} tokens, fewer than length {length}")
    return stream


def check_total(task: str) -> Callable[[list, list[int]], None]:
    def check(docs: list, lengths: list[int]) -> None:
        total = sum(len(d) for d in docs)
        if total < max(lengths):
            raise CtxextError(f"{task}: the data holds {total} tokens in all, fewer than length {max(lengths)}; "
                              "give more text or shorter --lengths")

    return check
