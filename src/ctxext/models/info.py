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
OWN_ROTARY_CODE = ("gptj", "codegen")  # RoPE models whose rotation ctxext has no handle on


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


def kv_heads(cfg: dict[str, Any], heads: int) -> int:
    """Key/value heads: num_key_value_heads, or Falcon's num_kv_heads / multi_query (falcon-7b: 1 of 71)."""
    n = _get(cfg, "num_key_value_heads", "num_kv_heads")
    if cfg.get("model_type") == "falcon" and not cfg.get("new_decoder_architecture"):
        return 1 if cfg.get("multi_query", True) else heads
    return int(n) if n is not None else heads


def estimate_params(cfg: dict[str, Any]) -> int:
    """Parameter count from the config: embeddings, attention, MLP (gated or not; every expert of a mixture of
    experts, with its shared expert and router), norms, untied head."""
    h = _need(cfg, HIDDEN_KEYS)
    vocab = _need(cfg, ("vocab_size",))
    layers = _need(cfg, LAYERS_KEYS)
    heads = _need(cfg, HEADS_KEYS)
    kv = kv_heads(cfg, heads)
    hd = int(_get(cfg, "head_dim", default=h // heads))
    inter = int(_get(cfg, "intermediate_size", "n_inner", "ffn_dim",
                     default=int(_get(cfg, "expansion_ratio", default=4)) * h))
    gated = cfg.get("model_type") not in NON_GATED_MLP
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    experts = int(_get(cfg, "num_local_experts", "num_experts", "n_routed_experts", default=1) or 1)
    if experts > 1:  # Mixtral counted one MLP: 7.2B for 46.7B, and the memory check passed what cannot fit
        per = int(_get(cfg, "moe_intermediate_size", default=inter))
        shared = int(_get(cfg, "shared_expert_intermediate_size", default=0) or 0)
        mlp = (3 if gated else 2) * h * (experts * per + shared) + h * experts
    else:
        mlp = (3 if gated else 2) * h * inter
    head = 0 if cfg.get("tie_word_embeddings", True) else vocab * h
    return vocab * h + head + layers * (attn + mlp + 2 * h) + h


def counted_params(folder: Path) -> int | None:
    """The exact parameter count from the safetensors headers in `folder` (no weights read), or None."""
    import struct

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    total = 0
    try:
        # the files transformers loads: the index's shards, or model.safetensors (Mistral's releases also ship a
        # consolidated.safetensors beside them, which a glob counted twice)
        files = ([folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
                 if index.is_file() else [folder / "model.safetensors"])
        for f in files:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            for key, t in header.items():
                if key != "__metadata__":
                    size = 1
                    for d in t["shape"]:
                        size *= int(d)
                    total += size
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return total or None


def info_from_config(cfg: dict[str, Any], name: str, path: Path | str, n_params: int | None = None) -> ModelInfo:
    """ModelInfo from a config dict; a one-line CtxextError for a config ctxext cannot read or scale. `n_params`:
    the count from the weights' headers when known (else estimated from the config)."""
    model_type = cfg.get("model_type", "?")
    if uses_alibi(cfg):
        if model_type not in ALIBI_MODEL_TYPES:
            raise CtxextError(f"{name}: model type '{model_type}' uses ALiBi positions, which ctxext scales only in "
                              f"model type {', '.join(map(repr, ALIBI_MODEL_TYPES))} (BLOOM); '{model_type}' "
                              "with ALiBi is not supported")
        encoding, shape = "alibi", None
        trained = int(_get(cfg, "max_position_embeddings", "seq_length", "n_positions", "max_seq_len",
                           default=ALIBI_DEFAULT_WINDOW))
    elif model_type in OWN_ROTARY_CODE:
        raise CtxextError(f"{name}: model type '{model_type}' rotates positions in its own attention code (interleaved "
                          "pairs, no rotary module or rope config), which ctxext cannot rescale; it scales RoPE models "
                          "with a rotary module and rope_theta (Llama, Mistral, Qwen2, Phi3, GPT-NeoX, ...)")
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
        n_kv_heads=kv_heads(cfg, heads),
        n_layers=layers, hidden_size=hidden, vocab_size=vocab,
        n_params=n_params or estimate_params(cfg), trained_len=trained,
    )


def read_config(folder: Path, gguf_file: str | None = None) -> dict[str, Any]:
    """The config as transformers normalises it (defaults filled in, rope fields in rope_parameters)."""
    offline()
    from transformers import AutoConfig

    raw = {}
    if gguf_file is None:
        try:
            raw = json.loads((Path(folder) / "config.json").read_text())
        except (OSError, ValueError):
            pass
    try:
        cfg = AutoConfig.from_pretrained(str(folder), gguf_file=gguf_file, local_files_only=True,
                                         trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - config classes also raise huggingface_hub's validation errors
        if isinstance(raw, dict) and raw.get("auto_map"):  # transformers asked to run the folder's own Python code
            raise CtxextError(f"{folder}: model type '{raw.get('model_type', '?')}' needs the folder's own Python "
                              "code (auto_map in config.json); ctxext loads only transformers' built-in "
                              "architectures and never runs a model's code") from None
        raise _config_error(folder, gguf_file, e) from None
    return cfg.to_dict()


def _config_error(folder: Path, gguf_file: str | None, e: Exception) -> CtxextError:
    what = f"{folder / gguf_file}" if gguf_file else f"{folder}/config.json"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return CtxextError(f"cannot read the model config {what}: {first}")


def model_info(name: str) -> ModelInfo:
    """Config-only facts about a model name (built-in, HF directory or .gguf file); no weights are loaded."""
    src = resolve_source(name)
    counted = None
    if src.kind == "hf":
        cfg = read_config(src.path)
        counted = counted_params(src.path)
    else:
        converted = gguf_cache_dir(src.path)
        if is_converted(converted):
            cfg, counted = read_config(converted), counted_params(converted)
        else:
            cfg = read_config(src.path.parent, src.path.name)
        cfg.pop("quantization_config", None)
    return info_from_config(cfg, name, src.path, counted)

