"""Hugging Face rope configs: read a model's RoPE shape, write a spec as stock rope fields.

Two schemas exist: transformers ≥ 5 reads `rope_parameters` (with rope_theta inside); 4.4x–4.5x read
top-level `rope_theta` + `rope_scaling`. Export writes both; tests load exports with 5.x and with 4.57.1 and get
ctxext's logits bit for bit. One exception by design: transformers before 4.56 computes YaRN's ramp from
`max_position_embeddings`, which ctxext writes as the extended length (DESIGN.md), so yarn exports need ≥ 4.56.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CtxextError
from .base import RopeShape
from .spec import Spec, check_fits, effective_shape, resolve_rope


def _rope_parameters(cfg: dict[str, Any]) -> dict[str, Any]:
    rp = cfg.get("rope_parameters") or {}
    if isinstance(rp, dict) and rp and all(isinstance(v, dict) for v in rp.values()):
        rp = rp.get("full_attention") or next(iter(rp.values()))  # per-layer-type configs
    return rp if isinstance(rp, dict) else {}


def rope_parameters_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """A model config's (as a dict) rope fields in either schema: rope_parameters (5.x) over rope_scaling (4.x)."""
    return {**(cfg.get("rope_scaling") or {}), **_rope_parameters(cfg)}


def config_rope_type(cfg: dict[str, Any]) -> str:
    """The rope type a model config (as a dict) asks stock transformers for, in either schema: 'default',
    'linear', 'yarn', 'longrope', 'dynamic', ..."""
    scaling = cfg.get("rope_scaling") or {}
    return str(_rope_parameters(cfg).get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default")


def rope_shape_from_config(cfg: dict[str, Any]) -> RopeShape:
    """RoPE shape of a model config (as a dict), in either schema."""
    rp = _rope_parameters(cfg)
    scaling = cfg.get("rope_scaling") or {}
    base = rp.get("rope_theta", cfg.get("rope_theta"))
    if base is None:
        raise CtxextError("model config has no rope_theta: is this a RoPE model?")
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    partial = rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    original = (rp.get("original_max_position_embeddings") or scaling.get("original_max_position_embeddings")
                or cfg.get("original_max_position_embeddings") or cfg["max_position_embeddings"])
    return RopeShape(int(head_dim * partial), float(base), int(original))


# Model types whose transformers config class takes only default and longrope ropes (5.x validates it).
LONGROPE_ONLY = ("phi3", "phi4_multimodal")


def hf_rope_fields(spec: Spec, shape: RopeShape, longrope_only: bool = False) -> tuple[dict[str, Any], int]:
    """(rope_parameters, max_position_embeddings) for a spec, or a CtxextError saying why no stock
    config can express it. Static methods without a named rope_type are written as explicit longrope factors, and
    so is every static method when the model's config takes no other type (`longrope_only`: Phi3)."""
    check_fits(spec, "rope")
    entry = spec.entry
    eff = effective_shape(spec, shape)
    out = entry.hf(eff, spec.params) if entry.hf else None
    if isinstance(out, str):
        raise CtxextError(f"cannot export '{spec.text}': {out}")
    if longrope_only and out is not None and out[0].get("rope_type", "default") not in ("default", "longrope"):
        out = None
    if out is None:
        if entry.length_dependent:
            raise CtxextError(f"cannot export '{spec.text}': no stock rope config expresses it"
                              + (" for this model, whose config takes only default and longrope ropes"
                                 if longrope_only else ""))
        freqs = resolve_rope(spec, shape)
        factors = [float(x) for x in eff.theta() / freqs.inv_freq]
        s = max(1.0, max(factors))
        out = ({"rope_type": "longrope", "rope_theta": eff.base, "factor": s,
                "original_max_position_embeddings": eff.original_len, "attention_factor": freqs.attention_factor,
                "short_factor": factors, "long_factor": factors}, round(eff.original_len * s))
    rope_parameters, max_pos = out
    return rope_parameters, int(max_pos)


def config_rope_fields(spec: Spec, config: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """hf_rope_fields for a model config: the spec's fields plus what the config's own rope_parameters carry
    that the spec does not set (Phi-style partial_rotary_factor lives there in transformers 5.x)."""
    rope_parameters, max_pos = hf_rope_fields(spec, rope_shape_from_config(config),
                                              longrope_only=config.get("model_type") in LONGROPE_ONLY)
    kept = config.get("rope_parameters") or {}
    if isinstance(kept, dict) and "partial_rotary_factor" in kept:
        rope_parameters = {**rope_parameters, "partial_rotary_factor": kept["partial_rotary_factor"]}
    return rope_parameters, max_pos


def legacy_rope_fields(rope_parameters: dict[str, Any]) -> dict[str, Any]:
    """The same rope as transformers 4.x fields: top-level rope_theta and rope_scaling (None for default)."""
    rest = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
    scaling = None if rest.get("rope_type", "default") == "default" else {**rest, "type": rest["rope_type"]}
    return {"rope_theta": rope_parameters["rope_theta"], "rope_scaling": scaling}


def factors_of(spec: Spec, shape: RopeShape, seq_len: int | None = None) -> np.ndarray:
    """Per-pair factors f_i = θ_i/θ'_i of a spec (plots, search seeds)."""
    return resolve_rope(spec, shape, seq_len).factors(effective_shape(spec, shape))
