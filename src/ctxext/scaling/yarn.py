"""Frequency-dependent interpolation: NTK-by-parts and YaRN.

YaRN: Peng et al. 2023, https://arxiv.org/abs/2309.00071. Pairs whose wavelength is short compared with
L extrapolate, pairs longer than L interpolate by s, a linear ramp in between; YaRN also scales
attention logits by m² with m = 0.1·ln s + 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import CtxextError
from .base import Params, RopeFreqs, RopeShape, check_factor, register


@dataclass(frozen=True, kw_only=True)
class PartsParams(Params):
    factor: float
    alpha: float = 1.0
    beta: float = 32.0

    def __post_init__(self) -> None:
        check_factor("factor", self.factor)
        if not 0 <= self.alpha < self.beta:
            raise CtxextError(f"ntk-by-parts: need 0 <= alpha < beta, got alpha={self.alpha:g}, beta={self.beta:g}")


@dataclass(frozen=True, kw_only=True)
class YarnParams(Params):
    factor: float
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    def __post_init__(self) -> None:
        check_factor("factor", self.factor)
        if not self.beta_fast > self.beta_slow > 0:
            raise CtxextError(f"yarn: need beta_fast > beta_slow > 0, got {self.beta_fast:g}, {self.beta_slow:g}")
        if self.attention_factor is not None and not self.attention_factor > 0:
            raise CtxextError(f"yarn: attention_factor must be > 0, got {self.attention_factor:g}")


def ntk_by_parts_inv_freq(shape: RopeShape, s: float, alpha: float, beta: float) -> np.ndarray:
    """γ = clamp((r−α)/(β−α), 0, 1) with r_i = L/λ_i; θ'_i = (1−γ)·θ_i/s + γ·θ_i."""
    theta = shape.theta()
    r = shape.original_len * theta / (2 * math.pi)
    gamma = np.clip((r - alpha) / (beta - alpha), 0.0, 1.0)
    return (1 - gamma) * theta / s + gamma * theta


@register("ntk-by-parts", PartsParams, summary="interpolate long wavelengths only, ramp in r = L/λ")
def ntk_by_parts(shape: RopeShape, p: PartsParams, seq_len: int | None = None) -> RopeFreqs:
    return RopeFreqs(ntk_by_parts_inv_freq(shape, p.factor, p.alpha, p.beta))


def yarn_mscale(s: float, mscale: float = 1.0) -> float:
    return 1.0 if s <= 1 else 0.1 * mscale * math.log(s) + 1.0


def yarn_ramp_bounds(shape: RopeShape, beta_fast: float, beta_slow: float, truncate: bool = True) -> tuple[float, float]:
    """Pair indices where the ramp starts and ends: corr(n) = d·ln(L/(2πn)) / (2·ln b)."""
    d, b, L = shape.rotary_dim, shape.base, shape.original_len

    def corr(n: float) -> float:
        return d * math.log(L / (n * 2 * math.pi)) / (2 * math.log(b))

    low, high = corr(beta_fast), corr(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, d - 1)


def yarn_freqs(shape: RopeShape, s: float, beta_fast: float = 32.0, beta_slow: float = 1.0,
               attention_factor: float | None = None, mscale: float | None = None,
               mscale_all_dim: float | None = None, truncate: bool = True) -> RopeFreqs:
    low, high = yarn_ramp_bounds(shape, beta_fast, beta_slow, truncate)
    if low == high:
        high += 0.001  # as the reference: avoid a zero-width ramp
    ramp = np.clip((np.arange(shape.n_pairs, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    theta = shape.theta()
    inv_freq = theta / s * ramp + theta * (1 - ramp)  # ramp 0: extrapolate, 1: interpolate
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(s, mscale) / yarn_mscale(s, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(s)
    return RopeFreqs(inv_freq, float(attention_factor))


def _yarn_hf(shape: RopeShape, p: YarnParams) -> tuple[dict, int]:
    rp = {"rope_type": "yarn", "rope_theta": shape.base, "factor": p.factor,
          "original_max_position_embeddings": shape.original_len,
          "beta_fast": p.beta_fast, "beta_slow": p.beta_slow}
    for key in ("attention_factor", "mscale", "mscale_all_dim"):
        if getattr(p, key) is not None:
            rp[key] = getattr(p, key)
    if not p.truncate:
        rp["truncate"] = False
    return rp, round(shape.original_len * p.factor)


@register("yarn", YarnParams, summary="NTK-by-parts ramp in pair index + attention temperature", hf=_yarn_hf)
def yarn(shape: RopeShape, p: YarnParams, seq_len: int | None = None) -> RopeFreqs:
    return yarn_freqs(shape, p.factor, p.beta_fast, p.beta_slow, p.attention_factor, p.mscale,
                      p.mscale_all_dim, p.truncate)
