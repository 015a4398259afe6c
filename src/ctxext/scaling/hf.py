"""Hugging Face rope configs: read a model's RoPE shape, write a spec as stock rope fields.

Two schemas exist: transformers ≥ 5 reads `rope_parameters` (with rope_theta inside); 4.4x–4.5x read
top-level `rope_theta` + `rope_scaling`. Export writes both; tests load exports with 5.x and with 4.57.1 and get
ctxext's logits bit for bit. One exception by design: yarn exports need ≥ 4.56. Before 4.51 transformers computes
YaRN's ramp from `max_position_embeddings`, which ctxext writes as the extended length (DESIGN.md); 4.51–4.55 take
the factor as max_position_embeddings / original length (off when factor × L is not whole) and ignore `truncate`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CtxextError
from .base import RopeShape
from .longrope import longrope_attention_factor
from .yarn import yarn_mscale
from .spec import MAX_POSITIONS, Spec, check_fits, effective_shape, resolve_rope


def per_layer_rope(cfg: dict[str, Any]) -> list[str]:
    """The layer types of a config that gives each its own rope (Gemma 3: sliding_attention, full_attention)."""
    rp = cfg.get("rope_parameters")
    return list(rp) if isinstance(rp, dict) and rp and all(isinstance(v, dict) for v in rp.values()) else []


def _rope_parameters(cfg: dict[str, Any]) -> dict[str, Any]:
    rp = cfg.get("rope_parameters") or {}
    if per_layer_rope(cfg):
        rp = rp.get("full_attention") or next(iter(rp.values()))  # planned for the full-attention layers
    return rp if isinstance(rp, dict) else {}


def rope_parameters_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """A model config's (as a dict) rope fields in either schema: rope_parameters (5.x) over rope_scaling (4.x)."""
    return {**(cfg.get("rope_scaling") or {}), **_rope_parameters(cfg)}


def config_rope_type(cfg: dict[str, Any]) -> str:
    """The rope type a model config (as a dict) asks stock transformers for, in either schema: 'default',
    'linear', 'yarn', 'longrope', 'dynamic', ..."""
    rp = rope_parameters_of(cfg)
    return str(rp.get("rope_type") or rp.get("type") or "default")


def rope_shape_from_config(cfg: dict[str, Any]) -> RopeShape:
    """RoPE shape of a model config (as a dict), in either schema."""
    rp = _rope_parameters(cfg)
    base = rp.get("rope_theta", cfg.get("rope_theta"))
    if base is None:
        raise CtxextError("model config has no rope_theta: is this a RoPE model?")
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    partial = rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    original = (rope_parameters_of(cfg).get("original_max_position_embeddings")
                or cfg.get("original_max_position_embeddings") or cfg["max_position_embeddings"])
    if config_rope_type(cfg) == "default" and cfg.get("max_position_embeddings"):
        # an unscaled rope never reads the field: Phi3Config writes its class default 4096 into a 256-token model's
        # config; ctxext's abf exports keep the trained length there below a longer --max-len
        original = min(int(original), int(cfg["max_position_embeddings"]))
    return RopeShape(int(head_dim * partial), float(base), int(original))


# Model types whose transformers config class takes only default and longrope ropes (5.x validates it), and whose
# 4.x config takes rope_scaling as exactly {type, short_factor, long_factor} with the rest at the top level.
LONGROPE_ONLY = ("phi3", "phi4_multimodal")


def hf_rope_fields(spec: Spec, shape: RopeShape, longrope_only: bool = False) -> tuple[dict[str, Any], int]:
    """(rope_parameters, max_position_embeddings) for a spec, or a CtxextError saying why no stock
    config can express it. Static methods without a named rope_type are written as explicit longrope factors, and
    so is every static method when the model's config takes no other type (`longrope_only`: Phi3); those keep the
    method's own max_position_embeddings (linear: the original length)."""
    check_fits(spec, "rope")
    entry = spec.entry
    eff = effective_shape(spec, shape)
    out = entry.hf(eff, spec.params) if entry.hf else None
    if isinstance(out, str):
        raise CtxextError(f"cannot export '{spec.text}': {out}")
    own_max = None
    if longrope_only and out is not None and out[0].get("rope_type", "default") not in ("default", "longrope"):
        out, own_max = None, out[1]
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
                "short_factor": factors, "long_factor": factors}, eff.original_len * s if own_max is None else own_max)
    rope_parameters, max_pos = out
    if not max_pos <= MAX_POSITIONS:  # also inf and nan
        raise CtxextError(f"cannot export '{spec.text}': it implies max_position_embeddings {max_pos:.3g}, over "
                          f"the {MAX_POSITIONS} (2**31 - 1) positions ctxext accepts")
    return rope_parameters, int(round(max_pos))


