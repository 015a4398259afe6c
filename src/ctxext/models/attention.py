"""Attention for length-dependent RoPE methods: keys cached before RoPE, rotated at attention time.

Why: dynamic NTK / dynamic YaRN recompute frequencies for the current length. Stock transformers rotates each
key once, with the frequencies of the length at which it was produced, and caches the rotated key; later
queries use newer frequencies, so a cached generation and a no-cache forward over the same tokens disagree
(the known dynamic-NTK cache bug). Here every patched attention layer

1. projects q, k, v (q_proj/k_proj/v_proj with optional bias, or Phi3's fused qkv_proj; Qwen3's per-head
   q_norm/k_norm when present), and caches k **before** RoPE: ``past_key_values.update(k_unrotated, v)``;
2. keeps the positions of the cached keys next to the cache (below), so left padding, cache cropping and
   sliding-window layers stay correct;
3. hands queries, keys and both position sets to a **position plan**, which rotates them with the
   frequencies it chooses and runs attention (the HF attention interface, or SDPA per block);
4. applies o_proj.

Plans (one per kind of method; a plan sees pre-RoPE q/k and their positions, so later methods plug in here:
Self-Extend = two rotations merged before one softmax, StreamingLLM = sinks + window with positions by
cache slot, evicting through the same cache):

- `CausalLengthPlan` (dynamic-ntk, dynamic-yarn): the query at position j uses the frequencies for the length
  it saw when generated, t = j + 1, bucketed to tau(t) = t for t ≤ L (every t ≤ L gives the model's own
  frequencies, so they form one group) and ceil(t/G)·G past L, G = `GROUP` = 64. A no-cache forward groups
  queries by tau and, per group, rotates the group's queries and the keys it attends to with freqs(tau) and
  runs SDPA on that block (HF mask sliced, or causal). Each token's computation then depends only on its own
  position, so cached token-by-token generation and a no-cache forward give the same logits at every
  position, also past L. G trades exactness of "the length it saw" (at most G−1 tokens early) for speed:
  a forward past L costs one SDPA block per 64 queries.
- `SequenceLengthPlan` (longrope): sequence-level like stock transformers and vLLM, so searched factors are
  measured as they will be served: the whole forward uses the long factors when its length (max position
  + 1) exceeds L, the short ones otherwise. Cached keys are re-rotated when the length crosses L (free with a
  pre-RoPE cache), which makes a 1-layer model exact; in deeper models the cached values of layers ≥ 1 were
  computed under the short factors, a difference no cache can remove without re-encoding the prefix (see
  the tests for the size).

Key positions live in a dict on the cache object, ``cache._ctxext_key_positions[layer_idx]`` = LongTensor
(B, n) with the positions of every key the layer holds. Before each update the stored positions are trimmed
to the layer's current key count (a prefix for normal layers — ``crop`` removes from the end; a suffix for
sliding-window layers — they drop from the front), so crops and windows need no hooks. A cache that holds keys
ctxext did not write (rotated by stock code) is refused. Batch changes by ``batch_repeat_interleave`` (beam
search) are followed; other batch reindexing is followed when all rows share positions.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CtxextError
from ..scaling import RopeShape, Spec, resolve_rope
from ..scaling.spec import effective_shape
from .rope import PlannedRope, TorchFreqs, half_tables, rotate

GROUP = 64  # tokens per frequency bucket past the window for causal (dynamic) plans
MEMO_ELEMENTS = 64 * 2**20  # cos/sin elements one forward may keep for reuse across layers (256 MB in fp32)
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # SDPA's enable_gqa
POSITIONS_ATTR = "_ctxext_key_positions"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")


# ---------------------------------------------------------------------------------------------- the call


@dataclass
class AttnCall:
    """One attention layer's inputs, before RoPE. Shapes: query (B, H, T, D); key, value (B, Hkv, K, D);
    q_pos (B, T); k_pos (B, K). `mask` is the HF mask given to the layer (4D, or None = causal). `cache` is the
    HF cache (None without one) for plans that evict (StreamingLLM): its keys are pre-RoPE and their positions
    are in ``cache._ctxext_key_positions[module.layer_idx]``."""

    module: nn.Module
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    q_pos: torch.Tensor
    k_pos: torch.Tensor
    mask: torch.Tensor | None
    seq_len: int
    kwargs: dict[str, Any]
    memo: dict[Any, Any] = field(default_factory=dict)
    cache: Any = None

    def dense_mask(self) -> torch.Tensor | None:
        """The layer's mask as a tensor. Training forwards get ctxext's lazy document mask (built once, shared by
        the layers, only when a plan needs it: the plain kernel path never does)."""
        m = self.mask
        return m.build() if hasattr(m, "build") else m

    def table(self, f: TorchFreqs, pos: torch.Tensor, share: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin half tables (`rope.half_tables`) for positions `pos` under `f`; with `share`, kept for the other
        layers of this forward (within MEMO_ELEMENTS; past it, recomputed per layer)."""
        key = (id(f), tuple(pos.shape), pos.device)
        hit = self.memo.get(key)
        if hit is not None and (hit[0] is pos or torch.equal(hit[0], pos)):
            return hit[1], hit[2]
        cos, sin = half_tables(pos, f, self.query.dtype)
        held = self.memo.get("_elements", 0)
        if share and held + 2 * cos.numel() <= MEMO_ELEMENTS:
            self.memo[key] = (pos, cos, sin)
            self.memo["_elements"] = held + 2 * cos.numel()
        return cos, sin

    def rotate(self, x: torch.Tensor, pos: torch.Tensor, f: TorchFreqs, share: bool = True) -> torch.Tensor:
        return rotate(x, *self.table(f, pos, share))

    def rotated_keys(self, f: TorchFreqs, end: int | None = None) -> torch.Tensor:
        """Keys [0, end) rotated by `f`. Dynamic methods rotate the keys once per frequency bucket, so they are made
        contiguous once per layer: a projection's transposed view made each rotation ~5x slower."""
        end = self.key.shape[-2] if end is None else end
        if "_key" not in self.__dict__:
            self._key = self.key.contiguous()
        return rotate(self._key[:, :, :end], *self.table(f, self.k_pos[:, :end]))

    def run(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        """Attention through the model's own interface (sdpa, eager, flash …) with the layer's mask:
        -> (out (B, T, H, D), weights or None)."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.llama.modeling_llama import eager_attention_forward

        m = self.module
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(m.config._attn_implementation, eager_attention_forward)
        return interface(m, query, key, value, self.mask, dropout=0.0 if not m.training else m.attention_dropout,
                         scaling=m.scaling, sliding_window=sliding_window(m), **self.kwargs)

    def block(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, q_start: int, k_end: int):
        """SDPA for queries [q_start, q_start + Tq) against keys [0, k_end), with the matching slice of the
        layer's mask (bottom-right causal when the mask is None) -> (B, Tq, H, D)."""
        m, T, K = self.module, self.query.shape[-2], self.key.shape[-2]
        tq = query.shape[-2]
        causal = False
        layer_mask = self.dense_mask()
        if layer_mask is None and K - T + q_start == 0 and k_end == tq:  # square block from slot 0: plain causal
            mask, causal = None, True
        elif layer_mask is None:
            qi = torch.arange(tq, device=query.device) + (K - T + q_start)
            mask = torch.arange(k_end, device=query.device)[None, :] <= qi[:, None]
        elif layer_mask.dim() == 4:
            mask = layer_mask[..., q_start:q_start + tq, :k_end]
        else:
            raise CtxextError("dynamic methods past the window need a 4D attention mask; "
                              f"load the model with attn='sdpa' or attn='eager' (got "
                              f"'{m.config._attn_implementation}')")
        gqa = {}
        n_rep = getattr(m, "num_key_value_groups", 1)
        if n_rep > 1 and _SDPA_GQA:
            gqa = {"enable_gqa": True}
        elif n_rep > 1:
            key, value = key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=causal, scale=m.scaling,
                                             dropout_p=m.attention_dropout if m.training else 0.0, **gqa)
        return out.transpose(1, 2)


