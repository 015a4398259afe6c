"""Causal attention without a materialised mask when queries continue a KV cache (CPU).

Stock transformers gives SDPA an explicit (queries × keys) boolean mask whenever a forward continues a cache,
and SDPA then computes every (query, key) pair, the masked ones included, in a slower masked kernel. For the
haystack prefixes the needle tasks share, that is the common case. Here, while `fast_attention(model)` is
active, a plain causal mask is passed as None (meaning: causal, aligned to the last key) and attention over
[cached keys | own keys] is split in two flash-attention calls — all cached keys unmasked, own keys with
`is_causal` — merged exactly by their log-sum-exp. Anything else (padding, sliding windows, a real mask,
GPUs) goes to transformers' SDPA path unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F

NAME = "ctxext_sdpa"
_registered = False


def _mask(*, mask_function: Any, attention_mask: Any = None, allow_is_causal_skip: bool = True, **kw: Any):
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    if mask_function is causal_mask_function and allow_is_causal_skip and (
            attention_mask is None or bool(attention_mask.all())):
        return None  # plain causal, no padding: the attention below aligns it to the last key
    return sdpa_mask(mask_function=mask_function, attention_mask=attention_mask,
                     allow_is_causal_skip=allow_is_causal_skip, **kw)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Causal attention of T queries over K >= T keys, the queries being the last T positions: (B, H, T, D)."""
    T, K = q.shape[-2], k.shape[-2]
    if T == K:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if T == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if q.device.type != "cpu":
        from torch.nn.attention.bias import causal_lower_right

        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(T, K), scale=scale)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    past = K - T
    o1, l1 = flash(q, k[:, :, :past], v[:, :, :past], scale=scale)  # every cached key is visible
    o2, l2 = flash(q, k[:, :, past:], v[:, :, past:], is_causal=True, scale=scale)  # own keys: causal
    m = torch.maximum(l1, l2)
    w1, w2 = torch.exp(l1 - m)[..., None], torch.exp(l2 - m)[..., None]
    return (o1 * w1 + o2 * w2) / (w1 + w2)


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
               dropout: float = 0.0, scaling: float | None = None, **kw: Any):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    sliding = getattr(module, "sliding_window", None) or kw.get("sliding_window")
    if attention_mask is not None or sliding or kw.get("position_bias") is not None or module.training \
            or query.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw)
    n_rep = getattr(module, "num_key_value_groups", 1)
    if n_rep > 1:
        key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    out = causal_attention(query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(NAME, _attention)
        AttentionMaskInterface.register(NAME, _mask)
        _registered = True


def _set(model: Any, name: str) -> None:
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = name


@contextmanager
def fast_attention(model: Any) -> Iterator[None]:
    """Use the mask-free causal attention inside the block for a model that runs on SDPA; others unchanged."""
    before = getattr(model.config, "_attn_implementation", None)
    if before != "sdpa":
        yield
        return
    register()
    _set(model, NAME)
    try:
        yield
    finally:
        _set(model, before)
