"""Needle in a haystack: real book text from --data as the haystack, a needle sentence "The special magic
number is N." (N: 7 digits) placed at depth d of the haystack, snapped to the nearest sentence end, and the
question at the end; a grid of lengths × depths, drawn as the usual heatmap. Verdicts as in passkey (first
integer of greedy decoding equals N, teacher-forced). Records: metric `accuracy` per (length, depth), n = trials.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..data import special_prefix
from .needles import (check_total, depth_cost, encode, haystack_stream, key_rng, random_number, room, run_probes,
                      sentence_starts)
from .scoring import Probe
from .tasks import Cell, Settings, Task, TaskContext, register

NEEDLE = " The special magic number is {key}."
QUESTION = "\n\nWhat is the special magic number mentioned in the text above? The special magic number is"
DIGITS = 7


def build(ctx: TaskContext, length: int, cells: list[Cell]) -> tuple[np.ndarray, list[Probe], list[Cell]]:
    tok = ctx.tokenizer
    head = special_prefix(tok)
    question = encode(tok, QUESTION)
    pieces: list[tuple[Cell, np.ndarray, np.ndarray, str]] = []
    for cell in cells:
        for t in range(ctx.settings.samples_for(TASK)):
            key = random_number(key_rng(ctx.settings.seed, "niah", length, cell[1], t), DIGITS)
            pieces.append((cell, encode(tok, NEEDLE.format(key=key)), encode(tok, f" {key}"), key))
    n_hay = room("niah", length, len(head), [Probe(0, n, question, a, k) for _, n, a, k in pieces])
    hay = haystack_stream(ctx, "niah", length)[:n_hay]
    starts = sentence_starts(tok, hay)
    hay = hay[:starts[-2]] if len(starts) > 2 else hay  # end the haystack after its last whole sentence
    starts = starts[starts <= len(hay)]
    base = np.concatenate([head, hay])

    def at(depth: float) -> int:
        return len(head) + int(starts[np.argmin(np.abs(starts - depth * len(hay)))])

    return base, [Probe(at(cell[1]), n, question, a, k) for cell, n, a, k in pieces], [p[0] for p in pieces]


def run(ctx: TaskContext, cells: list[Cell]) -> Iterator[tuple[Cell, list[dict[str, Any]]]]:
    return run_probes(ctx, "niah", cells, build)


def cost(mc: Any, length: int, depths: list[float], s: Settings) -> tuple[float, float]:
    return depth_cost(mc, length, depths, s.samples_for(TASK), s)


TASK = register(Task(
    name="niah", summary="needle in real book text over a lengths × depths grid, at sentence ends (heatmap)",
    run=run, cost=cost, metric="accuracy", needs_data=True, uses_depths=True, default_samples=2,
    higher_is_better=True, check=check_total("niah"),
))
