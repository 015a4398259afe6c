"""The resolved configuration of one training run (saved next to its results and checkpoints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import CtxextError
from .optim import SCHEDULES

# The seeds' recipes (PI, YaRN): lr 2e-5, 20 warm-up steps; LongLoRA's LoRA rank 8 with embeddings and norms
# trainable. LoRA's lr is 10x higher, as usual for adapters.
DEFAULT_LR = 2e-5
DEFAULT_LORA_LR = 2e-4
DEFAULT_WARMUP = 20


@dataclass(frozen=True)
class TrainConfig:
    model: str
    scaling: str
    data: tuple[str, ...]
    seq_len: int
    steps: int
    out: str
    lr: float | None = None  # None: DEFAULT_LR, or DEFAULT_LORA_LR with lora
    batch_tokens: int | None = None  # tokens per optimizer step over all processes; None: one row per process
    micro_batch: int = 1  # rows per forward pass on one process
    warmup: int = DEFAULT_WARMUP
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    mixed_window: bool = False
    short_fraction: float = 0.5  # mixed window: share of steps at the original window
    grad_checkpointing: bool = True
    loss_chunk: int = 1024
    attn: str = "sdpa"
    evaluate: bool = True  # passkey (and ppl with eval_data) at seq_len: before training, every eval_every, at the end
    eval_every: int = 0  # 0: before and after training only
    eval_data: tuple[str, ...] = ()
    eval_docs: int = 2
    passkey_trials: int = 20
    save_every: int = 100
    resume: bool = False
    seed: int = 0
    instruct: tuple[str, ...] = ()  # QA JSONL files: instruction tuning instead of --data (train.instruct)
    prompt_loss: bool = True  # with instruct: loss on the long prompt too (LLaMA 2 Long), else the answer only
    check_memory: bool = True
    command_line: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise CtxextError(msg)

        need(self.seq_len >= 2, f"--seq-len must be >= 2, got {self.seq_len}")
        need(self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        need(self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}")
        need(self.micro_batch >= 1, f"--micro-batch must be >= 1, got {self.micro_batch}")
        need(self.batch_tokens is None or self.batch_tokens >= self.seq_len,
             f"--batch-tokens must be >= --seq-len ({self.seq_len}), got {self.batch_tokens}")
        need(self.batch_tokens is None or self.batch_tokens % self.seq_len == 0,
             f"--batch-tokens must be a multiple of --seq-len ({self.seq_len}), got {self.batch_tokens}")
        need(self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}")
        need(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        need(0 <= self.min_lr_ratio <= 1, f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        need(self.grad_clip >= 0, f"--grad-clip must be >= 0 (0: off), got {self.grad_clip}")
        need(self.lora_rank >= 1, f"--lora-rank must be >= 1, got {self.lora_rank}")
        need(0 < self.short_fraction < 1, f"--short-fraction must be in (0, 1), got {self.short_fraction}")
        need(self.loss_chunk >= 1, f"--loss-chunk must be >= 1, got {self.loss_chunk}")
        need(self.eval_every >= 0, f"--eval-every must be >= 0, got {self.eval_every}")
        need(self.save_every >= 1, f"--save-every must be >= 1, got {self.save_every}")
        need(self.passkey_trials >= 1, f"--passkey-trials must be >= 1, got {self.passkey_trials}")
        need(self.eval_docs >= 1, f"--eval-docs must be >= 1, got {self.eval_docs}")
        need(0 <= self.seed < 2**63, f"--seed must be in [0, 2^63), got {self.seed}")
        need(self.attn != "flash_attention_2" or _has_flash_attn(),
             "--attn flash_attention_2 needs the flash-attn package (and a CUDA GPU); it is not installed")
        need(bool(self.data) != bool(self.instruct),
             "give --data (text files, folders or .jsonl documents) or --instruct (QA .jsonl), exactly one")
        need(not (self.instruct and self.mixed_window), "--mixed-window cannot be used with --instruct")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else (DEFAULT_LORA_LR if self.lora else DEFAULT_LR)

    def rows_per_step(self, world: int) -> int:
        """Rows of seq_len tokens per optimizer step over all processes (a multiple of world)."""
        rows = world if self.batch_tokens is None else self.batch_tokens // self.seq_len
        if rows % world:
            raise CtxextError(f"--batch-tokens {self.batch_tokens} is {rows} sequences per step, not divisible by "
                              f"the {world} processes")
        return rows

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_lr"] = self.peak_lr
        return d

    # fields whose change makes a checkpoint unusable for --resume (the rest may differ, e.g. eval settings)
    RESUME_KEYS = ("model", "scaling", "data", "seq_len", "steps", "lr", "batch_tokens", "warmup", "schedule",
                   "min_lr_ratio", "weight_decay", "grad_clip", "lora", "lora_rank", "lora_alpha", "lora_targets",
                   "mixed_window", "short_fraction", "seed", "instruct", "prompt_loss")


def _has_flash_attn() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None
