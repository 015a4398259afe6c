"""Self-Extend as a position plan (Jin et al. 2024, https://arxiv.org/abs/2401.01325; METHODS.md).

For query i and key j (positions, j ≤ i):

- neighbours, i − j < W: the normal rotation (q at i, k at j);
- farther keys, i − j ≥ W: grouped positions, q at i//G + W − W//G, k at j//G, so the relative position is
  i//G − j//G + W − W//G ≤ (i − j)/G + W: it stays inside the trained length up to (L − W)·G + W tokens.

Both logit sets are merged before **one** softmax (`merged_attention`): each part (grouped keys, neighbour keys)
gives its softmax output and log-sum-exp, and the softmax over their union is the lse-weighted sum — exact, and
on CPU each part runs in PyTorch's fused flash kernel, so no T×K logits are ever held. Keys are cached before
RoPE (ctxext.models.attention), so a cached decoding step rotates every cached key both ways and gives the same
result as a no-cache forward. Queries go in blocks of at most MAX_BLOCK (and BLOCK_ELEMENTS logits on the eager
path); blocks whose queries see only neighbours go to SDPA unchanged, and the block layout (key spans, masks) is
computed once per forward and shared by the layers. A forward whose every query-key distance is < W is the
model's own forward (same code path as default RoPE, identical logits). Positions come from the model's
position ids, so left padding and HF generate work as for any plan.
"""

from __future__ import annotations

import torch

from ..errors import CtxextError
from .attention import PLANS, AttnCall, PositionPlan

BLOCK_ELEMENTS = 32 * 2**20  # logits held at once per block: 128 MB in fp32
MAX_BLOCK = 256  # queries per block at most: merged blocks compute ~block × (W + block) logits that the mask drops


def query_block(n_heads: int, n_keys: int, batch: int = 1) -> int:
    """Queries per block so that batch × heads × block × keys logits stay under BLOCK_ELEMENTS."""
    rows = BLOCK_ELEMENTS // max(1, batch * n_heads * n_keys)
    return int(max(16, min(MAX_BLOCK, rows)))


def allowed_of(call: AttnCall, q0: int, q1: int, k0: int, k1: int) -> torch.Tensor:
    """(B, q1−q0, k1−k0) bool: which keys [k0, k1) queries [q0, q1) may attend to — the layer's 4D HF mask
    (padding, causality) or, without one, causal by cache slot."""
    T, K = call.query.shape[-2], call.key.shape[-2]
    layer_mask = call.dense_mask()
    if layer_mask is None:
        qi = torch.arange(q0, q1, device=call.query.device) + (K - T)
        kj = torch.arange(k0, k1, device=call.query.device)
        return (kj[None, :] <= qi[:, None])[None].expand(call.query.shape[0], -1, -1)
    if layer_mask.dim() != 4:
        raise CtxextError("attention plans that merge logits need a 4D attention mask; load the model with "
                          f"attn='sdpa' or attn='eager' (got '{call.module.config._attn_implementation}')")
    m = layer_mask[:, 0, q0:q1, k0:k1]  # heads share the mask in transformers
    if m.dtype != torch.bool:  # additive float mask: 0 keeps, large negative drops
        m = m > torch.finfo(m.dtype).min / 2
    return m.expand(call.query.shape[0], -1, -1)


def _flash_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float):
    """(out, logsumexp) from PyTorch's fused CPU flash kernel (no Tq×K logits in memory), None where absent."""
    if q.device.type != "cpu":
        return None
    try:
        op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        out, lse = op(q, k, v, 0.0, False, attn_mask=bias, scale=scale)[:2]
    except (AttributeError, RuntimeError):  # no such kernel in this torch, or inputs it does not take: eager path
        return None
    return out, lse.to(torch.float32).contiguous()


