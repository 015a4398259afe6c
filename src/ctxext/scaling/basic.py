"""Whole-spectrum RoPE changes: default, linear (PI), base change (ABF) and static NTK-aware.

PI: Chen et al. 2023, https://arxiv.org/abs/2306.15595 · ABF: Xiong et al. 2023 (LLaMA 2 Long),
https://arxiv.org/abs/2309.16039 · NTK-aware: bloc97, 2023.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CtxextError
from .alibi import alibi_slopes
from .base import Params, RopeFreqs, RopeShape, check_factor, register


@dataclass(frozen=True, kw_only=True)
class NoParams(Params):
    pass


@dataclass(frozen=True, kw_only=True)
class Factor(Params):
    """s = L'/L, the context-extension factor."""

    factor: float

    def __post_init__(self) -> None:
        check_factor("factor", self.factor)


@dataclass(frozen=True, kw_only=True)
class Base(Params):
    base: float

    def __post_init__(self) -> None:
        if not self.base > 0:
            raise CtxextError(f"abf: base must be > 0, got {self.base:g}")


def ntk_base(base: float, rotary_dim: int, factor: float) -> float:
    """NTK-aware base b' = b · s^(d/(d−2)): the lowest frequency is interpolated by exactly s."""
    if rotary_dim <= 2:
        raise CtxextError(f"ntk: needs a rotary dim above 2 (b·s^(d/(d−2))), this model has {rotary_dim}")
    return base * factor ** (rotary_dim / (rotary_dim - 2))


def _keep(shape: RopeShape, p: Params) -> tuple[dict, int]:
    return {"rope_type": "default", "rope_theta": shape.base}, shape.original_len


@register("default", NoParams, encodings=("rope", "alibi"), summary="the model as trained",
          hf=_keep, alibi=lambda n_heads, p: alibi_slopes(n_heads))
def default(shape: RopeShape, p: NoParams, seq_len: int | None = None) -> RopeFreqs:
    return RopeFreqs(shape.theta())


@register("linear", Factor, summary="position interpolation: every frequency divided by s",
          hf=lambda shape, p: ({"rope_type": "linear", "rope_theta": shape.base, "factor": p.factor},
                               shape.original_len))
def linear(shape: RopeShape, p: Factor, seq_len: int | None = None) -> RopeFreqs:
    return RopeFreqs(shape.theta() / p.factor)


@register("abf", Base, summary="adjusted base frequency: b -> B (LLaMA 2 Long, Code Llama)",
          hf=lambda shape, p: ({"rope_type": "default", "rope_theta": p.base}, shape.original_len))
def abf(shape: RopeShape, p: Base, seq_len: int | None = None) -> RopeFreqs:
    return RopeFreqs(shape.theta(p.base))


@register("ntk", Factor, summary="static NTK-aware: base b·s^(d/(d-2))",
          hf=lambda shape, p: ({"rope_type": "default", "rope_theta": ntk_base(shape.base, shape.rotary_dim, p.factor)},
                               round(shape.original_len * p.factor)))
def ntk(shape: RopeShape, p: Factor, seq_len: int | None = None) -> RopeFreqs:
    return RopeFreqs(shape.theta(ntk_base(shape.base, shape.rotary_dim, p.factor)))