def sliding_window(m: nn.Module) -> int | None:
    if hasattr(m, "sliding_window"):  # Qwen2/Qwen3 set it per layer (None on full-attention layers)
        return m.sliding_window
    return getattr(m.config, "sliding_window", None)


# --------------------------------------------------------------------------------------------- the plans


class PositionPlan:
    """How pre-RoPE queries and keys, with their positions, become attention output.

    Subclasses choose frequencies (`bucket`: the representative length whose frequencies apply at length t)
    and implement `attend`. Frequencies are resolved once per bucket from ctxext.scaling and kept per device.
    """

    def __init__(self, spec: Spec, shape: RopeShape):
        self.spec, self.shape = spec, shape
        self.adjust: Callable[[int, Any], Any] | None = None  # set by make_plan
        eff = effective_shape(spec, shape)
        self.L = eff.original_len
        self.base_inv_freq = eff.theta()  # positions < n̂ (LongRoPE start tokens) keep these
        self._np: dict[int, Any] = {}
        self._dev: dict[tuple[int, str], TorchFreqs] = {}

    def bucket(self, t: int) -> int:
        raise NotImplementedError

    def resolved(self, bucket: int):
        if bucket not in self._np:
            freqs = resolve_rope(self.spec, self.shape, bucket)
            self._np[bucket] = freqs if self.adjust is None else self.adjust(bucket, freqs)
        return self._np[bucket]

    def freqs(self, bucket: int, device: torch.device | str) -> TorchFreqs:
        key = (bucket, str(device))
        if key not in self._dev:
            self._dev[key] = TorchFreqs.of(self.resolved(bucket), self.base_inv_freq, device)
        return self._dev[key]

    def attend(self, call: AttnCall) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise CtxextError at apply time if the spec cannot work with this plan (or this trained length)."""
        self.spec.params.check_trained_len(self.L)
        self.resolved(self.bucket(1))
        self.resolved(self.bucket(self.L + 1))


class SequenceLengthPlan(PositionPlan):
    """One frequency set per forward, chosen by its length (max position + 1): longrope's short/long switch."""

    def bucket(self, t: int) -> int:
        return self.L + 1 if t > self.L else self.L

    def attend(self, call: AttnCall):
        f = self.freqs(self.bucket(call.seq_len), call.query.device)
        return call.run(call.rotate(call.query, call.q_pos, f), call.rotated_keys(f), call.value)


