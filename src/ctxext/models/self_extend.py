"""Self-Extend as a position plan (Jin et al. 2024, https://arxiv.org/abs/2401.01325; METHODS.md).

For query i and key j (positions, j ≤ i):

- neighbours, i − j < W: the normal rotation (q at i, k at j);
- farther keys, i − j ≥ W: grouped positions, q at i//G + W − W//G, k at j//G, so the relative position is
  i//G − j//G + W − W//G ≤ (i − j)/G + W: it stays inside the trained length up to (L − W)·G + W tokens.

Both logit sets are computed and merged before **one** softmax (`merged_attention`). Keys are cached before
RoPE (ctxext.models.attention), so a cached decoding step rotates every cached key both ways and gives the same
result as a no-cache forward. Memory: queries are processed in blocks sized so that one block's logits stay
under `BLOCK_ELEMENTS`; blocks whose queries see only neighbours go to SDPA unchanged. A forward whose every
query-key distance is < W is the model's own forward (same code path as default RoPE, identical logits).
Positions come from the model's position ids, so left padding and HF generate work as for any plan.
"""

from __future__ import annotations

import torch

from ..errors import CtxextError
from .attention import PLANS, AttnCall, PositionPlan

BLOCK_ELEMENTS = 32 * 2**20  # logits held at once per block: 128 MB in fp32


def query_block(n_heads: int, n_keys: int, batch: int = 1) -> int:
    """Queries per block so that batch × heads × block × keys logits stay under BLOCK_ELEMENTS."""
    rows = BLOCK_ELEMENTS // max(1, batch * n_heads * n_keys)
    return int(max(16, min(1024, rows)))


def allowed_of(call: AttnCall, q0: int, q1: int, k0: int, k1: int) -> torch.Tensor:
    """(B, q1−q0, k1−k0) bool: which keys [k0, k1) queries [q0, q1) may attend to — the layer's 4D HF mask
    (padding, causality) or, without one, causal by cache slot."""
    T, K = call.query.shape[-2], call.key.shape[-2]
    if call.mask is None:
        qi = torch.arange(q0, q1, device=call.query.device) + (K - T)
        kj = torch.arange(k0, k1, device=call.query.device)
        return (kj[None, :] <= qi[:, None])[None].expand(call.query.shape[0], -1, -1)
    if call.mask.dim() != 4:
        raise CtxextError("attention plans that merge logits need a 4D attention mask; load the model with "
                          f"attn='sdpa' or attn='eager' (got '{call.module.config._attn_implementation}')")
    m = call.mask[:, 0, q0:q1, k0:k1]  # heads share the mask in transformers
    if m.dtype != torch.bool:  # additive float mask: 0 keeps, large negative drops
        m = m > torch.finfo(m.dtype).min / 2
    return m.expand(call.query.shape[0], -1, -1)


def merged_attention(call: AttnCall, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
                     ) -> torch.Tensor:
    """Attention whose logits come from several (query rotation, key set) parts, merged before one softmax.

    Each part is (q (B, H, Tq, D), k (B, Hkv, Kp, D), v (B, Hkv, Kp, D), allowed (B, Tq, Kp)); every key must be
    allowed in at most one part per query. -> (B, Tq, H, D). GQA without repeating keys: query heads are grouped
    per KV head ((B, Hkv, rep·Tq, D) against (B, Hkv, Kp, D)), the same head order as transformers' repeat_kv.
    """
    m = call.module
    B, H, Tq, D = parts[0][0].shape
    Hkv = parts[0][1].shape[1]
    rep = H // Hkv
    logits = []
    for q, k, _, allowed in parts:
        s = torch.matmul(q.reshape(B, Hkv, rep * Tq, D), k.transpose(-1, -2)) * m.scaling  # (B, Hkv, rep·Tq, Kp)
        s = s.view(B, Hkv, rep, Tq, -1).masked_fill(~allowed[:, None, None], float("-inf"))
        logits.append(s)
    s = torch.cat(logits, dim=-1) if len(logits) > 1 else logits[0]
    p = torch.softmax(s.float(), dim=-1).to(s.dtype)
    p = torch.nan_to_num(p, nan=0.0)  # a fully masked row (a padding query) attends to nothing
    out, at = None, 0
    for _, _, v, _ in parts:
        kp = v.shape[-2]
        o = torch.matmul(p[..., at:at + kp].reshape(B, Hkv, rep * Tq, kp), v)
        out = o if out is None else out + o
        at += kp
    return out.view(B, H, Tq, D).transpose(1, 2)


def _span(need: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) of the True entries of a 1D bool tensor ((0, 0) when none)."""
    idx = torch.nonzero(need).flatten()
    return (0, 0) if idx.numel() == 0 else (int(idx[0]), int(idx[-1]) + 1)


class SelfExtendPlan(PositionPlan):
    """Neighbour window W with exact positions, grouped positions (group G) beyond it, one softmax."""

    def __init__(self, spec, shape):
        super().__init__(spec, shape)
        self.group, self.window = int(spec.params.group), int(spec.params.window)

    def bucket(self, t: int) -> int:
        return self.L  # one frequency set (the model's own) at every length

    def check(self) -> None:
        super().check()
        if self.window >= self.L:
            raise CtxextError(f"self-extend: window={self.window} must be smaller than the trained length "
                              f"{self.L} (neighbour positions beyond it were never trained)")

    def grouped_query_pos(self, pos: torch.Tensor) -> torch.Tensor:
        return pos // self.group + self.window - self.window // self.group

    def attend(self, call: AttnCall):
        f = self.freqs(self.L, call.query.device)
        W = self.window
        q_n = call.rotate(call.query, call.q_pos, f)
        k_n = call.rotated_keys(f)
        if int(call.q_pos.max()) - int(call.k_pos.min()) < W:  # every distance inside the window: the model as is
            return call.run(q_n, k_n, call.value)
        q_g = call.rotate(call.query, self.grouped_query_pos(call.q_pos), f)
        k_g = call.rotate(call.key, call.k_pos // self.group, f)
        B, H, T, D = call.query.shape
        K = call.key.shape[-2]
        out = call.query.new_empty(B, T, H, D)
        step = query_block(H, K, B)
        for c0 in range(0, T, step):
            c1 = min(T, c0 + step)
            k_end = K - T + c1  # keys a query of this block can see (cache slots up to its own)
            qp, kp = call.q_pos[:, c0:c1], call.k_pos[:, :k_end]
            if int(qp.max()) - int(kp.min()) < W:  # neighbours only: plain SDPA
                out[:, c0:c1] = call.block(q_n[:, :, c0:c1], k_n[:, :, :k_end], call.value[:, :, :k_end], c0, k_end)
                continue
            g0, g1 = _span((kp <= int(qp.max()) - W).any(0))  # keys some query of the block sees grouped
            n0, n1 = _span((kp > int(qp.min()) - W).any(0))  # keys some query of the block sees as neighbours
            allowed = allowed_of(call, c0, c1, 0, k_end)
            rel = qp[:, :, None] - kp[:, None, :]  # (B, Tq, k_end) distance in positions
            parts = [(q_g[:, :, c0:c1], k_g[:, :, g0:g1], call.value[:, :, g0:g1],
                      allowed[..., g0:g1] & (rel[..., g0:g1] >= W))]
            if n1 > n0:
                parts.append((q_n[:, :, c0:c1], k_n[:, :, n0:n1], call.value[:, :, n0:n1],
                              allowed[..., n0:n1] & (rel[..., n0:n1] < W)))
            out[:, c0:c1] = merged_attention(call, parts)
        return out, None


PLANS["self-extend"] = SelfExtendPlan
