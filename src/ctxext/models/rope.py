"""RoPE tables and rotation, computed exactly as Hugging Face transformers computes them.

`ScaledRotary` replaces a model's rotary-embedding module (``model.model.rotary_emb`` in transformers 5.x).
Its ``forward(x, position_ids)`` returns ``(cos, sin)`` like transformers' own module (or DeepSeek-V2's complex
form of the same table, see `cos_sin`):

    freqs = position_ids.float()[..., None] * inv_freq          # float32, (B, S, d/2)
    emb   = cat(freqs, freqs);  cos = emb.cos() * m;  sin = emb.sin() * m   -> cast to x.dtype

with ``inv_freq`` and the attention factor ``m`` from ``ctxext.scaling.resolve_rope``. The only addition is
LongRoPE's n̂ (``RopeFreqs.start_tokens``): positions < n̂ keep the unscaled frequencies, so the table is
per position (m still multiplies every position: it is a logit temperature, not a position effect).
The last dim of cos/sin is the rotary dim; partial-rotary models (Phi3 ``partial_rotary_factor``) rotate the
first rotary_dim channels of each head and pass the rest through (``rotate``).

For length-dependent methods the module also hands the attention layers the position ids (see
``ctxext.models.attention``): the returned tuple is a ``PlannedRope`` that carries them and a per-forward memo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..scaling import RopeFreqs


@dataclass(frozen=True)
class TorchFreqs:
    """One frequency set on one device: float32 inv_freq (d/2,), attention factor m, and n̂ with the
    unscaled inv_freq it falls back to."""

    inv_freq: torch.Tensor
    attention_factor: float
    start_tokens: int
    base_inv_freq: torch.Tensor

    @classmethod
    def of(cls, freqs: RopeFreqs, base_inv_freq: np.ndarray, device: torch.device | str | None = None) -> TorchFreqs:
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=torch.float32, device=device)

        return cls(t(freqs.inv_freq), float(freqs.attention_factor), int(freqs.start_tokens), t(base_inv_freq))


def angles(position_ids: torch.Tensor, f: TorchFreqs) -> torch.Tensor:
    """float32 position × inv_freq, (B, S, rotary_dim/2); positions < n̂ (LongRoPE) take the unscaled frequencies."""
    inv_freq = f.inv_freq.to(position_ids.device)
    pos = position_ids[..., None].float()
    freqs = pos * inv_freq
    if f.start_tokens > 0:
        freqs = torch.where(position_ids[..., None] < f.start_tokens, pos * f.base_inv_freq.to(pos.device), freqs)
    return freqs


def half_tables(position_ids: torch.Tensor, f: TorchFreqs,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (B, S, rotary_dim/2): one column per pair. transformers' tables repeat these twice along
    the last dim (`cos_sin`); rotating with the halves (`rotate`) gives the same bits at half the sin/cos work."""
    freqs = angles(position_ids, f)
    cos, sin = freqs.cos(), freqs.sin()
    if f.attention_factor != 1.0:  # x * 1.0 == x exactly: skipping it changes no bit
        cos, sin = cos * f.attention_factor, sin * f.attention_factor
    return cos.to(dtype), sin.to(dtype)


LAYOUTS = ("halves", "pairs", "complex")


def cos_sin(position_ids: torch.Tensor, f: TorchFreqs, dtype: torch.dtype, layout: str = "halves"):
    """The tables for integer positions (B, S) in transformers' formula and the replaced module's layout: `halves`
    (cos, sin), each (B, S, rotary_dim), the pair columns twice over (c0 c1 .. c0 c1 ..); `pairs` each column twice
    in place (c0 c0 c1 c1 ..) for models that rotate adjacent channels (Cohere, Command-R); `complex` one complex64
    tensor (B, S, rotary_dim/2), m·e^(iθ), as DeepSeek-V2 multiplies its query and key pairs."""
    if layout == "complex":  # complex64 whatever x is, from torch.polar as stock (complex(cos, sin) is 1 ulp off)
        freqs = angles(position_ids, f)
        table = torch.polar(torch.ones_like(freqs), freqs)
        return table * f.attention_factor if f.attention_factor != 1.0 else table
    cos, sin = half_tables(position_ids, f, dtype)
    if layout == "pairs":
        return cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