class CausalLengthPlan(PositionPlan):
    """Per query: the frequencies for the length it saw when generated (t = position + 1), in buckets of GROUP."""

    def bucket(self, t: int) -> int:
        return self.L if t <= self.L else math.ceil(t / GROUP) * GROUP

    def check(self) -> None:
        a, b = self.resolved(self.L), resolve_rope(self.spec, self.shape, 1)
        if not (np.array_equal(a.inv_freq, b.inv_freq) and a.attention_factor == b.attention_factor):
            raise CtxextError(f"'{self.spec.text}': frequencies change below the original window, which the "
                              "causal plan's single in-window group assumes they do not")
        super().check()

    def attend(self, call: AttnCall):
        t = call.q_pos + 1
        over = (t + GROUP - 1) // GROUP * GROUP
        tau = torch.where(t <= self.L, torch.full_like(t, self.L), over)
        buckets = torch.unique(tau).tolist()
        dev = call.query.device
        if len(buckets) == 1:
            f = self.freqs(int(buckets[0]), dev)
            return call.run(call.rotate(call.query, call.q_pos, f), call.rotated_keys(f), call.value)
        B, H, T, D = call.query.shape
        K = call.key.shape[-2]
        out = call.query.new_zeros(B, T, H, D)
        for b in buckets:
            sel = tau == b  # (B, T)
            cols = torch.nonzero(sel.any(0)).flatten()
            c0, c1 = int(cols[0]), int(cols[-1]) + 1
            k_end = K - T + c1  # keys a query in this block can see (cache slots ≤ its own)
            f = self.freqs(int(b), dev)
            q = call.rotate(call.query[:, :, c0:c1], call.q_pos[:, c0:c1], f)
            o = call.block(q, call.rotated_keys(f, k_end), call.value[:, :, :k_end], c0, k_end)
            if bool(sel[:, c0:c1].all()):
                out[:, c0:c1] = o
            else:  # rows offset by padding share columns with other buckets
                out[:, c0:c1] = torch.where(sel[:, c0:c1, None, None], o, out[:, c0:c1])
        return out, None