def own_rope_fields(config: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A model config's own rope (either schema, as rope_parameters) and max_position_embeddings: what `default`,
    the model as loaded, exports."""
    rope_parameters = {k: v for k, v in rope_parameters_of(config).items() if k != "type" and v is not None}
    rope_parameters["rope_type"] = config_rope_type(config)
    rope_parameters.setdefault("rope_theta", rope_shape_from_config(config).base)
    return rope_parameters, int(config["max_position_embeddings"])


def config_rope_fields(spec: Spec, config: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """hf_rope_fields for a model config: the spec's fields plus what the config's own rope_parameters carry
    that the spec does not set (Phi-style partial_rotary_factor lives there in transformers 5.x). `default` keeps
    the config's own rope and max_position_embeddings (a llama3, linear or yarn checkpoint stays one)."""
    longrope_only = config.get("model_type") in LONGROPE_ONLY
    if spec.method == "default":
        check_fits(spec, "rope")
        rope_parameters, max_pos = own_rope_fields(config)
    else:
        rope_parameters, max_pos = hf_rope_fields(spec, rope_shape_from_config(config), longrope_only)
    kept = config.get("rope_parameters") or {}
    if isinstance(kept, dict) and "partial_rotary_factor" in kept:
        rope_parameters = {**rope_parameters, "partial_rotary_factor": kept["partial_rotary_factor"]}
    if longrope_only:
        _check_legacy_longrope(spec, config, rope_parameters, max_pos)
    return rope_parameters, max_pos


def _check_legacy_longrope(spec: Spec, config: dict[str, Any], rope_parameters: dict[str, Any], max_pos: int) -> None:
    """transformers 4.x's Phi3 config takes no attention factor: its longrope derives sqrt(1 + ln s / ln L) from
    s = max_position_embeddings / L (L: the top-level original length). Refuse a longrope whose own factor
    differs after float32 rounding (what scales cos and sin), since 4.x would run a different model."""
    want = rope_parameters.get("attention_factor")
    if rope_parameters.get("rope_type") != "longrope" or want is None:
        return
    original = int(rope_parameters.get("original_max_position_embeddings")
                   or config.get("original_max_position_embeddings") or max_pos)
    derived = longrope_attention_factor(max_pos / original, original)
    if np.float32(derived) != np.float32(want):
        raise CtxextError(
            f"cannot export '{spec.text}' for {config.get('model_type')}: transformers 4.x derives the attention "
            f"factor from max_position_embeddings / original length ({max_pos}/{original} -> {derived:.6g}), and this "
            f"spec's is {float(want):.6g}; export one with that factor (default, abf, ntk, linear, or longrope "
            "whose factor times the original length is a whole number)")


NEOX_NAMES = ("gpt_neox", "gpt_neox_japanese")  # 4.x: rotary_emb_base and rotary_pct (defaults 10000, 0.25 / 1.0)


def legacy_rope_fields(rope_parameters: dict[str, Any], model_type: str | None = None) -> dict[str, Any]:
    """The same rope as transformers 4.x fields: top-level rope_theta and rope_scaling (None for default), and
    partial_rotary_factor at the top level, the only place 4.x reads it. For LONGROPE_ONLY models rope_scaling is
    exactly {type, short_factor, long_factor}, all 4.x's Phi3 config accepts (the original length goes at the top
    level; the attention factor is derived, see _check_legacy_longrope)."""
    rest = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
    rope_type = rest.get("rope_type", "default")
    if rope_type == "default":
        scaling = None
    elif model_type in LONGROPE_ONLY:
        scaling = {"type": rope_type, "short_factor": rest.get("short_factor"), "long_factor": rest.get("long_factor")}
    else:
        scaling = {**rest, "type": rope_type}
    top = {"partial_rotary_factor": rest["partial_rotary_factor"]} if "partial_rotary_factor" in rest else {}
    if model_type in NEOX_NAMES:  # 4.x's GPT-NeoX configs read only these, and set rope_theta from rotary_emb_base
        top = {"rotary_emb_base": rope_parameters["rope_theta"],
               **({"rotary_pct": top["partial_rotary_factor"]} if top else {}), **top}
    return {"rope_theta": rope_parameters["rope_theta"], "rope_scaling": scaling, **top}


def factors_of(spec: Spec, shape: RopeShape, seq_len: int | None = None) -> np.ndarray:
    """Per-pair factors f_i = θ_i/θ'_i of a spec (plots, search seeds)."""
    return resolve_rope(spec, shape, seq_len).factors(effective_shape(spec, shape))


# attention modules that fold YaRN's mscale(factor, mscale_all_dim)^2 from the config's rope into their softmax
# scale when built (DeepSeek-V2/V3's multi-head latent attention and its descendants): a spec sets that scale as
# stock transformers would for the rope config it exports (swapping the rotary module alone left the checkpoint's
# own scale baked in: logits 6-7.5 off stock)
SCALE_AT_INIT = ("axk1", "axk2", "bailing_hybrid", "deepseek_v2", "deepseek_v3", "deepseek_v32", "glm4_moe_lite",
                 "glm_moe_dsa", "hy_v4", "longcat_flash", "minicpm3", "mistral4", "mistral_large4", "youtu")
# the ones whose every static method is tested equal to the stock model of its exported config; the others keep
# only `default` (their rotary modules and configs differ in ways not checked here)
SCALE_SET = ("deepseek_v2", "deepseek_v3")


def takes_default_only(model_type: str | None) -> bool:
    """An architecture ctxext applies only `default` to: it sets its softmax scale from the rope when built, and
    ctxext does not redo that for it (eval, export and the planner's picks all follow this)."""
    return model_type in SCALE_AT_INIT and model_type not in SCALE_SET


def softmax_scale_at_init(rope_parameters: dict[str, Any], head_dim: int) -> float:
    """The softmax scale DeepSeek-V2/V3-style attention (multi-head latent attention) computes when it is built:
    head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 when the config's rope is scaled and names
    mscale_all_dim (DeepSeek's YaRN, whose temperature covers every query-key channel, not only the rotated
    ones). Multiplied in transformers' order, so the float is the one a stock model holds."""
    scale = head_dim ** (-0.5)
    all_dim = rope_parameters.get("mscale_all_dim")
    if rope_parameters.get("rope_type", "default") != "default" and all_dim:
        m = yarn_mscale(rope_parameters["factor"], all_dim)
        scale = scale * m * m
    return scale
