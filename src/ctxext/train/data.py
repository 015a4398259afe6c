"""Training data: documents packed into rows of N tokens, with document boundaries respected.

Packing. Every document (ctxext.data: a text file, or a JSONL line) is tokenised once and cached per tokenizer,
led by the tokenizer's start tokens (BOS for Llama-style tokenizers, none for GPT-2 style) and followed by EOS; the documents are concatenated in a fixed order and cut into rows of exactly N tokens
(the last partial row is dropped). A long book fills many rows; a row may hold the end of one document and
the start of the next. At such a boundary

- position ids restart at 0, so the new document sees the positions it would see alone, and
- attention does not cross it: transformers reads the restart from `position_ids` and builds a block-diagonal
  causal mask (SDPA/eager) or runs varlen kernels (flash-attention 2), see
  transformers.masking_utils.find_packed_sequence_indices;
- the label that would predict the new document's first token from the old one is ignored (-100).

A row that starts inside a document starts at position 0 too (the model has no access to what came before).
Rows are visited in a seeded random order, one permutation per epoch, so the data position is one integer:
the number of rows consumed so far (what a checkpoint stores).

Mixed context window (LongRoPE2): a "short" step reshapes its rows (B, N) into (B·N/L, L) rows of the original
window L, so short and long steps see the same number of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..errors import CtxextError

IGNORE = -100  # label that the loss skips


@dataclass(frozen=True)
class PackedRows:
    """`ids` (n_rows, N) int32 token ids; `starts` (n_rows, N) bool, True where a document starts."""

    ids: np.ndarray
    starts: np.ndarray
    n_documents: int

    @property
    def n_rows(self) -> int:
        return int(self.ids.shape[0])

    def padding(self, idx: np.ndarray) -> int:
        """Padding tokens in rows `idx` (packed documents fill every row: none)."""
        return 0

    @property
    def seq_len(self) -> int:
        return int(self.ids.shape[1])


def pack(docs: Sequence[np.ndarray], seq_len: int, eos_id: int | None) -> PackedRows:
    """Concatenate documents (each followed by EOS when eos_id is given) and cut rows of seq_len tokens."""
    if seq_len < 2:
        raise CtxextError(f"--seq-len must be >= 2, got {seq_len}")
    parts, starts = [], []
    for d in docs:
        d = np.asarray(d, dtype=np.int32)
        if eos_id is not None:
            d = np.append(d, np.int32(eos_id))
        if d.size == 0:
            continue
        s = np.zeros(d.size, dtype=bool)
        s[0] = True
        parts.append(d)
        starts.append(s)
    total = sum(p.size for p in parts)
    n_rows = total // seq_len
    if n_rows == 0:
        raise CtxextError(f"the data holds {total} tokens, fewer than one sequence of --seq-len {seq_len}")
    ids = np.concatenate(parts)[: n_rows * seq_len].reshape(n_rows, seq_len)
    st = np.concatenate(starts)[: n_rows * seq_len].reshape(n_rows, seq_len)
    return PackedRows(ids, st, len(parts))


def load_rows(paths: Iterable[str], tokenizer: Any, seq_len: int) -> PackedRows:
    """Tokenise (cached by ctxext.data) and pack the documents under `paths`."""
    from ..data import lead, load_documents, special_prefix

    docs = load_documents(list(paths), tokenizer)
    prefix = special_prefix(tokenizer)
    return pack([lead(prefix, d.tokens) for d in docs], seq_len, tokenizer.eos_token_id)


def model_inputs(ids: np.ndarray, starts: np.ndarray, row_len: int | None = None,
                 targets: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """input_ids, position_ids and shifted labels for rows (B, N), optionally re-cut into rows of row_len.

    positions count from the last document start (or row start); labels[t] = ids[t+1] when t+1 continues the
    same document (and, with `targets` (B, N) bool, is a target: instruction tuning's loss mask), else IGNORE
    (also at the last position)."""
    if row_len is not None and row_len != ids.shape[1]:
        if ids.shape[1] % row_len:
            raise CtxextError(f"rows of {ids.shape[1]} tokens cannot be cut into rows of {row_len}")
        ids, starts = ids.reshape(-1, row_len), starts.reshape(-1, row_len)
    starts = starts.copy()
    starts[:, 0] = True
    idx = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    last_start = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
    labels = np.full(ids.shape, IGNORE, dtype=np.int64)
    skip = starts[:, 1:] if targets is None else starts[:, 1:] | ~targets[:, 1:]
    labels[:, :-1] = np.where(skip, IGNORE, ids[:, 1:])
    return {"input_ids": torch.from_numpy(ids.astype(np.int64)),
            "position_ids": torch.from_numpy((idx - last_start).astype(np.int64)),
            "labels": torch.from_numpy(labels)}


class RowOrder:
    """Which rows a step uses: a seeded permutation per epoch; position = rows consumed so far."""

    def __init__(self, n_rows: int, seed: int):
        self.n_rows, self.seed = n_rows, seed
        self._epoch, self._perm = -1, np.arange(0)

    def rows(self, start: int, count: int) -> np.ndarray:
        """Row indices for data positions start … start+count−1."""
        out = np.empty(count, dtype=np.int64)
        for i, p in enumerate(range(start, start + count)):
            epoch, k = divmod(p, self.n_rows)
            if epoch != self._epoch:
                self._epoch = epoch
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
            out[i] = self._perm[k]
        return out


def is_short_step(step: int, short_fraction: float) -> bool:
    """Mixed window: spread short steps evenly (step i is short when ⌊(i+1)f⌋ > ⌊i·f⌋)."""
    return int((step + 1) * short_fraction) > int(step * short_fraction)
