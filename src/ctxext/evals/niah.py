"""Needle in a haystack: real book text from --data as the haystack, a needle sentence "The special magic
number is N." (N: 7 digits) placed at depth d of the haystack, snapped to the nearest sentence end (when one is
within `snap_tolerance`; text with none there keeps the exact depth, said in the log), and the
question at the end; a grid of lengths × depths, drawn as the usual heatmap. Verdicts as in passkey (first
integer of greedy decoding equals N, teacher-forced). Records: metric `accuracy` per (length, depth), n = trials.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..data import special_prefix
from .needles import (check_total, depth_cost, encode, haystack_stream, key_rng, prompt_check, random_number, room,
                      run_probes, sentence_starts, sizing_cells)
from .scoring import Probe
from .tasks import Cell, Settings, Task, TaskContext, register

NEEDLE = " The special magic number is {key}."
QUESTION = "\n\nWhat is the special magic number mentioned in the text above? The special magic number is"
DIGITS = 7


def pieces_of(tok: Any, s: Settings, length: int, cells: list[Cell]) -> tuple[np.ndarray, np.ndarray,
                                                                                list[tuple[Cell, np.ndarray, np.ndarray, str]]]:
    """(head, question, per trial: (cell, needle, answer, key)) of a length's prompts."""
    pieces: list[tuple[Cell, np.ndarray, np.ndarray, str]] = []
    for cell in cells:
        for t in range(s.samples_for(TASK)):
            key = random_number(key_rng(s.seed, "niah", length, cell[1], t), DIGITS)
            pieces.append((cell, encode(tok, NEEDLE.format(key=key)), encode(tok, f" {key}"), key))
    return special_prefix(tok), encode(tok, QUESTION), pieces


def draft(tok: Any, s: Settings, length: int, cells: list[Cell]) -> tuple[int, list[Probe], int]:
    head, question, pieces = pieces_of(tok, s, length, cells)
    return len(head), [Probe(0, n, question, a, k) for _, n, a, k in pieces], 1


def build(ctx: TaskContext, length: int, cells: list[Cell]) -> tuple[np.ndarray, list[Probe], list[Cell]]:
    tok = ctx.tokenizer
    head, question, pieces = pieces_of(tok, ctx.settings, length, cells)
    every = pieces_of(tok, ctx.settings, length, sizing_cells(ctx, length, cells))[2]
    n_hay = room("niah", length, len(head), [Probe(0, n, question, a, k) for _, n, a, k in every])
    hay = haystack_stream(ctx, "niah", length)[:n_hay]
    starts = sentence_starts(tok, hay)
    tol = snap_tolerance(n_hay)
    if len(starts) > 2 and n_hay - starts[-2] <= tol:  # end the haystack after its last whole sentence
        hay = hay[:starts[-2]]
    starts = starts[starts <= len(hay)]
    base = np.concatenate([head, hay])
    loose: set[float] = set()

    def at(depth: float) -> int:
        want = depth * len(hay)
        near = int(starts[np.argmin(np.abs(starts - want))])
        if abs(near - want) <= tol:
            return len(head) + near
        loose.add(depth)  # no sentence end near the depth: the needle goes at the depth itself
        return len(head) + int(round(want))

    probes = [Probe(at(cell[1]), n, question, a, k) for cell, n, a, k in pieces]
    if loose:
        ctx.log(f"niah @ {length:,}: no sentence end within {tol:.0f} tokens of depth(s) "
                f"{', '.join(f'{d:g}' for d in sorted(loose))}; the needle sits there mid-text")
    return base, probes, [p[0] for p in pieces]


def snap_tolerance(n_hay: int) -> float:
    """How far (tokens) a needle may move to the nearest sentence start: 2 % of the haystack plus 32 tokens
    (a sentence or two of book text at any length; text without sentence ends keeps its depth)."""
    return 32 + 0.02 * n_hay


def run(ctx: TaskContext, cells: list[Cell]) -> Iterator[tuple[Cell, list[dict[str, Any]]]]:
    return run_probes(ctx, "niah", cells, build)


def cost(mc: Any, length: int, depths: list[float], s: Settings) -> tuple[float, float]:
    return depth_cost(mc, length, depths, s.samples_for(TASK), s)


TASK = register(Task(
    name="niah", summary="needle in real book text over a lengths × depths grid, at sentence ends (heatmap)",
    run=run, cost=cost, metric="accuracy", needs_data=True, uses_depths=True, default_samples=2,
    higher_is_better=True, check=check_total("niah"), check_prompt=prompt_check("niah", draft),
    options=("samples", "depths", "max_new_tokens", "no_prefix_reuse"),
))
