"""The float32 inv_freq that stock transformers computes for the checkpoint ctxext would export.

ctxext's methods (`ctxext.scaling`) compute frequencies from plain numbers; transformers computes the same
formulas in float32 from the exported config, and for some methods (YaRN's ramp, llama3's bands) the two land an
ulp apart (≤ 1.1e-7 relative). One ulp of the fastest pair is ~1e-4 rad at position 1 000, enough to move logits:
SmolLM2 + yarn:factor=2 at 1 000 tokens differed from its stock-loaded export by 7.6e-5, and by 1.5e-4 (over
export's 1e-4 check) after a LoRA run had sharpened the logits; with transformers' vector the difference is 0.

So when a stock config expresses a static spec, the model ctxext evaluates and trains uses transformers' own
rounding of the frequencies, and the exported checkpoint runs bit for bit what was measured. The vector is used
only when it agrees with ctxext's to rtol 1e-5 (float32 rounding reaches 1.9e-6 for YaRN's un-truncated ramp at
s = 32, d = 128; a different formula differs by far more); otherwise ctxext's own stays, and export's logit check
reports the difference.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import CtxextError
from ..scaling import RopeFreqs, Spec, config_rope_fields
from ..scaling.hf import config_rope_type, rope_parameters_of

AGREE_RTOL = 1e-5


def stock_freqs(config: Any, spec: Spec, freqs: RopeFreqs, seq_len: int | None = None) -> RopeFreqs:
    """`freqs` (ctxext's for `spec` at length `seq_len` on a model with this PretrainedConfig) with transformers'
    inv_freq and attention factor for the exported config; `freqs` itself when no stock function computes them
    (dynamic methods, whose stock form differs from ctxext's per-position one; a default-type rope, already computed
    the same way) or they disagree beyond AGREE_RTOL. longrope's stock function takes the length: short factors
    up to the original length, long ones past it."""
    stock = _stock(config, spec, seq_len)
    if stock is None:
        return freqs
    inv_freq, factor = stock
    if inv_freq.shape != np.shape(freqs.inv_freq) or not np.allclose(inv_freq, freqs.inv_freq, rtol=AGREE_RTOL, atol=0.0) \
            or not np.isclose(factor, freqs.attention_factor, rtol=AGREE_RTOL, atol=0.0):
        return freqs
    return replace(freqs, inv_freq=inv_freq, attention_factor=factor)


def _stock(config: Any, spec: Spec, seq_len: int | None) -> tuple[np.ndarray, float] | None:
    if spec.entry.length_dependent and spec.method != "longrope":
        return None
    try:
        rope_parameters, max_pos = config_rope_fields(spec, config.to_dict())
    except CtxextError:  # no stock config expresses it (export refuses it for the same reason)
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    fn = ROPE_INIT_FUNCTIONS.get(rope_parameters.get("rope_type", "default"))
    if fn is None:
        return None
    cfg = copy.deepcopy(config)
    cfg.rope_parameters = dict(rope_parameters)
    cfg.max_position_embeddings = max_pos
    try:
        inv_freq, factor = fn(cfg, "cpu", seq_len)
    except (KeyError, TypeError, ValueError, AttributeError):  # a config layout this transformers does not read
        return None
    return inv_freq.detach().double().numpy(), float(factor)


OWN_LENGTH_DEPENDENT = ("dynamic", "longrope")  # own ropes whose frequencies change with the length


def own_rope_refusal(method: str, rope_type: str) -> str:
    return (f"{method} keeps the model's own RoPE, but this checkpoint's ('{rope_type}') changes with the length; "
            "ctxext cannot combine the two")


def checkpoint_freqs(config: Any, method: str) -> RopeFreqs | None:
    """The checkpoint's own RoPE, for methods that move positions and keep the model's frequencies (self-extend,
    streaming): None for a default-type rope (b^(−2i/d), which ctxext computes itself); transformers' inv_freq and
    attention factor when the config scales it (llama3 as in Llama 3.1/3.2, yarn, linear); a one-line refusal when
    the own rope changes with the length (dynamic, longrope), which a position plan cannot keep."""
    rope_type = config_rope_type(config.to_dict())
    if rope_type == "default":
        return None
    if rope_type in OWN_LENGTH_DEPENDENT:
        raise CtxextError(own_rope_refusal(method, rope_type))
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    fn = ROPE_INIT_FUNCTIONS.get(rope_type)
    try:
        inv_freq, factor = fn(config, "cpu")  # type: ignore[misc]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CtxextError(f"{method}: cannot compute this checkpoint's own '{rope_type}' RoPE ({e})") from None
    return RopeFreqs(inv_freq.detach().double().numpy(), float(factor))


def own_window(cfg: dict[str, Any]) -> int:
    """The length a checkpoint whose config scales its RoPE was made for: its max_position_embeddings, or the
    original length × factor where that is longer (some yarn configs keep the original max_position_embeddings)."""
    rp = rope_parameters_of(cfg)
    original = rp.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings")
    if not original and config_rope_type(cfg) == "linear":
        original = int(cfg["max_position_embeddings"])  # linear configs keep the pre-scaling length (vLLM reads so)
    scaled = int(round(original * float(rp.get("factor", 1.0)))) if original else 0
    return max(int(cfg["max_position_embeddings"]), scaled)
