"""The generator model's two operations: greedy completion of a prompt (stopping at a newline) and a calibrated
yes/no verdict."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..evals.longqa import greedy_answer
from ..evals.scoring import eos_ids, extend, logits, new_cache
from . import prompts


class Generator:
    def __init__(self, model: Any, tokenizer: Any, chat: bool = False):
        self.model, self.tok, self.chat = model, tokenizer, chat
        self.eos = eos_ids(model, tokenizer)
        self.yes = self._word_id(" yes")
        self.no = self._word_id(" no")
        self._bias: float | None = None

    def _word_id(self, word: str) -> int:
        ids = self.tok(word if not self.chat else word.strip(), add_special_tokens=False)["input_ids"]
        return int(ids[0])

    def _ids(self, prompt: str) -> np.ndarray:
        text = prompts.wrap(self.tok, prompt, self.chat)
        return np.asarray(self.tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        """Greedy continuation up to the first newline after text (or EOS, or max_new_tokens)."""
        return greedy_answer(self.model, self.tok, self._ids(prompt), max_new_tokens, self.eos)[0]

    @torch.inference_mode()
    def _log_odds(self, prompt: str) -> float:
        h = extend(self.model, new_cache(self.model), self._ids(prompt), keep=1)
        lp = logits(self.model, h[-1:])[0].log_softmax(-1)
        return float(lp[self.yes] - lp[self.no])

    def verify(self, chunk: str, question: str, answer: str) -> float:
        """log P(yes) - log P(no) after the verification prompt, minus the same for a content-free input
        (contextual calibration): > 0 means the model leans to 'yes' more than it does by default."""
        if self._bias is None:
            cf = prompts.CONTENT_FREE
            self._bias = self._log_odds(prompts.verify_prompt(cf, cf, cf))
        return self._log_odds(prompts.verify_prompt(chunk, question, answer)) - self._bias
