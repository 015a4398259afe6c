"""Causal attention without a materialised mask when queries continue a KV cache (CPU), and a branch cache whose
shared prefix is read in place.

Stock transformers gives SDPA an explicit (queries × keys) boolean mask whenever a forward continues a cache,
and SDPA then computes every (query, key) pair, the masked ones included, in a slower masked kernel. For the
haystack prefixes the needle tasks share, that is the common case. Here, while `fast_attention(model)` is
active, a plain causal mask is passed as None (meaning: causal, aligned to the last key) and attention over
[cached keys | own keys] is split in flash-attention calls — all cached keys unmasked, own keys with
`is_causal` — merged exactly by their log-sum-exp. Anything else (padding, sliding windows, a real mask,
GPUs) goes to transformers' SDPA path unchanged.

`BranchCache`: B sequences that continue one shared prefix (the trials of one needle depth after the haystack
before the needle). Each layer keeps the prefix keys/values once, as views of the cache that encoded the
haystack (batch 1, never copied or repeated per row), and only the rows' own tokens in its own tensors. Its
`update` returns the own keys alone; the attention below reads the prefix of the same layer from the cache
made active by `branch(cache)`, and attends to it with the B rows and the query heads of each key-value head
folded into one query axis: a single unmasked flash call per layer, no `repeat_kv` of the prefix (GQA).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

import torch
import torch.nn.functional as F

NAME = "ctxext_sdpa"
_registered = False
_ACTIVE: ContextVar[Any] = ContextVar("ctxext_branch", default=None)  # the BranchCache being run
_CLASSES: tuple[type, type] | None = None


def _mask(*, mask_function: Any, attention_mask: Any = None, allow_is_causal_skip: bool = True, **kw: Any):
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    if mask_function is causal_mask_function and allow_is_causal_skip and (
            attention_mask is None or bool(attention_mask.all())):
        return None  # plain causal, no padding: the attention below aligns it to the last key
    return sdpa_mask(mask_function=mask_function, attention_mask=attention_mask,
                     allow_is_causal_skip=allow_is_causal_skip, **kw)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
           causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU flash attention -> (output (B, H, T, Dv), log-sum-exp of the scores (B, H, T)). The kernel takes one head
    width; latent attention (DeepSeek) has values narrower than queries and keys (16 vs 24 in the tiny models):
    zero value channels add zero outputs, zero query/key channels zero scores, so padding is exact."""
    dq, dv = q.shape[-1], v.shape[-1]
    if dq != dv:
        scale = dq ** -0.5 if scale is None else scale  # the default would follow the padded width
        if dv < dq:
            v = F.pad(v, (0, dq - dv))
        else:
            q, k = F.pad(q, (0, dv - dq)), F.pad(k, (0, dv - dq))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=causal, scale=scale)
    return (out[..., :dv] if out.shape[-1] != dv else out), lse


def merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Softmax attention over the union of disjoint key sets, from each set's (output, log-sum-exp): exact. The
    result keeps the outputs' dtype (the log-sum-exps are fp32; a bf16 model's next projection needs bf16)."""
    if len(parts) == 1:
        return parts[0][0]
    if len(parts) == 2:  # the common case (prefix | own keys): out1 + (out0 - out1) * p0, p0 = sigmoid(lse0 - lse1)
        (o0, l0), (o1, l1) = parts
        return torch.addcmul(o1, o0 - o1, torch.sigmoid(l0 - l1)[..., None]).to(o1.dtype)
    m = parts[0][1]
    for _, lse in parts[1:]:
        m = torch.maximum(m, lse)
    num = den = None
    for out, lse in parts:
        w = torch.exp(lse - m)[..., None]
        num = out * w if num is None else num.addcmul_(out, w)
        den = w if den is None else den + w
    return (num / den).to(parts[0][0].dtype)


def _causal_parts(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  scale: float | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Causal attention of T queries over K >= T keys (queries = the last T positions), CPU, as flash parts."""
    T, K = q.shape[-2], k.shape[-2]
    if T == K:
        return [_flash(q, k, v, scale, True)]
    if T == 1:
        return [_flash(q, k, v, scale, False)]
    past = K - T
    return [_flash(q, k[:, :, :past], v[:, :, :past], scale, False),  # every earlier key is visible
            _flash(q, k[:, :, past:], v[:, :, past:], scale, True)]  # own keys: causal


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
    return merge(_causal_parts(q, k, v, scale))


