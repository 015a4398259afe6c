"""Instruction tuning data (`ctxext train --instruct FILE.jsonl`): long-document QA examples -> packed rows with
a loss mask.

Each example (any layout `ctxext eval --task longqa` reads, e.g. the output of `ctxext synth-qa`) becomes

    prompt = [BOS] <the whole context> "\\n\\nQuestion: <question>\\nAnswer:"      (the longqa prompt, uncut)
    answer = " <first gold answer>" EOS

so a tuned model is asked at evaluation exactly as it was trained. The loss covers the answer tokens, and with
prompt loss on (the default) the prompt tokens too: LLaMA 2 Long (Xiong et al. 2023, https://arxiv.org/abs/2309.16039,
section 4.3) found that computing the language-modelling loss on the long input prompts as well as the output
gave consistent downstream gains for long-context instruction tuning, and with a few dozen synthetic examples
the answer alone is ~10 tokens per ~2 000-token example, too little signal to keep the long context in use.
`--answer-loss-only` restores the usual output-only loss (the tokens the loss is averaged over change: the loss
is the mean over the scored tokens of a step).

Packing. Examples are taken in file order and laid into rows of --seq-len tokens: an example goes into the
current row when it fits, else it starts a new one; the rest of a row is padding (EOS ids, never scored, one
segment of its own). Examples are never cut: truncating would drop the document's start or the question and
answer, so an example longer than --seq-len is an error that names it and its length (raise --seq-len or
regenerate with a smaller synth-qa --max-len). Inside a row each example restarts its positions at 0 and does
not attend to its neighbours (ctxext.train.data: `starts` marks segment starts), and no label crosses from one
example into the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import CtxextError
from .data import PackedRows


@dataclass(frozen=True)
class InstructRows(PackedRows):
    """PackedRows of examples (n_documents counts them), plus `targets` (n_rows, N) bool: True where the token is a
    loss target (predicted from the token before it)."""

    targets: np.ndarray
    scored_answer_tokens: int
    scored_prompt_tokens: int
    filled: np.ndarray  # (n_rows,) tokens of examples in each row; the rest is padding

    def padding(self, idx: np.ndarray) -> int:
        return int(len(idx) * self.seq_len - self.filled[idx].sum())


def encode_example(tokenizer: Any, context: str, question: str, answer: str) -> tuple[np.ndarray, int]:
    """(token ids of prompt + answer + EOS, number of prompt tokens)."""
    from ..evals.longqa import QUESTION
    from ..data import special_prefix
    from ..evals.needles import encode

    prompt = np.concatenate([special_prefix(tokenizer), encode(tokenizer, context),
                             encode(tokenizer, QUESTION.format(question=question.strip()))])
    eos = tokenizer.eos_token_id
    ans = np.concatenate([encode(tokenizer, " " + answer.strip()),
                          np.asarray([] if eos is None else [eos], dtype=np.int64)])
    return np.concatenate([prompt, ans]).astype(np.int64), int(len(prompt))


def pack_examples(examples: Sequence[tuple[np.ndarray, int]], seq_len: int, pad_id: int,
                  prompt_loss: bool, names: Sequence[str] | None = None) -> InstructRows:
    """Lay (ids, n_prompt) examples into rows of seq_len (first fit in order, padding at the end of a row)."""
    if not examples:
        raise CtxextError("--instruct: no examples")
    for i, (ids, _) in enumerate(examples):
        if len(ids) > seq_len:
            who = names[i] if names else f"example {i + 1}"
            raise CtxextError(f"--instruct: {who} has {len(ids)} tokens, more than --seq-len {seq_len}; examples "
                              "are never truncated: raise --seq-len or make shorter examples (synth-qa --max-len)")
    rows: list[list[tuple[np.ndarray, int]]] = [[]]
    used = 0
    for ex in examples:
        if used + len(ex[0]) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(ex)
        used += len(ex[0])
    n = len(rows)
    ids = np.full((n, seq_len), pad_id, dtype=np.int32)
    starts = np.zeros((n, seq_len), dtype=bool)
    targets = np.zeros((n, seq_len), dtype=bool)
    n_ans = n_prompt = 0
    filled = np.zeros(n, dtype=np.int64)
    for r, row in enumerate(rows):
        p = 0
        for ex_ids, n_p in row:
            k = len(ex_ids)
            ids[r, p:p + k] = ex_ids
            starts[r, p] = True
            targets[r, p + n_p:p + k] = True  # answer tokens (+ EOS)
            n_ans += k - n_p
            if prompt_loss:
                targets[r, p + 1:p + n_p] = True  # every prompt token after the first (nothing predicts it)
                n_prompt += n_p - 1
            p += k
        filled[r] = p
        if p < seq_len:
            starts[r, p] = True  # the padding is a segment of its own, never a target
    return InstructRows(ids=ids, starts=starts, n_documents=len(examples), targets=targets,
                        scored_answer_tokens=n_ans, scored_prompt_tokens=n_prompt, filled=filled)


def load_instruct(paths: Sequence[str | Path], tokenizer: Any, seq_len: int, prompt_loss: bool) -> InstructRows:
    """Read QA JSONL files (longqa layouts) and pack them; the first gold answer is the target."""
    from ..evals.longqa import read_examples

    exs = read_examples(list(paths))
    enc = [encode_example(tokenizer, e.context, e.question, e.answers[0]) for e in exs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return pack_examples(enc, seq_len, int(pad if pad is not None else 0), prompt_loss, [e.id for e in exs])
