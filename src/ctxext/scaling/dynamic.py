"""Length-dependent methods: dynamic NTK and dynamic YaRN recompute frequencies for the current length t.

In a model they must not be mixed with keys cached under another length (the known dynamic-NTK cache bug):
ctxext caches keys before RoPE and rotates them with the frequencies of the current length
(see ctxext.models.attention).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Params, RopeFreqs, RopeShape, check_factor, register
from .basic import Factor, ntk_base
from .yarn import yarn_freqs


def dynamic_ntk_scale(alpha: float, seq_len: int | None, original_len: int) -> float:
    """s_t = max(1, α·t/L − (α−1)); t defaults to L (no change)."""
    t = original_len if seq_len is None else max(seq_len, original_len)
    return max(1.0, alpha * t / original_len - (alpha - 1))


@register("dynamic-ntk", Factor, length_dependent=True, summary="NTK base recomputed for the current length",
          hf=lambda shape, p: ({"rope_type": "dynamic", "rope_theta": shape.base, "factor": p.factor},
                               shape.original_len))
def dynamic_ntk(shape: RopeShape, p: Factor, seq_len: int | None = None) -> RopeFreqs:
    s = dynamic_ntk_scale(p.factor, seq_len, shape.original_len)
    return RopeFreqs(shape.theta(ntk_base(shape.base, shape.rotary_dim, s)))


@dataclass(frozen=True, kw_only=True)
class DynYarnParams(Params):
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    max_factor: float | None = None  # optional cap on s_t

    def __post_init__(self) -> None:
        if self.max_factor is not None:
            check_factor("max_factor", self.max_factor)


def _no_stock(shape: RopeShape, p: Params) -> str:
    return "no stock rope_type recomputes YaRN per length; export yarn:factor=s for a fixed target instead"


@register("dynamic-yarn", DynYarnParams, length_dependent=True, hf=_no_stock,
          summary="YaRN with s_t = t/L recomputed for the current length")
def dynamic_yarn(shape: RopeShape, p: DynYarnParams, seq_len: int | None = None) -> RopeFreqs:
    t = shape.original_len if seq_len is None else seq_len
    s = max(1.0, t / shape.original_len)
    if p.max_factor is not None:
        s = min(s, p.max_factor)
    return yarn_freqs(shape, s, p.beta_fast, p.beta_slow)