# Which plan serves each length-dependent method (a new one adds a line here).
PLANS: dict[str, type[PositionPlan]] = {
    "dynamic-ntk": CausalLengthPlan,
    "dynamic-yarn": CausalLengthPlan,
    "longrope": SequenceLengthPlan,
}


def make_plan(spec: Spec, shape: RopeShape, adjust: Callable[[int, Any], Any] | None = None) -> PositionPlan:
    """The plan for a length-dependent method, checked against the model's RoPE shape. `adjust(length, freqs)`
    may replace the frequencies resolved for a length (by stock transformers' float32 rounding of them)."""
    if spec.method not in PLANS:
        raise CtxextError(f"'{spec.method}' is length-dependent but has no attention plan in ctxext.models; "
                          f"plans exist for {', '.join(PLANS)}")
    plan = PLANS[spec.method](spec, shape)
    plan.adjust = adjust
    plan.check()
    return plan


# ------------------------------------------------------------------------------------- cache + positions


def _match_batch(pos: torch.Tensor, batch: int) -> torch.Tensor:
    if pos.shape[0] == batch:
        return pos
    if batch % pos.shape[0] == 0:  # batch_repeat_interleave (beam search, num_return_sequences)
        return pos.repeat_interleave(batch // pos.shape[0], dim=0)
    if bool((pos == pos[:1]).all()):
        return pos[:1].expand(batch, -1)
    raise CtxextError(f"the KV cache changed batch size ({pos.shape[0]} -> {batch}) in a way ctxext cannot follow "
                      "with per-row key positions (rows have different positions)")


def _layer_len(cache: Any, layer_idx: int) -> tuple[int, bool]:
    """(number of keys the layer holds now, whether it is a sliding-window layer)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return (cache.get_seq_length(layer_idx) if len(cache) > layer_idx else 0), False
    if layer_idx >= len(layers):
        return 0, False
    layer = layers[layer_idx]
    keys = getattr(layer, "keys", None)
    n = 0 if (not getattr(layer, "is_initialized", True) or keys is None or keys.numel() == 0) else keys.shape[-2]
    return n, bool(getattr(layer, "is_sliding", False))


def cache_update(cache: Any, layer_idx: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
    """Append pre-RoPE k, v to the cache -> (all keys, all values, their positions (B, K))."""
    store: dict[int, torch.Tensor] = cache.__dict__.setdefault(POSITIONS_ATTR, {})
    n_before, sliding = _layer_len(cache, layer_idx)
    if n_before:
        old = store.get(layer_idx)
        if old is None or old.shape[-1] < n_before:
            raise CtxextError("this KV cache holds keys that ctxext did not write (rotated by stock code, or filled "
                              "before apply_spec); start from an empty cache after apply_spec")
        old = _match_batch(old, k.shape[0])
        kept = old[:, -n_before:] if sliding else old[:, :n_before]
    else:
        kept = pos[:, :0]
    full = torch.cat([kept.to(pos.device), pos], dim=1)
    keys, values = cache.update(k, v, layer_idx)
    n = keys.shape[-2]
    if n > full.shape[1]:
        raise CtxextError(f"{type(cache).__name__} is not supported with length-dependent methods (it returned "
                          f"{n} keys for {full.shape[1]} known positions); use a DynamicCache")
    store[layer_idx] = full
    return keys, values, full[:, -n:]


# ------------------------------------------------------------------------------------------ the forward


def project(m: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, H, T, D), k, v (B, Hkv, T, D), before RoPE."""
    shape = (*hidden.shape[:-1], -1, m.head_dim)
    if hasattr(m, "qkv_proj"):  # Phi3: fused [q | k | v]
        qkv = m.qkv_proj(hidden)
        nq = m.config.num_attention_heads * m.head_dim
        nk = m.config.num_key_value_heads * m.head_dim
        q, k, v = qkv[..., :nq], qkv[..., nq:nq + nk], qkv[..., nq + nk:]
    else:
        q, k, v = m.q_proj(hidden), m.k_proj(hidden), m.v_proj(hidden)
    q, k, v = q.view(shape), k.view(shape), v.view(shape)
    if getattr(m, "q_norm", None) is not None:  # Qwen3: RMSNorm over each head
        q = m.q_norm(q)
    if getattr(m, "k_norm", None) is not None:
        k = m.k_norm(k)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def attention_forward(self: nn.Module, hidden_states: torch.Tensor, position_embeddings: Any = None,
                      attention_mask: torch.Tensor | None = None, past_key_values: Any = None, **kwargs: Any):
    """Replacement forward of a patched attention module (same signature and outputs as transformers')."""
    plan: PositionPlan = self._ctxext_plan
    B, T = hidden_states.shape[:2]
    q, k, v = project(self, hidden_states)
    if isinstance(position_embeddings, PlannedRope):
        pos, seq_len, memo = position_embeddings.position_ids, position_embeddings.seq_len, position_embeddings.memo
    else:  # e.g. the tuple was rebuilt by a device hook: fall back to the layer's position ids
        pos = kwargs.get("position_ids")
        if pos is None:
            raise CtxextError("ctxext attention needs position ids; call the model with position_ids")
        seq_len, memo = int(pos.max()) + 1, {}
    pos = pos.to(hidden_states.device)
    if pos.shape[0] != B:
        pos = pos.expand(B, -1)
    if past_key_values is not None:
        k, v, k_pos = cache_update(past_key_values, self.layer_idx, k, v, pos)
    else:
        k_pos = pos
    call = AttnCall(self, q, k, v, pos, k_pos, attention_mask, seq_len, kwargs, memo, past_key_values)
    out, weights = plan.attend(call)
    out = out.reshape(B, T, -1).contiguous()
    return self.o_proj(out), weights


def attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if hasattr(m, "layer_idx") and hasattr(m, "o_proj") and hasattr(m, "head_dim")
            and (hasattr(m, "qkv_proj") or all(hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj")))]


_MISSING = object()


def patch_attention(model: nn.Module, plan: PositionPlan, n_layers: int):
    """Install `attention_forward` on every attention module -> an undo function."""
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CtxextError(f"length-dependent methods patch attention, which ctxext supports for "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)} models, not '{model_type}'")
    mods = attention_modules(model)
    if len(mods) != n_layers:
        raise CtxextError(f"found {len(mods)} attention modules in a {n_layers}-layer '{model_type}' model; "
                          "cannot patch it for length-dependent methods")
    saved = []
    for m in mods:
        # accelerate device hooks keep the real forward in `_old_forward`; patch that one when present
        attr = "_old_forward" if "_old_forward" in m.__dict__ else "forward"
        saved.append((m, attr, m.__dict__.get(attr, _MISSING)))
        setattr(m, attr, types.MethodType(attention_forward, m))
        m._ctxext_plan = plan

    def undo() -> None:
        for m, attr, old in saved:
            if old is _MISSING:
                delattr(m, attr)
            else:
                setattr(m, attr, old)
            del m._ctxext_plan

    return undo


from . import self_extend, streaming  # noqa: E402,F401  (Self-Extend and StreamingLLM add their plans to PLANS)
