"""What a run needs before its first step: the training spec, the export plan, the memory estimate (all from the
config, no weights), then the model with the spec applied, LoRA, and gradient checkpointing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CtxextError
from ..scaling import Spec, factors_of, parse_spec, resolve_rope
from ..scaling.spec import effective_shape
from .config import TrainConfig
from .memory import MemoryEstimate, estimate


def mixed_window_spec(spec: Spec, shape: Any, seq_len: int) -> Spec:
    """The longrope spec of LongRoPE2's mixed context window: the original RoPE (short factors 1) for sequences
    up to the original length L, the factors of `spec` (long factors) past it; the checkpoint switches by length
    the same way (a stock longrope config)."""
    from ..scaling import REGISTRY

    if spec.method == "longrope":
        return spec
    if spec.entry.length_dependent:
        raise CtxextError(f"--mixed-window needs a static method to take the long factors from, not '{spec.method}'")
    L = effective_shape(spec, shape).original_len
    if seq_len <= L:
        raise CtxextError(f"--mixed-window: --seq-len {seq_len} is not longer than the original window {L}")
    freqs = resolve_rope(spec, shape)
    long = np.maximum.accumulate(factors_of(spec, shape))  # rounding noise must not break monotonicity
    params = REGISTRY["longrope"].make_params({
        "factor": getattr(spec.params, "factor", None) or seq_len / L, "long_factor": [float(x) for x in long], "short_factor": [1.0] * len(long),
        "attention_factor": freqs.attention_factor})
    meta = {"mixed_window_from": spec.text}
    return Spec("longrope", params, f"longrope(mixed window, long = {spec.text})", spec.original_len, meta)


@dataclass(frozen=True)
class RunPlan:
    """Resolved from the config alone."""

    info: Any  # ctxext.models.ModelInfo
    spec: Spec  # applied during training and written into the export
    export: Any  # ctxext.export.ExportPlan
    n_trainable: int
    memory: MemoryEstimate


def lora_params(cfg: dict[str, Any], targets: tuple[str, ...], rank: int) -> int:
    """Adapter parameters r·(in + out) per targeted projection and layer, from the config's dimensions."""
    h = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or h // heads
    kv = (cfg.get("num_key_value_heads") or heads) * hd
    inter = cfg.get("intermediate_size") or 4 * h
    dims = {"q_proj": (h, heads * hd), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (heads * hd, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    per_layer = sum(rank * sum(dims.get(t, (h, h))) for t in targets)
    return per_layer * cfg["num_hidden_layers"]


def plan_run(cfg: TrainConfig, rows_per_forward: int, bf16: bool, shards: int, malloc_tuned: bool = False) -> RunPlan:
    """Spec, export plan and memory estimate; every refusal that needs no weights happens here. `malloc_tuned`:
    a CPU run with ctxext.train.malloc's setting (the estimate's allocator and overhead terms depend on it)."""
    from ..export import plan_export
    from ..models.load import require_tokenizer
    from ..models import model_info

    info = model_info(cfg.model)
    if info.encoding != "rope":
        raise CtxextError(f"ctxext train supports RoPE models; {cfg.model} uses {info.encoding} (its packed "
                          "documents could not be kept apart, and no stock config can carry scaled ALiBi slopes)")
    spec = parse_spec(cfg.scaling)
    if cfg.mixed_window:
        spec = mixed_window_spec(spec, info.rope_shape, cfg.seq_len)
    require_tokenizer(cfg.model, "train", "packing the --data text and the export need")
    export = plan_export(cfg.model, spec)  # a spec no stock config can express is refused before training
    if export.rope_parameters.get("rope_type") == "default" and cfg.seq_len > export.max_position_embeddings:
        # a default or abf rope trained past its window: the checkpoint says the length it was trained at (vLLM
        # serves at most max_position_embeddings tokens of it)
        export = plan_export(cfg.model, spec, max_len=cfg.seq_len)
    if cfg.attn == "flash_attention_2" and spec.entry.length_dependent:
        # its attention plan runs its own SDPA without a mask under flash: packed documents would see each other
        raise CtxextError(f"'{spec.method}' trains with --attn sdpa or eager, not flash_attention_2 (its attention "
                          "plan cannot keep packed documents apart without the layer's mask)")
    c = info.config
    extra = info.vocab_size * info.hidden_size + (2 * info.n_layers + 1) * info.hidden_size  # embeddings, norms
    n_trainable = lora_params(c, cfg.lora_targets, cfg.lora_rank) + extra if cfg.lora else info.n_params
    mem = estimate(n_params=info.n_params, n_trainable=n_trainable, n_layers=info.n_layers, hidden=info.hidden_size,
                   intermediate=int(c.get("intermediate_size") or 4 * info.hidden_size), n_heads=info.n_heads,
                   vocab=info.vocab_size, rows=rows_per_forward, seq_len=cfg.seq_len, bf16=bf16,
                   grad_checkpointing=cfg.grad_checkpointing, attn=cfg.attn, loss_chunk=cfg.loss_chunk,
                   shards=shards, malloc_tuned=malloc_tuned)
    return RunPlan(info, spec, export, n_trainable, mem)


def build_model(cfg: TrainConfig, spec: Spec) -> Any:
    """Load the model (fp32 master weights), apply the spec, add LoRA, enable gradient checkpointing."""
    import torch

    from ..models import apply_spec, load_model
    from . import doc_attention
    from .lora import add_lora

    lm = load_model(cfg.model, dtype=torch.float32, attn=cfg.attn)
    if lm.tokenizer is None:
        raise CtxextError(f"{cfg.model} has no tokenizer files; ctxext train needs one to tokenise --data")
    apply_spec(lm, spec)
    model = lm.model
    if model.config._attn_implementation == "sdpa":  # packed rows: causal SDPA per document, not one T×T mask
        model.set_attn_implementation(doc_attention.register())
    if cfg.lora:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.seed)
    if cfg.grad_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    return lm
