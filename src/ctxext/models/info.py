"""What a model is, from its config alone: position encoding, RoPE shape or ALiBi heads, sizes.

`model_info` never loads weights. For a GGUF file it reads the converted directory's config when the cache has
one, else the GGUF metadata (a few seconds, no conversion).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CtxextError
from ..scaling import RopeShape, rope_shape_from_config
from .alibi import ALIBI_MODEL_TYPES, uses_alibi
from .names import gguf_cache_dir, is_converted, offline, resolve_source

ALIBI_DEFAULT_WINDOW = 2048  # BLOOM's training length, used when a BLOOM config does not name one
NON_GATED_MLP = ("bloom", "gpt2", "gpt_neox", "gptj", "falcon", "mpt", "opt")


@dataclass(frozen=True)
class ModelInfo:
    """Config-only facts. `path` is the model's source (HF directory or .gguf file); `config` the full config
    as a dict; `trained_len` the RoPE original length or the ALiBi training window."""

    name: str
    path: Path
    config: dict[str, Any] = field(repr=False, compare=False, hash=False)
    encoding: str  # "rope" | "alibi"
    rope_shape: RopeShape | None
    n_heads: int
    n_kv_heads: int
    n_layers: int
    hidden_size: int
    vocab_size: int
    n_params: int
    trained_len: int


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


# the config keys each size goes by across families (MPT: n_heads, d_model, n_layers, max_seq_len)
HEADS_KEYS = ("num_attention_heads", "n_head", "n_heads")
HIDDEN_KEYS = ("hidden_size", "n_embed", "n_embd", "d_model")
LAYERS_KEYS = ("num_hidden_layers", "n_layer", "n_layers")


def _need(cfg: dict[str, Any], keys: tuple[str, ...], who: str = "") -> int:
    """The first of `keys` the config has, as a positive int; else a one-line CtxextError naming them."""
    value = _get(cfg, *keys)
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n <= 0 or isinstance(value, bool):
        got = "none of them" if value is None else repr(value)
        raise CtxextError(f"{who or 'config'}: model type '{cfg.get('model_type', '?')}' needs a positive integer in "
                          f"{' or '.join(keys)}; it has {got}")
    return n


def estimate_params(cfg: dict[str, Any]) -> int:
    """Parameter count from the config: embeddings, attention, MLP (gated or not), norms, untied head."""
    h = _need(cfg, HIDDEN_KEYS)
    vocab = _need(cfg, ("vocab_size",))
    layers = _need(cfg, LAYERS_KEYS)
    heads = _need(cfg, HEADS_KEYS)
    kv = int(_get(cfg, "num_key_value_heads", default=heads))
    hd = int(_get(cfg, "head_dim", default=h // heads))
    inter = int(_get(cfg, "intermediate_size", "n_inner", "ffn_dim",
                     default=int(_get(cfg, "expansion_ratio", default=4)) * h))
    gated = cfg.get("model_type") not in NON_GATED_MLP
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    mlp = (3 if gated else 2) * h * inter
    head = 0 if cfg.get("tie_word_embeddings", True) else vocab * h
    return vocab * h + head + layers * (attn + mlp + 2 * h) + h


def info_from_config(cfg: dict[str, Any], name: str, path: Path | str) -> ModelInfo:
    """ModelInfo from a config dict; a one-line CtxextError for a config ctxext cannot read or scale."""
    model_type = cfg.get("model_type", "?")
    if uses_alibi(cfg):
        if model_type not in ALIBI_MODEL_TYPES:
            raise CtxextError(f"{name}: model type '{model_type}' uses ALiBi positions, which ctxext scales only in "
                              f"model type {', '.join(map(repr, ALIBI_MODEL_TYPES))} (BLOOM); '{model_type}' "
                              "with ALiBi is not supported")
        encoding, shape = "alibi", None
        trained = int(_get(cfg, "max_position_embeddings", "seq_length", "n_positions", "max_seq_len",
                           default=ALIBI_DEFAULT_WINDOW))
    else:
        try:
            shape = rope_shape_from_config(cfg)
        except (CtxextError, KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            raise CtxextError(f"{name}: model type '{model_type}' uses neither RoPE nor ALiBi as ctxext reads "
                              f"configs ({e})") from None
        encoding, trained = "rope", shape.original_len
    heads, layers, hidden, vocab = (_need(cfg, keys, name) for keys in (HEADS_KEYS, LAYERS_KEYS, HIDDEN_KEYS,
                                                                          ("vocab_size",)))
    return ModelInfo(
        name=name, path=Path(path), config=cfg, encoding=encoding, rope_shape=shape, n_heads=heads,
        n_kv_heads=int(_get(cfg, "num_key_value_heads", default=heads)),
        n_layers=layers, hidden_size=hidden, vocab_size=vocab,
        n_params=estimate_params(cfg), trained_len=trained,
    )


def read_config(folder: Path, gguf_file: str | None = None) -> dict[str, Any]:
    """The config as transformers normalises it (defaults filled in, rope fields in rope_parameters)."""
    offline()
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(folder), gguf_file=gguf_file, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - config classes also raise huggingface_hub's validation errors
        what = f"{folder / gguf_file}" if gguf_file else f"{folder}/config.json"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CtxextError(f"cannot read the model config {what}: {first}") from None
    return cfg.to_dict()


def model_info(name: str) -> ModelInfo:
    """Config-only facts about a model name (built-in, HF directory or .gguf file); no weights are loaded."""
    src = resolve_source(name)
    if src.kind == "hf":
        cfg = read_config(src.path)
    else:
        converted = gguf_cache_dir(src.path)
        cfg = read_config(converted) if is_converted(converted) else read_config(src.path.parent, src.path.name)
        cfg.pop("quantization_config", None)
    return info_from_config(cfg, name, src.path)

