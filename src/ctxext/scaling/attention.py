"""Training-free attention methods for RoPE models: Self-Extend and StreamingLLM.

Neither changes a frequency: both keep the model's own RoPE and change which relative position each
query-key pair sees (ctxext.models.self_extend, ctxext.models.streaming implement them as position plans).
So their `rope` function returns the model's default frequencies, and no stock Hugging Face config can
express them (`hf` returns the one-line reason export prints).

Self-Extend: Jin et al. 2024, https://arxiv.org/abs/2401.01325 — keys within `window` of the query keep exact
positions; farther keys use grouped positions (query i//G + W − W//G, key j//G); one softmax over both.
Max reach (L − W)·G + W.
StreamingLLM: Xiao et al. 2023, https://arxiv.org/abs/2309.17453 — the first `sinks` tokens plus the last
`window` tokens stay in the KV cache, positions by cache slot; constant memory over any stream length.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CtxextError
from .base import Params, RopeFreqs, RopeShape, register


def _at_least(method: str, name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise CtxextError(f"{method}: {name} must be >= {minimum}, got {value}")


@dataclass(frozen=True, kw_only=True)
class SelfExtendParams(Params):
    """G = group size (1 = the model as trained), W = neighbour window in tokens (exact positions)."""

    group: int
    window: int

    def __post_init__(self) -> None:
        _at_least("self-extend", "group", self.group, 1)
        _at_least("self-extend", "window", self.window, 1)

    def check_trained_len(self, trained_len: int) -> None:
        if self.window >= trained_len:
            raise CtxextError(f"self-extend: window={self.window} must be smaller than the trained length "
                              f"{trained_len} (neighbour positions beyond it were never trained)")


@dataclass(frozen=True, kw_only=True)
class StreamingParams(Params):
    """`sinks` first tokens kept forever (attention sinks) + the last `window` tokens (the current one included)."""

    window: int
    sinks: int = 4

    def __post_init__(self) -> None:
        _at_least("streaming", "sinks", self.sinks, 0)
        _at_least("streaming", "window", self.window, 1)

    def check_trained_len(self, trained_len: int) -> None:
        if self.sinks + self.window > trained_len:
            raise CtxextError(f"streaming: sinks + window = {self.sinks + self.window} must fit in the trained "
                              f"length {trained_len} (cache slots beyond it were never trained)")


def self_extend_reach(original_len: int, p: SelfExtendParams) -> int:
    """Longest sequence whose grouped positions stay inside the trained length: the last query's grouped position
    (N − 1)//G + W − W//G must be ≤ L − 1, so N = G·(L − W + W//G); (L − W)·G + W when G divides W."""
    return p.group * (original_len - p.window + p.window // p.group)


def _no_export_self_extend(shape: RopeShape, p: SelfExtendParams) -> str:
    return ("self-extend changes attention (grouped positions past the neighbour window), which no stock config "
            "can express; a written checkpoint would silently run plain RoPE")


def _no_export_streaming(shape: RopeShape, p: StreamingParams) -> str:
    return ("streaming evicts the KV cache and assigns positions by cache slot, which no stock config can "
            "express; a written checkpoint would silently run full attention")


POSITION_METHODS = ("self-extend", "streaming")  # methods that move positions and keep the model's frequencies


def model_rope(shape: RopeShape, p: Params, seq_len: int | None = None) -> RopeFreqs:
    """The model's default frequencies; a checkpoint whose config scales its RoPE (llama3, yarn ...) gets its own
    in place of these when the spec is applied (ctxext.models.stock_rope.checkpoint_freqs)."""
    return RopeFreqs(shape.theta())


# length_dependent: these methods need a position plan in the attention layers (ctxext.models.attention.PLANS);
# their frequencies never change with length.
register("self-extend", SelfExtendParams, length_dependent=True, hf=_no_export_self_extend,
         summary="grouped positions beyond a neighbour window, one softmax (training-free)")(model_rope)
register("streaming", StreamingParams, length_dependent=True, hf=_no_export_streaming,
         summary="attention sinks + rolling window, positions by cache slot (constant memory)")(model_rope)