def bias_of(allowed: torch.Tensor | None, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(B, Tq, Kp) bool -> additive mask (B, 1, Tq, Kp) of 0 / −inf, and the rows with no allowed key (B, Tq)."""
    if allowed is None:
        return None, None
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
    return bias[:, None], ~allowed.any(-1)


def attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                  dead: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q·kᵀ·scale + bias) v and the log-sum-exp of each row: (B, H, Tq, D), (B, H, Tq) float32.
    `bias` from `bias_of` (None: every key); rows in `dead` (no allowed key) get lse −inf, weight 0 when merged."""
    fused = _flash_lse(q, k, v, bias, scale)
    if fused is not None:
        out, lse = fused
    else:
        s = torch.matmul(q, k.transpose(-1, -2)).float() * scale
        if bias is not None:
            s = s + bias
        lse = torch.logsumexp(s, dim=-1)
        out = torch.matmul(torch.exp(s - lse[..., None]).nan_to_num_(0.0).to(v.dtype), v)
    if dead is not None:
        lse = lse.masked_fill(dead[:, None], float("-inf"))
    return out, lse


def merged_attention(call: AttnCall, parts: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """Attention whose logits come from several (query rotation, key set) parts, merged as **one** softmax.

    Each part is (q (B, H, Tq, D), k, v (B, H, Kp, D) — KV heads already repeated —, bias, dead) with bias, dead
    from `bias_of` (None, None: every key); a key may be allowed in at most one part per query. Each part gives its softmax output and log-sum-exp;
    the single softmax over all parts is their lse-weighted sum (exact: softmax over a union of disjoint key sets).
    -> (B, Tq, H, D).
    """
    outs, lses = zip(*(attention_lse(*part, call.module.scaling) for part in parts))
    if len(outs) == 1:
        out = outs[0]
    else:
        top = lses[0]
        for x in lses[1:]:
            top = torch.maximum(top, x)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a row with no key at all: weights 0
        ws = [torch.exp(x - top) for x in lses]  # softmax mass of each part, relative to the row's max
        total = sum(ws)
        out = sum(o * (w / total).nan_to_num_(0.0)[..., None].to(o.dtype) for o, w in zip(outs, ws))
    return out.transpose(1, 2)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, K, D) -> (B, Hkv·n_rep, K, D), query head h reading KV head h // n_rep (transformers' order)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


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

    def grouped_query_pos(self, pos: torch.Tensor) -> torch.Tensor:
        return pos // self.group + self.window - self.window // self.group

    def layout(self, call: AttnCall) -> list[tuple[int, int, int, list | None]]:
        """Query blocks (c0, c1, k_end, parts); parts None = neighbours only (SDPA), else (kind, k0, k1, bias, dead)
        with kind "g" (grouped) or "n" (neighbour). Depends on positions and mask only, so it is computed once
        per forward and shared by the layers (call.memo)."""
        T, K = call.query.shape[-2], call.key.shape[-2]
        key = ("self-extend", id(self), T, K, id(call.mask))
        hit = call.memo.get(key)
        if hit is not None and hit[0] is call.q_pos and torch.equal(hit[1], call.k_pos):
            return hit[2]
        W, dtype = self.window, call.query.dtype
        blocks = []
        step = query_block(call.query.shape[1], K, call.query.shape[0])
        for c0 in range(0, T, step):
            c1 = min(T, c0 + step)
            k_end = K - T + c1  # keys a query of this block can see (cache slots up to its own)
            qp, kp = call.q_pos[:, c0:c1], call.k_pos[:, :k_end]
            qmin, qmax = int(qp.min()), int(qp.max())
            if qmax - int(kp.min()) < W:  # neighbours only: plain SDPA
                blocks.append((c0, c1, k_end, None))
                continue
            # key slots: [0, a) grouped for every query of the block, [a, g1) grouped for some, [n0, k_end)
            # neighbours for some (spans over all rows; the masks decide per pair)
            a = int((kp <= qmin - W).all(0).int().cumprod(0).sum())
            g1 = _span((kp <= qmax - W).any(0))[1]
            n0 = _span((kp > qmin - W).any(0))[0]
            parts = []
            if a > 0:
                full = None if call.mask is None else allowed_of(call, c0, c1, 0, a)
                parts.append(("g", 0, a, *bias_of(None if full is None or bool(full.all()) else full, dtype)))
            if g1 > a:
                rel = qp[:, :, None] - call.k_pos[:, None, a:g1]
                parts.append(("g", a, g1, *bias_of(allowed_of(call, c0, c1, a, g1) & (rel >= W), dtype)))
            rel = qp[:, :, None] - call.k_pos[:, None, n0:k_end]
            parts.append(("n", n0, k_end, *bias_of(allowed_of(call, c0, c1, n0, k_end) & (rel < W), dtype)))
            blocks.append((c0, c1, k_end, parts))
        call.memo[key] = (call.q_pos, call.k_pos, blocks)
        return blocks

    def attend(self, call: AttnCall):
        f = self.freqs(self.L, call.query.device)
        q_n = call.rotate(call.query, call.q_pos, f)
        k_n = call.rotated_keys(f)
        if int(call.q_pos.max()) - int(call.k_pos.min()) < self.window:  # every distance inside W: the model as is
            return call.run(q_n, k_n, call.value)
        rep = call.query.shape[1] // call.key.shape[1]
        q = {"n": q_n, "g": call.rotate(call.query, self.grouped_query_pos(call.q_pos), f)}
        k = {"n": repeat_kv(k_n, rep), "g": repeat_kv(call.rotate(call.key, call.k_pos // self.group, f), rep)}
        v = repeat_kv(call.value, rep)
        B, H, T, D = call.query.shape
        out = call.query.new_empty(B, T, H, D)
        for c0, c1, k_end, parts in self.layout(call):
            if parts is None:
                out[:, c0:c1] = call.block(q_n[:, :, c0:c1], k_n[:, :, :k_end], call.value[:, :, :k_end], c0, k_end)
            else:
                out[:, c0:c1] = merged_attention(call, [(q[kind][:, :, c0:c1], k[kind][:, :, k0:k1], v[:, :, k0:k1],
                                                         bias, dead) for kind, k0, k1, bias, dead in parts])
        return out, None

PLANS["self-extend"] = SelfExtendPlan
