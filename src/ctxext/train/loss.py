"""Causal-LM loss without full-vocabulary logits: the decoder runs once, the LM head and cross-entropy run over
chunks of positions, each chunk under activation checkpointing, so at most one chunk's logits exist at a time,
in the forward and in the backward (16k positions × 49k vocab in fp32 would be 3.2 GB).

`LossModel` is the module that accelerate wraps (DDP, FSDP, DeepSpeed): the whole computation is inside its
forward, so the engines' hooks (gradient all-reduce, parameter all-gather) see every use of every weight.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .data import IGNORE

DEFAULT_CHUNK = 1024  # positions per LM-head chunk


class LossModel(nn.Module):
    """forward(input_ids, position_ids, labels) -> (summed token loss, number of scored tokens).

    Returning the sum (not the mean) lets the loop divide by the token count of the whole global batch, so one
    process and N processes with the same global batch compute the same loss and gradients."""

    def __init__(self, lm: nn.Module, chunk: int = DEFAULT_CHUNK):
        super().__init__()
        self.lm = lm  # a *ForCausalLM (possibly with LoRA layers injected by peft)
        self.chunk = chunk
        self.config = lm.config  # read by accelerate (DeepSpeed "auto" sizes)
        self._no_split_modules = getattr(lm, "_no_split_modules", None)  # FSDP wraps each decoder layer

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor):
        body = getattr(self.lm, self.lm.base_model_prefix)
        B, T = input_ids.shape
        if B > 1 and splits_packed_rows_alone(self.lm.config):
            # flash kernels split packed documents at position restarts (varlen) only in a batch of one row; with
            # more rows they run causal over each whole row, across document boundaries. Every row starts at
            # position 0 and its last label is ignored, so one row of B·T tokens is the same computation.
            input_ids, position_ids = input_ids.reshape(1, B * T), position_ids.reshape(1, B * T)
        hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        hidden = hidden.reshape(B, T, -1)  # (B, T, H)
        head = self.lm.get_output_embeddings()
        cap = getattr(self.lm.config, "final_logit_softcapping", None)
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, hidden.shape[1], self.chunk):
            h, y = hidden[:, s:s + self.chunk], labels[:, s:s + self.chunk]
            if torch.is_grad_enabled():
                total = total + checkpoint(_chunk_loss, head, h, y, cap, use_reentrant=False)
            else:
                total = total + _chunk_loss(head, h, y, cap)
        return total, (labels != IGNORE).sum()


def splits_packed_rows_alone(config: Any) -> bool:
    """Does this attention split packed documents (varlen) only in a batch of one row? The flash kernels do."""
    return "flash" in str(getattr(config, "_attn_implementation", ""))


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, cap: Any) -> torch.Tensor:
    logits = head(hidden).float()  # (B, C, V): the only place logits exist
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
