"""LongRoPE / LongRoPE2 per-pair factors and llama3 wavelength bands.

LongRoPE: Ding et al. 2024, https://arxiv.org/abs/2402.13753 · LongRoPE2: Shang et al. 2025,
https://arxiv.org/abs/2502.20082 · llama3: Meta's Llama 3.1 rope scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import CtxextError
from .base import Params, RopeFreqs, RopeShape, check_factor, register


@dataclass(frozen=True, kw_only=True)
class LongRopeParams(Params):
    """long_factor applies past the original window, short_factor inside it (default: all 1)."""

    factor: float
    long_factor: tuple[float, ...]
    short_factor: tuple[float, ...] | None = None
    attention_factor: float | None = None
    start_tokens: int = 0

    def __post_init__(self) -> None:
        check_factor("factor", self.factor)
        for name in ("long_factor", "short_factor"):
            f = getattr(self, name)
            if f is None:
                continue
            a = np.asarray(f, dtype=np.float64)
            if a.ndim != 1 or a.size == 0:
                raise CtxextError(f"longrope: {name} must be a non-empty list of numbers")
            if not np.all(a > 0):
                raise CtxextError(f"longrope: {name} must be > 0 everywhere, got min {a.min():g}")
            bad = np.nonzero(np.diff(a) < 0)[0]
            if bad.size:
                i = int(bad[0])
                raise CtxextError(f"longrope: {name} must be non-decreasing; pair {i + 1} ({a[i + 1]:g}) < pair {i} ({a[i]:g})")
        if self.short_factor is not None and len(self.short_factor) != len(self.long_factor):
            raise CtxextError(f"longrope: short_factor has {len(self.short_factor)} values, long_factor {len(self.long_factor)}")
        if self.start_tokens < 0:
            raise CtxextError(f"longrope: start_tokens must be >= 0, got {self.start_tokens}")
        if self.attention_factor is not None and not self.attention_factor > 0:
            raise CtxextError(f"longrope: attention_factor must be > 0, got {self.attention_factor:g}")


def longrope_attention_factor(s: float, original_len: int) -> float:
    """m = sqrt(1 + ln s / ln L) (LongRoPE's default)."""
    return 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(original_len))


def _check_len(shape: RopeShape, p: LongRopeParams) -> None:
    if len(p.long_factor) != shape.n_pairs:
        raise CtxextError(f"longrope: long_factor has {len(p.long_factor)} values; this model has "
                          f"{shape.n_pairs} rotary pairs (rotary dim {shape.rotary_dim})")


def _longrope_hf(shape: RopeShape, p: LongRopeParams) -> tuple[dict, int] | str:
    if p.start_tokens:
        return (f"start_tokens={p.start_tokens} keeps original RoPE on the first tokens, which no stock "
                "rope config expresses; use start_tokens=0 to export")
    _check_len(shape, p)
    short = p.short_factor if p.short_factor is not None else (1.0,) * shape.n_pairs
    m = p.attention_factor if p.attention_factor is not None else longrope_attention_factor(p.factor, shape.original_len)
    return ({"rope_type": "longrope", "rope_theta": shape.base, "factor": p.factor,
             "original_max_position_embeddings": shape.original_len, "attention_factor": m,
             "short_factor": [float(x) for x in short], "long_factor": [float(x) for x in p.long_factor]},
            round(shape.original_len * p.factor))


@register("longrope", LongRopeParams, length_dependent=True, hf=_longrope_hf,
          summary="searched per-pair factors (LongRoPE/LongRoPE2), long past L, short inside")
def longrope(shape: RopeShape, p: LongRopeParams, seq_len: int | None = None) -> RopeFreqs:
    _check_len(shape, p)
    long = seq_len is None or seq_len > shape.original_len
    if long:
        f = p.long_factor
    else:
        f = p.short_factor if p.short_factor is not None else (1.0,) * shape.n_pairs
    m = p.attention_factor if p.attention_factor is not None else longrope_attention_factor(p.factor, shape.original_len)
    return RopeFreqs(shape.theta() / np.asarray(f, dtype=np.float64), float(m), p.start_tokens)


@dataclass(frozen=True, kw_only=True)
class Llama3Params(Params):
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0

    def __post_init__(self) -> None:
        check_factor("factor", self.factor)
        if not 0 < self.low_freq_factor < self.high_freq_factor:
            raise CtxextError(f"llama3: need 0 < low_freq_factor < high_freq_factor, got "
                              f"{self.low_freq_factor:g}, {self.high_freq_factor:g}")


@register("llama3", Llama3Params, summary="wavelength bands: short kept, long divided by s, smooth between",
          hf=lambda shape, p: ({"rope_type": "llama3", "rope_theta": shape.base, "factor": p.factor,
                                "low_freq_factor": p.low_freq_factor, "high_freq_factor": p.high_freq_factor,
                                "original_max_position_embeddings": shape.original_len},
                               round(shape.original_len * p.factor)))
def llama3(shape: RopeShape, p: Llama3Params, seq_len: int | None = None) -> RopeFreqs:
    theta = shape.theta()
    L = shape.original_len
    wavelen = 2 * math.pi / theta
    smooth = (L / wavelen - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor)
    out = np.where(wavelen > L / p.low_freq_factor, theta / p.factor, theta)
    medium = (wavelen >= L / p.high_freq_factor) & (wavelen <= L / p.low_freq_factor)
    out = np.where(medium, (1 - smooth) * theta / p.factor + smooth * theta, out)
    return RopeFreqs(out)
