"""StreamingLLM as a position plan (Xiao et al. 2023, https://arxiv.org/abs/2309.17453; METHODS.md).

Semantics (exactly StreamingLLM's token-by-token cache): the token at stream index i attends to the first S
tokens (attention sinks) and to the last W tokens (itself included); positions are **cache slots**: with the
cache full (S + W tokens), sinks sit at slots 0 … S−1, the window at S … S+W−1 and the query at S+W−1. RoPE
depends only on position differences, so

- window keys are at their true distance i − j (< W), and
- sink k is at distance min(i, S+W−1) − k, as if the sinks sat right before the window.

How: every key array here is indexed by cache slot (a no-cache forward: slot = token index). Each call first
evicts from the KV cache the keys no query of this call can see (slots ≥ S older than W before its first
query) — from the cache's tensors and ctxext's key-position record alike — so a stream fed in chunks holds at
most S + W + chunk keys: constant memory. It then computes two logit sets per block of queries (sinks with the
query at slot min(i, S+W−1); window keys with queries and keys shifted together to small slots) and merges
them before one softmax (`merged_attention`). Hence a stream fed token by token, in chunks, or as one no-cache
forward gives the same logits. While the whole call fits the window (slots < S + W) nothing differs from
default RoPE and the model's own attention runs (identical logits).

Positions are taken from the cache slots, so callers pass no position ids (transformers then counts from the
cache length, which eviction keeps equal to the slot); padded batches and explicit position ids other than
the slots are refused, as is HF generate past the window (its attention mask and position ids count every
token, the evicted ones too). Use the stream-ppl eval task or feed chunks with a DynamicCache.
"""

from __future__ import annotations

import torch

from ..errors import CtxextError
from .attention import PLANS, POSITIONS_ATTR, AttnCall, PositionPlan
from .self_extend import bias_of, merged_attention, query_block, repeat_kv


class StreamingPlan(PositionPlan):
    """Attention sinks + rolling window with positions by cache slot; evicts the cache as it goes."""

    def __init__(self, spec, shape):
        super().__init__(spec, shape)
        self.sinks, self.window = int(spec.params.sinks), int(spec.params.window)

    def bucket(self, t: int) -> int:
        # Within S + W tokens nothing is evicted and streaming is the model as is (bucket 0); past it, each length
        # gets its own bucket so the eval harness never reuses (and crops) a cache that eviction has already
        # thinned. (The in-window bucket was L, which a prompt of exactly L tokens shared with every short prefix.)
        return 0 if t <= self.sinks + self.window else t

    def resolved(self, bucket: int):
        return super().resolved(self.L)  # the model's own frequencies at every length

    def freqs(self, bucket: int, device):
        return super().freqs(self.L, device)

    # -------------------------------------------------------------------------------------------- eviction

    def evict(self, call: AttnCall) -> None:
        """Drop cache slots [S, cut) — keys older than W before this call's first query — in place."""
        T, K = call.query.shape[-2], call.key.shape[-2]
        S, cut = self.sinks, K - T - self.window + 1
        if cut <= S:
            return
        keep = lambda x: torch.cat([x[:, :, :S], x[:, :, cut:]], dim=2)  # noqa: E731
        call.key, call.value = keep(call.key), keep(call.value)
        call.k_pos = torch.cat([call.k_pos[:, :S], call.k_pos[:, cut:]], dim=1)
        call.__dict__.pop("_key", None)  # the contiguous copy rotated_keys caches holds the dropped slots
        if call.cache is None:  # a no-cache forward: nothing to free
            return
        idx = call.module.layer_idx
        layer = call.cache.layers[idx] if hasattr(call.cache, "layers") else None
        if layer is None or type(layer).__name__ != "DynamicLayer":
            what = type(call.cache).__name__ if layer is None else f"a {type(layer).__name__} in a {type(call.cache).__name__}"
            raise CtxextError(f"streaming evicts from the KV cache, which ctxext supports for a DynamicCache's "
                              f"full-attention layers (DynamicLayer), not {what}")
        layer.keys, layer.values = call.key, call.value
        store = call.cache.__dict__.get(POSITIONS_ATTR, {})
        if idx in store:
            store[idx] = call.k_pos

    def _check_slots(self, call: AttnCall) -> None:
        T, K = call.query.shape[-2], call.key.shape[-2]
        slots = torch.arange(K - T, K, device=call.q_pos.device)
        if not bool((call.q_pos == slots).all()):
            raise CtxextError("streaming assigns positions by cache slot: call the model without position_ids or "
                              "padding (HF generate past the window is not supported; feed chunks with a "
                              "DynamicCache, or use the stream-ppl task)")
        m = call.dense_mask()
        if m is not None and m.dim() == 4:  # the last query row of a causal mask keeps every key unless padded
            last = m[:, 0, -1, :K]
            ok = last if last.dtype == torch.bool else last > torch.finfo(last.dtype).min / 2
            if not bool(ok.all()):
                raise CtxextError("streaming does not support padded batches; run one sequence per row without "
                                  "padding")

    # --------------------------------------------------------------------------------------------- attend

    def attend(self, call: AttnCall):
        self._check_slots(call)
        f = self.freqs(self.L, call.query.device)
        S, W = self.sinks, self.window
        T = call.query.shape[-2]
        if call.key.shape[-2] <= S + W:  # every query sees every earlier key at its true distance: the model as is
            return call.run(call.rotate(call.query, call.q_pos, f), call.rotated_keys(f), call.value)
        self.evict(call)
        B, H, _, D = call.query.shape
        K = call.key.shape[-2]
        dev = call.query.device
        rep = H // call.key.shape[1]
        out = call.query.new_empty(B, T, H, D)
        step = query_block(H, min(K, S + W + 1024), B)
        for c0 in range(0, T, step):
            c1 = min(T, c0 + step)
            qs = torch.arange(K - T + c0, K - T + c1, device=dev)  # query slots
            n0 = max(S, int(qs[0]) - W + 1)  # oldest window key of the block's first query
            n1 = int(qs[-1]) + 1
            shift = n0 - S  # window logits depend on slot differences only: keep the rotated positions small
            ks = torch.arange(n0, n1, device=dev)
            q_win = call.rotate(call.query[:, :, c0:c1], (qs - shift)[None].expand(B, -1), f, share=False)
            k_win = call.rotate(call.key[:, :, n0:n1], (ks - shift)[None].expand(B, -1), f, share=False)
            win = (ks[None, :] <= qs[:, None]) & (ks[None, :] > qs[:, None] - W)
            parts = [(q_win, repeat_kv(k_win, rep), repeat_kv(call.value[:, :, n0:n1], rep),
                      *bias_of(win[None].expand(B, -1, -1), call.query.dtype))]
            if S:
                s1 = min(S, n1)
                sk = torch.arange(s1, device=dev)
                q_sink = call.rotate(call.query[:, :, c0:c1], qs.clamp(max=S + W - 1)[None].expand(B, -1), f,
                                     share=False)
                k_sink = call.rotate(call.key[:, :, :s1], sk[None].expand(B, -1), f, share=False)
                sink = (sk[None, :] <= qs[:, None])[None].expand(B, -1, -1)
                parts.insert(0, (q_sink, repeat_kv(k_sink, rep), repeat_kv(call.value[:, :, :s1], rep),
                                 *bias_of(sink, call.query.dtype)))
            out[:, c0:c1] = merged_attention(call, parts)
        return out, None


PLANS["streaming"] = StreamingPlan
