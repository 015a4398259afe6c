"""Long-context training: continual pretraining or fine-tuning with a scaled RoPE, on one CPU, one GPU or many
(accelerate: DDP, FSDP, DeepSpeed ZeRO-3). See docs/training.md.

Public API:
    TrainConfig                      the resolved configuration of a run (validated at construction)
    train(cfg, on_step=None) -> dict run or --resume; writes OUT/{results.json, summary.md, loss-curve.png,
                                     checkpoint/, eval/, final/}; returns the summary

Modules: config · data (packing, document boundaries, row order) · loss (chunked LM-head loss) · optim (AdamW,
warm-up + decay) · lora (peft adapters + trainable embeddings/norms) · memory (peak estimate, refusal) ·
checkpoint (exact resume) · setup (spec, export plan, model) · evaluate (periodic ctxext eval) · report · loop.
"""

from .config import TrainConfig
from .loop import train

__all__ = ["TrainConfig", "train"]
