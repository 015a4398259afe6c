"""AdamW and its learning-rate schedule: linear warm-up, then cosine or linear decay (or constant).

Defaults are the seeds' recipes: PI (Chen et al. 2023) and YaRN (Peng et al. 2023) fine-tune with AdamW
β = (0.9, 0.95), no weight decay, lr 2e-5 after a 20-step linear warm-up; LLaMA 2 Long (Xiong et al. 2023)
decays with a cosine. ctxext decays towards `min_lr_ratio` × lr (10 %), which the factor reaches at step ==
steps, one step after the last one runs (as Hugging Face's get_cosine_schedule_with_warmup does).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr for 0-based `step` of `total` (steps 0 .. total-1 run). Warm-up reaches 1 at step
    warmup-1; the decay reaches `min_ratio` at step == total, one step after the last step runs, so the last step
    runs a little above it. With warmup >= total the run never decays, and with warmup > total it never reaches
    the peak (`warmup_warning`)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1 - t
    return min_ratio + (1 - min_ratio) * shape


def warmup_warning(total: int, warmup: int, lr: float) -> str | None:
    """A line saying that the warm-up covers the whole run (None when it does not)."""
    if warmup < total:
        return None
    top = lr * lr_factor(total - 1, total, warmup, "constant", 1.0)
    return (f"--warmup {warmup} is not below --steps {total}: the lr rises to {top:.3g} (--lr {lr:.3g}) at the last "
            "step and never decays")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; never norms, biases or 1-D parameters (frozen ones are left out)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(params: Iterable[dict], lr: float, betas: tuple[float, float] = (0.9, 0.95),
                   eps: float = 1e-8) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(params), lr=lr, betas=betas, eps=eps)


def make_scheduler(opt: torch.optim.Optimizer, total: int, warmup: int, schedule: str,
                   min_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, schedule, min_ratio))
