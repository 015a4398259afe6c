"""Needle-driven perplexity (LongRoPE2, Shang et al. 2025, https://arxiv.org/abs/2502.20082): a magic number for a
key is stated at the start of a long book passage, the question comes at the end, and only the answer tokens are
scored — perplexity that measures use of distant context instead of local fluency. Records: metric `ppl` per
length (exp of the mean NLL over all answer tokens of all trials), n = trials. The answer is the number's own
tokens: a tokenizer that splits " 1234567" into " " and digits (SmolLM2's, the fixtures') has the space read as
the question's last token, not scored (the figure is about recalling the number, not about spacing).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from ..data import special_prefix
from .needles import check_total, encode, haystack_stream, key_rng, prompt_check, random_number, room
from .scoring import Probe, Scorer
from .tasks import Cell, Settings, Task, TaskContext, register

HEADER = ("A special magic number is hidden within the following text. Make sure to memorize it. "
          "I will quiz you about the magic number afterwards.\n")
NEEDLE = "One of the special magic numbers for {key} is: {value}.\n"
QUESTION = ("\nWhat is the special magic number for {key} mentioned in the provided text? "
            "The special magic number for {key} mentioned in the provided text is")
DIGITS = 7
WORDS = ("amber", "bright", "calm", "silent", "golden", "hidden", "lucky", "quiet", "rapid", "silver",
         "apple", "river", "falcon", "harbor", "lantern", "meadow", "orchid", "pepper", "summit", "violin")


def split_answer(tok: Any, question: np.ndarray, answer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(question, answer) with the answer's leading whitespace-only tokens moved to the question's end: the same
    token sequence, scored from the first token that carries the number."""
    k = 0
    while k < len(answer) - 1 and not tok.decode([int(answer[k])]).strip():
        k += 1
    return np.concatenate([question, answer[:k]]), answer[k:]


def probe_of(tok: Any, s: Settings, length: int, trial: int, at: int) -> Probe:
    """Trial `trial`'s needle (at token `at`), question and answer at `length`."""
    rng = key_rng(s.seed, "needle-ppl", length, None, trial)
    key = f"{WORDS[rng.integers(0, 10)]}-{WORDS[rng.integers(10, 20)]}"
    value = random_number(rng, DIGITS)
    question, answer = split_answer(tok, encode(tok, QUESTION.format(key=key)), encode(tok, f" {value}"))
    return Probe(at, encode(tok, NEEDLE.format(key=key, value=value)), question, answer)


def head_of(tok: Any) -> np.ndarray:
    return np.concatenate([special_prefix(tok), encode(tok, HEADER)])


def draft(tok: Any, s: Settings, length: int, cells: list[Cell]) -> tuple[int, list[Probe], int]:
    head = head_of(tok)
    return len(head), [probe_of(tok, s, length, t, len(head)) for t in range(s.samples_for(TASK))], 1


def run(ctx: TaskContext, cells: list[Cell]) -> Iterator[tuple[Cell, list[dict[str, Any]]]]:
    tok = ctx.tokenizer
    scorer = Scorer(ctx.model, tok, ctx.settings.max_new_tokens)
    head = head_of(tok)
    n = ctx.settings.samples_for(TASK)
    for length in sorted({L for L, _ in cells}):
        stream = haystack_stream(ctx, "needle-ppl", length)
        nll_sum, count = 0.0, 0
        for t in range(n):
            probe = probe_of(tok, ctx.settings, length, t, len(head))
            n_hay = room("needle-ppl", length, len(head), [probe])
            start = (t * n_hay) % max(1, len(stream) - n_hay + 1)  # a different passage per trial
            base = np.concatenate([head, stream[start:start + n_hay]])
            (res,) = scorer.score(base, [probe], reuse=False)
            ctx.tick(ctx.cost.flops(length, scored=len(probe.answer) + 1))
            nll_sum += float(res.nll.sum())
            count += len(res.nll)
        yield (length, None), [ctx.record("needle-ppl", length, None, "ppl", math.exp(nll_sum / count), n)]


def cost(mc: Any, length: int, depths: list[float], s: Settings) -> tuple[float, float]:
    return s.samples_for(TASK) * mc.flops(length, scored=8), mc.peak_cached(length, plain=True)


TASK = register(Task(
    name="needle-ppl", summary="LongRoPE2 needle-driven perplexity: NLL of the answer tokens only",
    run=run, cost=cost, metric="ppl", needs_data=True, default_samples=5, check=check_total("needle-ppl"),
    check_prompt=prompt_check("needle-ppl", draft), version=2,  # 2: the number's tokens only
    options=("samples",),
))
