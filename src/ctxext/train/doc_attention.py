"""SDPA for packed training rows: causal attention inside each document instead of one block-diagonal mask.

transformers turns a row that holds a document boundary (positions restart) into a T×T boolean mask, and SDPA
with an explicit mask loses its causal fast path: 2.1× (4k) to 2.5× (8k) the time of `is_causal` on the CPU
(benchmarks/packed_attention.py). Attending within each document with `is_causal` computes the same result
(the mask is exactly "same document and causal") in less time than either. The split follows transformers' own
rule for packed rows (find_packed_sequence_indices): a new document starts where a position is not its
predecessor + 1.

Only the training forward takes this path (module in train mode, queries = keys, position_ids given); anything
else — evaluation, a KV cache — goes to transformers' SDPA unchanged. Since the training path never reads the mask,
the mask builder registered with it defers building when gradients are on (`LazyMask`): a packed row's T×T boolean
mask is 256 MiB at 16k and 4 GiB at 64k, held for the whole step.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

NAME = "ctxext_sdpa_docs"


def document_spans(position_ids: Any) -> list[list[tuple[int, int]]]:
    """Per row, the [start, end) spans of its documents (a new one where position != previous + 1)."""
    import torch

    step = torch.diff(position_ids, dim=1) != 1
    spans = []
    for row in step:
        cuts = [0] + (torch.nonzero(row).flatten() + 1).tolist() + [position_ids.shape[1]]
        spans.append(list(zip(cuts[:-1], cuts[1:])))
    return spans


# every layer (and its checkpointed recomputation) gets the same position_ids tensor in one step: find the spans
# once (one host sync on GPU, not one per layer). Holding the tensor keeps its identity from being reused.
_last: tuple[Any, list[list[tuple[int, int]]]] | None = None


def _spans_of(position_ids: Any) -> list[list[tuple[int, int]]]:
    global _last
    if _last is None or _last[0] is not position_ids:
        _last = (position_ids, document_spans(position_ids))
    return _last[1]


class LazyMask:
    """The arguments of transformers' sdpa_mask, built (once, shared by every layer) only if a fallback needs it."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.args, self.kwargs = args, kwargs
        self.built = False
        self._mask: Any = None

    def build(self) -> Any:
        if not self.built:
            from transformers.masking_utils import sdpa_mask

            self._mask, self.built = sdpa_mask(*self.args, **self.kwargs), True
        return self._mask


def lazy_sdpa_mask(*args: Any, **kwargs: Any) -> Any:
    """Mask builder for NAME: a LazyMask in a training forward (grad on), sdpa_mask's own tensor otherwise (so
    evaluation and generation see exactly what transformers builds)."""
    import torch
    from transformers.masking_utils import sdpa_mask

    return LazyMask(args, kwargs) if torch.is_grad_enabled() else sdpa_mask(*args, **kwargs)


def doc_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                  scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers attention function: (B, H, T, D) in, (B, T, H, D) out, as sdpa_attention_forward."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from ..models.attention import _SDPA_GQA

    pos = kwargs.get("position_ids")
    if not module.training or pos is None or query.shape[2] != key.shape[2] or pos.shape[-1] != query.shape[2]:
        if isinstance(attention_mask, LazyMask):
            attention_mask = attention_mask.build()
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    gqa = {}
    if key.shape[1] != query.shape[1]:  # grouped-query attention: one K/V head per group of query heads
        if _SDPA_GQA:
            gqa = {"enable_gqa": True}
        else:
            rep = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    rows = []
    per_row = _spans_of(pos)
    if len(per_row) == 1:  # position_ids (1, T) broadcast over the batch
        per_row = per_row * query.shape[0]
    for b, spans in enumerate(per_row):
        parts = [F.scaled_dot_product_attention(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                                                dropout_p=dropout, scale=scaling, is_causal=True, **gqa)
                 for s, e in spans]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the function and its mask builder under NAME; returns NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, doc_attention)
    AttentionMaskInterface.register(NAME, lazy_sdpa_mask)
    return NAME


@contextmanager
def plain_sdpa(model: Any) -> Iterator[None]:
    """transformers' SDPA inside the block (evaluation and export see the model as loaded), NAME again after."""
    before = getattr(model.config, "_attn_implementation", None)
    if before != NAME:
        yield
        return
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(NAME)
