"""Passkey retrieval, the standard protocol (Landmark attention, PI, YaRN; METHODS.md): the task line, the filler
"The grass is green. … There and back again." repeated, the key sentence "The pass key is N. Remember it. N is
the pass key." after a fraction `depth` of the filler, then "What is the pass key? The pass key is"; N a random
5-digit integer; correct when the first integer greedy decoding produces equals N.

Verdicts come from one teacher-forced forward per trial (greedy decoding only where that cannot decide, see
`scoring`), and the filler shared by every depth of a length is encoded once. Records: metric `accuracy` per
(length, depth), n = trials.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..data import special_prefix
from .needles import depth_cost, encode, key_rng, prompt_check, random_number, room, run_probes, sizing_cells
from .scoring import Probe
from .tasks import Cell, Settings, Task, TaskContext, register

TASK_LINE = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
             "I will quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
DIGITS = 5


def pieces_of(tok: Any, s: Settings, length: int, cells: list[Cell]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                                list[tuple[Cell, np.ndarray, np.ndarray, str]]]:
    """(head, filler unit, question, per trial: (cell, needle, answer, key)) of a length's prompts."""
    head = np.concatenate([special_prefix(tok), encode(tok, TASK_LINE)])
    pieces: list[tuple[Cell, np.ndarray, np.ndarray, str]] = []
    for cell in cells:
        for t in range(s.samples_for(TASK)):
            key = random_number(key_rng(s.seed, "passkey", length, cell[1], t), DIGITS)
            pieces.append((cell, encode(tok, NEEDLE.format(key=key)), encode(tok, f" {key}"), key))
    return head, encode(tok, FILLER), encode(tok, QUESTION), pieces


def draft(tok: Any, s: Settings, length: int, cells: list[Cell]) -> tuple[int, list[Probe], int]:
    head, unit, question, pieces = pieces_of(tok, s, length, cells)
    return len(head), [Probe(0, n, question, a, k) for _, n, a, k in pieces], len(unit)


def build(ctx: TaskContext, length: int, cells: list[Cell]) -> tuple[np.ndarray, list[Probe], list[Cell]]:
    head, unit, question, pieces = pieces_of(ctx.tokenizer, ctx.settings, length, cells)
    every = pieces_of(ctx.tokenizer, ctx.settings, length, sizing_cells(ctx, length, cells))[3]
    units = room("passkey", length, len(head), [Probe(0, n, question, a, k) for _, n, a, k in every],
                 len(unit)) // len(unit)
    base = np.concatenate([head, np.tile(unit, units)])
    probes = [Probe(len(head) + int(round(cell[1] * units)) * len(unit), n, question, a, k)
              for cell, n, a, k in pieces]
    return base, probes, [p[0] for p in pieces]


def run(ctx: TaskContext, cells: list[Cell]) -> Iterator[tuple[Cell, list[dict[str, Any]]]]:
    return run_probes(ctx, "passkey", cells, build)


def cost(mc: Any, length: int, depths: list[float], s: Settings) -> tuple[float, float]:
    return depth_cost(mc, length, depths, s.samples_for(TASK), s)


TASK = register(Task(
    name="passkey", summary="pass-key retrieval in repeated filler, depths swept (greedy verdicts, teacher-forced)",
    run=run, cost=cost, metric="accuracy", uses_depths=True, default_samples=5, higher_is_better=True,
    check_prompt=prompt_check("passkey", draft),
    options=("samples", "depths", "max_new_tokens", "no_prefix_reuse"),
))
