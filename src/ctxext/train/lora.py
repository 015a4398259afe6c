"""LoRA through peft, with embeddings and normalisation layers trainable.

LongLoRA (Chen et al. 2023, https://arxiv.org/abs/2309.12307) found that LoRA alone does not adapt a model to a
longer context, and that making the embedding and normalisation layers trainable as well closes most of the gap
to full fine-tuning at a small cost in parameters. The adapters are merged into the weights before export.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import CtxextError

EXTRA_TRAINABLE = ("embed", "norm")  # parameter-name fragments trained in full next to the adapters


def add_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str], seed: int) -> nn.Module:
    """Inject LoRA adapters into `model` in place (the returned object is the same *ForCausalLM) and freeze
    everything else except embeddings and norms. Adapter init is seeded."""
    from peft import LoraConfig, inject_adapter_in_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:  # name what the attention has (DeepSeek: q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj)
        attn = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                       if isinstance(m, nn.Linear) and ".self_attn." in f".{name}"})
        raise CtxextError(f"--lora-targets: no module named {', '.join(missing)} in this model"
                          + (f"; its attention's linear layers are {', '.join(attn)}: pass the ones to adapt, "
                             f"e.g. --lora-targets {','.join(attn)}" if attn else ""))
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets), bias="none")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        inject_adapter_in_model(cfg, model)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name or any(k in name for k in EXTRA_TRAINABLE)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and restore plain Linear modules (in place)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, module.get_base_layer())
    return model


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (tied weights counted once)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
