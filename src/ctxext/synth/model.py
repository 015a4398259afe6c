"""The generator model's two operations: greedy completion of a prompt (stopping at a newline) and a calibrated
yes/no verdict."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import CtxextError
from ..evals.longqa import greedy_answer
from ..evals.scoring import eos_ids, extend, logits, new_cache
from . import prompts


def verdict_tokens(tok: Any, chat: bool = False) -> tuple[int, int, list[int]]:
    """(yes id, no id, tokens to put after the prompt first) for the verdict. The word as it continues the prompt:
    " yes" when it is one token (GPT-2 style BPE), else "yes" when that is one token that carries SentencePiece's
    word-start marker (Llama, Mistral: " yes" is ['▁', '▁yes'] there, and " no" starts with the same '▁', so
    comparing first tokens compared '▁' with itself and rejected every pair); else the first token where " yes"
    and " no" differ, after their common start. In chat mode the answer opens the reply: no space."""
    def ids(word: str) -> list[int]:
        return list(tok(word, add_special_tokens=False)["input_ids"])

    pairs = [("yes", "no")] if chat else [(" yes", " no"), ("yes", "no")]
    for k, (y, n) in enumerate(pairs):
        a, b = ids(y), ids(n)
        marked = k == 0 or all(str(t).startswith("▁") for t in tok.convert_ids_to_tokens(a + b))
        if len(a) == 1 and len(b) == 1 and a != b and marked:
            return a[0], b[0], []
    a, b = ids(pairs[0][0]), ids(pairs[0][1])
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if k is None:
        raise CtxextError(f"synth-qa: this tokenizer writes '{pairs[0][0]}' and '{pairs[0][1]}' alike "
                          f"({a} / {b}); the yes/no verdict cannot tell them apart")
    return a[k], b[k], a[:k]


class Generator:
    def __init__(self, model: Any, tokenizer: Any, chat: bool = False):
        self.model, self.tok, self.chat = model, tokenizer, chat
        self.eos = eos_ids(model, tokenizer)
        self.yes, self.no, self.lead = verdict_tokens(tokenizer, chat)
        self._bias: float | None = None

    def _ids(self, prompt: str) -> np.ndarray:
        text = prompts.wrap(self.tok, prompt, self.chat)
        return np.asarray(self.tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    def _verdict_ids(self, prompt: str) -> np.ndarray:
        return np.concatenate([self._ids(prompt), np.asarray(self.lead, dtype=np.int64)])

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        """Greedy continuation up to the first newline after text (or EOS, or max_new_tokens)."""
        return greedy_answer(self.model, self.tok, self._ids(prompt), max_new_tokens, self.eos)[0]

    @torch.inference_mode()
    def _log_odds(self, prompt: str) -> float:
        h = extend(self.model, new_cache(self.model), self._verdict_ids(prompt), keep=1)
        lp = logits(self.model, h[-1:])[0].log_softmax(-1)
        return float(lp[self.yes] - lp[self.no])

    def verify(self, chunk: str, question: str, answer: str) -> float:
        """log P(yes) - log P(no) after the verification prompt, minus the same for a content-free input
        (contextual calibration): > 0 means the model leans to 'yes' more than it does by default."""
        if self._bias is None:
            cf = prompts.CONTENT_FREE
            self._bias = self._log_odds(prompts.verify_prompt(cf, cf, cf))
        return self._log_odds(prompts.verify_prompt(chunk, question, answer)) - self._bias
