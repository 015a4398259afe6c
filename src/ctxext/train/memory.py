"""Peak-memory estimate of one training step, before any weights are loaded; refusal when it cannot fit.

Per process, in bytes (P parameters, P_t trainable, B rows × T tokens per forward, hidden H, intermediate I,
layers n, heads h, vocab V, activation width a = 2 in bf16, 4 in fp32; sharded = FSDP / ZeRO-3 over W processes):

    weights      4·P (fp32 master weights; bf16 training autocasts)            / W when sharded
    gradients    4·P_t                                                           / W when sharded
    AdamW        8·P_t (two fp32 moments)                                       / W when sharded
    activations  one layer's saved activations are B·T·(9H + 4I)·a (what autograd keeps for a Llama-style layer;
                 measured 43.8 KiB/token/layer for SmolLM2 in fp32 = 9H + 4I floats). With gradient checkpointing:
                 n·B·T·H·a (each layer's input) + the recomputed layer's working set in the backward, k·B·T·(9H +
                 4I)·a with k = 2 (k = 1 on the CPU with ctxext's malloc setting, measured); without checkpointing:
                 (n + 1)·B·T·(9H + 4I)·a
    attention    B·h·T²·a·3 for the scores when the kernel materialises them (eager), else 0 (flash / memory-
                 efficient SDPA); eager also holds a B·T² boolean mask for rows with a document boundary (SDPA
                 trains per document, doc_attention, and never builds it)
    loss         one chunk of logits and its gradient, 3·B·C·V·4, plus the final hidden state and its gradient
    allocator    freed memory the allocator keeps: 10 % of the three terms above on GPU (caching allocator); on the
                 CPU 50 % with glibc's defaults and 0 with ctxext.train.malloc's fixed mmap threshold (`malloc_tuned`)
    overhead     the CUDA context or the Python/torch process: 600 MiB, 400 MiB on the CPU with malloc_tuned

Calibration (SmolLM2-135M, CPU, fp32, checkpointing, 1 thread; peak RSS of any step, benchmarks/train_memory.py,
results/train_memory-cpu.json): with the malloc setting, estimate / measured = 3.19 / 2.75 GiB at 2k, 3.41 / 2.91 at
4k, 3.87 / 3.20 at 8k, 4.77 / 4.00 at 16k (1.15-1.21: the sum counts the gradients and the checkpointed inputs in
full although the backward frees the inputs as it fills the gradients). With glibc's defaults the peak depends on
how the heap fragments, and grows from step to step (3.71, 4.58, 5.95 GiB at 2k, 4k, 8k, then 4.48 at 16k where
most tensors pass 32 MiB and are unmapped); the 50 % term is a coarse guess there (0.89-1.61 of measured). The
GPU terms are not yet measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import CtxextError

OVERHEAD = 600 * 2**20
CPU_OVERHEAD = 400 * 2**20  # Python, torch and transformers resident before the weights (train_memory: 0.39-0.47 GiB)
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    attention: int
    loss: int
    allocator: int
    overhead: int = OVERHEAD

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in asdict(self).items())
        return f"{self.total / GIB:.2f} GiB ({parts})"


def estimate(*, n_params: int, n_trainable: int, n_layers: int, hidden: int, intermediate: int, n_heads: int,
             vocab: int, rows: int, seq_len: int, bf16: bool, grad_checkpointing: bool, attn: str,
             loss_chunk: int, shards: int = 1, malloc_tuned: bool = False) -> MemoryEstimate:
    """Estimate per process (see the module docstring for each term); `malloc_tuned`: a CPU run with
    ctxext.train.malloc's fixed mmap threshold (ignored with bf16, i.e. on a GPU)."""
    a = 2 if bf16 else 4
    tuned = malloc_tuned and not bf16
    bt = rows * seq_len
    layer = bt * (9 * hidden + 4 * intermediate) * a
    acts = n_layers * bt * hidden * a + (1 if tuned else 2) * layer if grad_checkpointing else (n_layers + 1) * layer
    # eager's backward holds three T² tensors at once (the probabilities, their gradient, the scores' gradient): with
    # two, tiny-rope's peak outgrew the estimate with T (1.02× at 2,048, 1.34× at 6,144); with three 0.93-1.00×
    scores = rows * n_heads * seq_len**2 * a * 3 if attn == "eager" else 0
    mask = rows * seq_len**2 if attn == "eager" else 0
    loss = 3 * rows * min(loss_chunk, seq_len) * vocab * 4 + 2 * bt * hidden * 4
    retained = int((0.10 if bf16 else 0.0 if tuned else 0.50) * (acts + scores + mask + loss))
    return MemoryEstimate(weights=4 * n_params // shards, gradients=4 * n_trainable // shards,
                          optimizer=8 * n_trainable // shards, activations=acts, attention=scores + mask, loss=loss,
                          allocator=retained, overhead=CPU_OVERHEAD if tuned else OVERHEAD)


def available_bytes(device: str) -> int:
    """Free memory on the device that will hold the step: the GPU's free memory, or the machine's available RAM."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(est: MemoryEstimate, device: str, what: str) -> None:
    """Refuse with the figures when the estimate exceeds 95 % of what the device has free."""
    free = available_bytes(device)
    if est.total > 0.95 * free:
        raise CtxextError(f"{what} needs about {est.describe()}; {device} has {free / GIB:.2f} GiB free. "
                          "Lower --micro-batch or --seq-len, use --lora, shard with FSDP/ZeRO-3 "
                          "(docs/training.md), or pass --no-memory-check to try anyway")
