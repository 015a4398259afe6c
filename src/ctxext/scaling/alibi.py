"""ALiBi slopes and their context-extension variants.

ALiBi: Press et al. 2022, https://arxiv.org/abs/2108.12409 (bias m_h·(j−i) on logits).
Interpolated ALiBi divides every slope by a; NTK-ALiBi divides the flattest head by a and leaves the
steepest unchanged, geometrically in between (high frequencies extrapolate, low ones interpolate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .base import Params, check_factor, register


def alibi_slopes(n_heads: int) -> np.ndarray:
    """m_h = 2^(−8h/H) for H a power of two; otherwise the nearest lower power c, then every other
    slope of the 2c set for the remaining H − c heads (the ALiBi paper's rule)."""
    if n_heads <= 0:
        raise ValueError(f"n_heads must be positive, got {n_heads}")

    def pow2(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    c = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = pow2(c)
    if c < n_heads:
        slopes += pow2(2 * c)[0::2][: n_heads - c]
    return np.asarray(slopes, dtype=np.float64)


def steepness_rank(slopes: np.ndarray) -> np.ndarray:
    """0 for the steepest head … H−1 for the flattest (slopes of non-power-of-two H are not sorted)."""
    order = np.argsort(-slopes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(slopes))
    return rank


@dataclass(frozen=True, kw_only=True)
class AlibiFactor(Params):
    """a = L'/L."""

    factor: float

    def __post_init__(self) -> None:
        check_factor("factor", self.factor)


@register("alibi-interp", AlibiFactor, encodings=("alibi",), summary="every ALiBi slope divided by a")
def alibi_interp(n_heads: int, p: AlibiFactor) -> np.ndarray:
    return alibi_slopes(n_heads) / p.factor


@register("ntk-alibi", AlibiFactor, encodings=("alibi",),
          summary="steepest slope kept, flattest divided by a, geometric in between")
def ntk_alibi(n_heads: int, p: AlibiFactor) -> np.ndarray:
    slopes = alibi_slopes(n_heads)
    if n_heads == 1:
        return slopes / p.factor
    return slopes / p.factor ** (steepness_rank(slopes) / (n_heads - 1))