@torch.no_grad()
def table_layout(module: nn.Module) -> str:
    """The layout (LAYOUTS) a stock rotary module writes its tables in, read from its output at positions 1-3,
    whatever its frequencies or scale."""
    if isinstance(module, ScaledRotary):
        return module.layout
    device = module.inv_freq.device
    try:
        out = module(torch.zeros(1, 1, 1, device=device), torch.arange(1, 4, device=device)[None])
    except (TypeError, RuntimeError, ValueError):  # another forward signature: transformers' usual layout
        return "halves"
    if isinstance(out, torch.Tensor) and out.is_complex():
        return "complex"
    cos = out[0]
    h = cos.shape[-1] // 2
    pairs = torch.equal(cos[..., 0::2], cos[..., 1::2])
    return "pairs" if pairs and not torch.equal(cos[..., :h], cos[..., h:]) else "halves"


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, S, D) by half tables (B, S, rd/2) from `half_tables`; channels ≥ rd pass through.

    Bit for bit transformers' ``x·cos + rotate_half(x)·sin`` with full tables: per pair that is
    (x1·c + (−x2)·s, x2·c + x1·s), and x1·c + (−x2)·s = x1·c − x2·s exactly in IEEE arithmetic. Without the
    repeated tables and the rotate_half copy it moves about half the memory (keys are rotated once per
    frequency bucket in the dynamic methods, so this is their hot loop)."""
    cos, sin = cos[:, None], sin[:, None]
    h = cos.shape[-1]
    x1, x2 = x[..., :h], x[..., h:2 * h]
    parts = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    if 2 * h < x.shape[-1]:
        parts.append(x[..., 2 * h:])
    return torch.cat(parts, dim=-1)


class PlannedRope(tuple):
    """``(cos, sin)`` as transformers expects, plus what patched attention layers need: the position ids of
    this forward, its length (max position + 1) and a memo shared by all layers of one forward."""

    position_ids: torch.Tensor
    seq_len: int
    memo: dict[Any, Any]

    def __new__(cls, cos: torch.Tensor, sin: torch.Tensor, position_ids: torch.Tensor, seq_len: int):
        self = super().__new__(cls, (cos, sin))
        self.position_ids, self.seq_len, self.memo = position_ids, seq_len, {}
        return self


class ScaledRotary(nn.Module):
    """Drop-in replacement for a transformers rotary-embedding module.

    Static methods: one `TorchFreqs`. Length-dependent methods: `plan` (a ``PositionPlan``) picks the
    frequencies for the current forward, and the output is a `PlannedRope` for the patched attention.
    """

    def __init__(self, freqs: RopeFreqs, base_inv_freq: np.ndarray, plan: Any = None, layout: str = "halves"):
        super().__init__()
        if layout not in LAYOUTS or (plan is not None and layout != "halves"):
            raise ValueError(f"layout {layout!r} (plan: {plan is not None}); accepted: {LAYOUTS}, halves with a plan")
        self.layout = layout  # the replaced module's table layout (see cos_sin)
        f = TorchFreqs.of(freqs, base_inv_freq)
        # non-persistent: the state dict (and save_pretrained) stays exactly the stock one
        self.register_buffer("inv_freq", f.inv_freq, persistent=False)
        self.register_buffer("base_inv_freq", f.base_inv_freq, persistent=False)
        self.attention_scaling = f.attention_factor
        self.start_tokens = f.start_tokens
        self.plan = plan

    def extra_repr(self) -> str:
        kind = type(self.plan).__name__ if self.plan is not None else "static"
        return (f"pairs={self.inv_freq.numel()}, layout={self.layout}, "
                f"attention_scaling={self.attention_scaling:.6g}, start_tokens={self.start_tokens}, plan={kind}")

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *args: Any, **kwargs: Any):
        if self.plan is None:
            f = TorchFreqs(self.inv_freq, self.attention_scaling, self.start_tokens, self.base_inv_freq)
            return cos_sin(position_ids, f, x.dtype, self.layout)
        seq_len = int(position_ids.max()) + 1
        f = self.plan.freqs(self.plan.bucket(seq_len), x.device)
        cos, sin = cos_sin(position_ids, f, x.dtype)
        return PlannedRope(cos, sin, position_ids, seq_len)