def prefix_part(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of every query of B rows (B, H, T, D) over one shared, fully visible prefix k, v (1, Hkv, P, D):
    rows and the H/Hkv query heads of each key-value head become one query axis, so the prefix is neither
    repeated per row nor per query head. -> (output (B, H, T, D), log-sum-exp (B, H, T))."""
    B, H, T, D = q.shape
    g = k.shape[1]
    qf = q.reshape(B, g, (H // g) * T, D).transpose(0, 1).reshape(1, g, B * (H // g) * T, D)
    out, lse = _flash(qf, k, v, scale, False)
    Dv = out.shape[-1]  # the values' width (latent attention: narrower than D)
    out = out.reshape(g, B, H // g, T, Dv).transpose(0, 1).reshape(B, H, T, Dv)
    lse = lse.reshape(g, B, H // g, T).transpose(0, 1).reshape(B, H, T)
    return out, lse


def _repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if n == 1 else x[:, :, None].expand(-1, -1, n, -1, -1).reshape(x.shape[0], x.shape[1] * n, *x.shape[2:])


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
               dropout: float = 0.0, scaling: float | None = None, **kw: Any):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    branch = _ACTIVE.get()
    sliding = getattr(module, "sliding_window", None) or kw.get("sliding_window")
    if attention_mask is not None or sliding or kw.get("position_bias") is not None or module.training \
            or query.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        if branch is not None:
            raise RuntimeError("a branch cache needs the mask-free attention; this call would attend without its prefix")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw)
    n_rep = query.shape[1] // key.shape[1]
    if branch is not None:  # key/value hold the rows' own tokens; the shared prefix is read in place
        pk, pv = branch.take_prefix(module.layer_idx)
        parts = [prefix_part(query, pk, pv, scaling)]
        parts += _causal_parts(query, _repeat(key, n_rep), _repeat(value, n_rep), scaling)
        out = merge(parts)
    else:
        out = causal_attention(query, _repeat(key, n_rep), _repeat(value, n_rep), scaling)
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


_DISPATCHES: dict[type, bool] = {}


def dispatches(model: Any) -> bool:
    """Does every attention layer of `model` reach SDPA through transformers' attention interface? Some (Falcon)
    test `_attn_implementation == "sdpa"` themselves: under another name they take their eager branch, which adds
    the boolean mask ctxext's mask function returns instead of masking with it (future tokens leak in)."""
    import inspect

    kinds = {type(m) for m in model.modules() if type(m).__name__.endswith("Attention")}
    for kind in kinds - _DISPATCHES.keys():
        try:
            src = inspect.getsource(kind)
        except (OSError, TypeError):  # no source (compiled, dynamic): do not guess
            src = ""
        _DISPATCHES[kind] = "ALL_ATTENTION_FUNCTIONS" in src and '"sdpa"' not in src
    return bool(kinds) and all(_DISPATCHES[k] for k in kinds)


@contextmanager
def fast_attention(model: Any) -> Iterator[None]:
    """Use the mask-free causal attention inside the block for a model that runs on SDPA through transformers'
    attention interface; others unchanged."""
    before = getattr(model.config, "_attn_implementation", None)
    if before != "sdpa" or not dispatches(model):
        yield
        return
    register()
    _set(model, NAME)
    try:
        yield
    finally:
        _set(model, before)


# -------------------------------------------------------------------------------------------- branches


def fused_branches(model: Any) -> bool:
    """Can `model` run a BranchCache now: the mask-free attention is active, on CPU, no ctxext attention patch
    (length-dependent RoPE plans, Self-Extend, streaming) replaces the layers' forward, and no layer slides its
    window (those attend through the mask, which a branch cache cannot give them), and no layer caches latents it
    expands after the cache (DeepSeek's `expand_kv`: the prefix a branch reads would be the compressed one)."""
    from .scoring import has_sliding_window

    return (getattr(model.config, "_attn_implementation", None) == NAME
            and next(model.parameters()).device.type == "cpu"
            and not any(hasattr(m, "_ctxext_plan") or hasattr(m, "expand_kv") for m in model.modules())
            and not has_sliding_window(model))


def _branch_classes() -> tuple[type, type]:
    """BranchLayer / BranchCache, built on first use (transformers is imported lazily)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    from transformers.cache_utils import Cache, DynamicLayer

    class BranchLayer(DynamicLayer):
        """One layer: the shared prefix (1, Hkv, P, D) kept apart; `keys`/`values` hold the rows' own tokens."""

        is_croppable = False

        def __init__(self, prefix: tuple[torch.Tensor, torch.Tensor], own: tuple[torch.Tensor, torch.Tensor] | None = None):
            super().__init__()
            self.prefix = prefix
            self.pending = False
            if own is not None:
                self.lazy_initialization(*own)
                self.keys, self.values = own

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            keys, values = super().update(key_states, value_states)
            self.pending = True
            return keys, values

        def own_length(self) -> int:
            return 0 if not self.is_initialized or self.keys.numel() == 0 else self.keys.shape[-2]

        def get_seq_length(self) -> int:
            return self.prefix[0].shape[-2] + self.own_length()

    class BranchCache(Cache):
        """KV cache for B rows continuing one shared prefix (per layer (keys, values), each (1, Hkv, P, D)).
        `update` appends the rows' own keys and returns them alone; the mask-free attention reads the prefix
        through `take_prefix` while `branch(self)` is active."""

        def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]],
                     own: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
            own = own or [None] * len(prefix)
            super().__init__(layers=[BranchLayer(p, o) for p, o in zip(prefix, own)])
            self.prefix_len = prefix[0][0].shape[-2]

        def take_prefix(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
            layer = self.layers[layer_idx]
            if not layer.pending:
                raise RuntimeError(f"layer {layer_idx} attends without having updated its branch cache")
            layer.pending = False
            return layer.prefix

        def check(self) -> None:
            """After a forward: every layer that updated the cache also read its prefix (the attention was ours)."""
            if any(layer.pending for layer in self.layers):
                raise RuntimeError("a layer updated the branch cache but did not attend through the mask-free "
                                   "attention; the shared prefix would have been ignored")

        def row(self, b: int, length: int) -> BranchCache:
            """Row b alone, holding its first `length` tokens (prefix included), for continued decoding."""
            n = length - self.prefix_len
            if n < 0:
                raise ValueError(f"cannot keep {length} tokens of a branch whose prefix has {self.prefix_len}")
            return BranchCache([layer.prefix for layer in self.layers],
                               [(layer.keys[b:b + 1, :, :n], layer.values[b:b + 1, :, :n]) for layer in self.layers])

    _CLASSES = BranchLayer, BranchCache
    return _CLASSES


def branch_cache(prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A BranchCache over `prefix` (per layer (keys, values) of batch 1; views are fine, they are only read)."""
    return _branch_classes()[1](prefix)


@contextmanager
def branch(cache: Any) -> Iterator[Any]:
    """Make `cache` the one the attention reads prefixes from; checks afterwards that every layer did."""
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)
    cache.check()
