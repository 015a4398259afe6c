"""What a cell will cost before it runs: FLOPs -> seconds at this machine's measured matmul rate (attention FLOPs
at its measured causal-attention rate), and peak memory from the model's config alone (`ModelInfo`), so a length
that cannot fit is refused before weights load.

FLOPs of a forward over T new tokens after P cached ones: 2·N_body·T (every weight once per token) +
4·layers·heads·head_dim·(T·P + T²/2) (causal QKᵀ and PV) + 2·hidden·vocab·S for the S scored positions.
The dynamic methods' queries past the trained length attend per 64-query frequency bucket, re-rotating the keys
each time (ctxext.models.attention.CausalLengthPlan): their attention FLOPs are timed at that path's own measured
rate (`plan_attention_weight`), so the estimate of a dynamic spec past the window is its own.
Memory: weights + a fixed runtime + activations of one layer at T (hidden-sized and MLP-sized tensors) +
the KV cache when one is kept + the attention mask of a cached call + one chunk of logits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import cache_root
from .scoring import BATCH_TOKENS, BRANCH_BYTES, LOGITS_BYTES, PREFILL_CHUNK

RUNTIME_BYTES = 350 * 2**20  # python + torch + tokenizer, measured ~300 MB on CPU
SAFETY = 1.15  # allocator slack on top of the sum
# How many matmul FLOPs one attention FLOP costs, as a fixed number: the search's budget accounting (which must not
# change between a run and its --resume). Time estimates measure the machine's own ratio (attention_weight).
ATTENTION_SLOWDOWN = 4.0
# a cached rate older than this is measured again (about a second): one taken while other work ran must not last
RATE_MAX_AGE_S = 3600
# a measurement under this fraction of the best one this machine has given (other work sharing the cores: 14 against
# 168 GFLOP/s once) is kept only LOADED_AGE_S, so the next run measures again; it cost a 4.2 h estimate of a 44 min cell
LOADED_FRACTION = 0.6
LOADED_AGE_S = 120
# the dynamic methods' attention costs at most this many times the plain kernel's: measured 2.3-3.4 on the idle
# 2-core CPU (2k-8k queries past the window), and 15x once while another job shared the cores
PLAN_WEIGHT_MAX = 4.0


def attention_units(new: int, past: int) -> float:
    """Query-key pairs of causal attention for `new` queries after `past` cached keys (T·P + T²/2)."""
    return new * past + new * new / 2


@dataclass(frozen=True)
class ModelCost:
    """Sizes that decide cost, read from a ModelInfo."""

    n_params: int
    body_params: int
    n_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    dtype_bytes: int = 4
    attn_weight: float = 1.0  # 1: true FLOPs; ATTENTION_SLOWDOWN: matmul-equivalent FLOPs for time estimates
    trained_len: int = 0  # the model's trained length (0: unknown)
    plan_from: int = 0  # queries at positions >= plan_from take a slower attention path (0: none) ...
    plan_weight: float = 1.0  # ... costing this many times the plain kernel's time per attention FLOP
    fused: bool = True  # depth sweeps batch their branches with a cache of their own (the CPU path; not on a GPU)

    @classmethod
    def of(cls, info: Any, dtype_bytes: int = 4, attn_weight: float = 1.0) -> ModelCost:
        cfg = info.config
        head_dim = int(cfg.get("head_dim") or info.hidden_size // info.n_heads)
        inter = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * info.hidden_size)
        tied = cfg.get("tie_word_embeddings", True)
        emb = info.vocab_size * info.hidden_size * (1 if tied else 2)
        return cls(info.n_params, max(info.n_params - emb, 1), info.n_layers, info.hidden_size, info.n_heads,
                   info.n_kv_heads, head_dim, inter, info.vocab_size, dtype_bytes, attn_weight,
                   int(getattr(info, "trained_len", 0) or 0))

    # ---- FLOPs
    def flops(self, new: int, past: int = 0, scored: int = 0) -> float:
        body = 2.0 * self.body_params * new
        units = attention_units(new, past)
        if self.plan_from and past + new > self.plan_from:  # the queries at positions >= plan_from
            start = max(past, self.plan_from)
            units += attention_units(past + new - start, start) * (self.plan_weight - 1.0)
        attn = 4.0 * self.n_layers * self.heads * self.head_dim * units * self.attn_weight
        return body + attn + 2.0 * self.hidden * self.vocab * scored

    def for_spec(self, spec: Any, shape: Any, weight: Any) -> ModelCost:
        """This cost with the attention path of `spec` on a RoPE model of `shape`: past the trained length the
        dynamic methods' per-bucket path, at `weight()` times the plain kernel's cost (called only for them)."""
        if shape is None or not spec.entry.length_dependent:
            return self
        from ..models.attention import PLANS, CausalLengthPlan

        if PLANS.get(spec.method) is not CausalLengthPlan:
            return self
        return dataclasses.replace(self, plan_from=CausalLengthPlan(spec, shape).L, plan_weight=float(weight()))

    # ---- bytes
    def weights(self) -> float:
        return float(self.n_params * self.dtype_bytes)

    def activations(self, tokens: int) -> float:
        return tokens * self.dtype_bytes * (8.0 * self.hidden + 3.0 * self.intermediate)

    def kv_cache(self, tokens: int) -> float:
        return 2.0 * self.n_layers * self.kv_heads * self.head_dim * tokens * self.dtype_bytes

    def logits(self) -> float:
        return 2.0 * min(LOGITS_BYTES, 4096 * self.vocab * 4)

    def peak_forward(self, tokens: int) -> float:
        """A plain forward (no cache) over `tokens`, scored in chunks (ppl)."""
        return SAFETY * (RUNTIME_BYTES + self.weights() + self.activations(tokens) + self.logits())

    def peak_cached(self, total: int, plain: bool = True) -> float:
        """Probes: a KV cache of `total` tokens, filled in PREFILL_CHUNK calls (each with a chunk × total mask)
        or, with `plain`, in one call over the whole prompt."""
        chunk = min(total, PREFILL_CHUNK)
        act = max(self.activations(chunk) + 2.0 * chunk * total * 4, self.activations(total) if plain else 0.0)
        return SAFETY * (RUNTIME_BYTES + self.weights() + self.kv_cache(total) + act + self.logits())

    def peak_branches(self, total: int) -> float:
        """A depth sweep with a shared prefix: the haystack cache (<= total tokens) plus one batch of branches,
        whose own KV stays within one prompt's or BRANCH_BYTES (scoring.Scorer._rows), BATCH_TOKENS queries per
        call; never less than the plain probe path (the fallback when the branches cannot be fused)."""
        if not self.fused:  # a GPU scores the probes on the shared cache: no second one
            return self.peak_cached(total, plain=True)
        own = max(self.kv_cache(total), float(BRANCH_BYTES))
        act = self.activations(min(BATCH_TOKENS, 2 * total))
        fused = SAFETY * (RUNTIME_BYTES + self.weights() + self.kv_cache(total) + own + act + self.logits())
        return max(fused, self.peak_cached(total, plain=True))


# ------------------------------------------------------------------------------------------- the machine


def _rate_key(dtype: Any, device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{platform.node()}|{cpu}|{os.cpu_count()}|{torch.get_num_threads()}|{torch.__version__}|{dtype}|{device}"


def _read_rates(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _best_of(entry: Any) -> float:
    """The best rate an entry has seen (entries from before `best` was kept: their rate)."""
    return float(entry.get("best", entry.get("flops", 0.0))) if isinstance(entry, dict) else 0.0


def _cached_rate(what: str, dtype: Any, device: str, measure: Any, refresh: bool) -> float:
    """A rate measured once per machine, thread count, torch version, dtype and device, and kept under the cache
    root for RATE_MAX_AGE_S, or LOADED_AGE_S when it is well under the best this key has measured (a busy machine)."""
    path = cache_root() / "machine.json"
    key = f"{_rate_key(dtype, device)}|{what}"
    entry = _read_rates(path).get(key)
    entry = entry if isinstance(entry, dict) else {}
    if entry and time.time() - entry.get("at", 0.0) < entry.get("max_age", RATE_MAX_AGE_S) and not refresh:
        return float(entry["flops"])
    rate = measure(dtype, device)
    known = _read_rates(path)  # again: another run may have written while this one measured
    best = max(rate, _best_of(entry), _best_of(known.get(key)))
    known[key] = {"flops": rate, "at": time.time(), "best": best,
                  "max_age": LOADED_AGE_S if rate < LOADED_FRACTION * best else RATE_MAX_AGE_S}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".machine.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return rate


def matmul_rate(dtype: Any = None, device: str = "cpu", refresh: bool = False) -> float:
    """This machine's matmul rate in FLOP/s for `dtype` (measured, cached for an hour under the cache root)."""
    import torch

    return _cached_rate("matmul", dtype or torch.float32, device, measure_matmul_rate, refresh)


def attention_rate(dtype: Any = None, device: str = "cpu", refresh: bool = False) -> float:
    """This machine's rate in FLOP/s of causal scaled-dot-product attention (cached like matmul_rate)."""
    import torch

    return _cached_rate("attention", dtype or torch.float32, device, measure_attention_rate, refresh)


def attention_weight(dtype: Any = None, device: str = "cpu") -> float:
    """Matmul FLOPs per attention FLOP on this machine (ModelCost.attn_weight for time estimates): the attention
    kernel runs at its own rate, which differs from the GEMM rate by machine, torch version and dtype."""
    return matmul_rate(dtype, device) / attention_rate(dtype, device)


def _best_rate(step: Any, flop: float, device: str, seconds: float) -> float:
    """Best FLOP/s of `step()` over `seconds` (after one warm-up call)."""
    import torch

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize(torch.device(device))

    step()
    sync()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == 0.0:
        t = time.perf_counter()
        step()
        sync()
        best = max(best, flop / (time.perf_counter() - t))
    return best


def measure_matmul_rate(dtype: Any = None, device: str = "cpu", seconds: float = 0.4) -> float:
    """Best-of-several FLOP/s of a (2048×1024)·(1024×2048) matmul, the shape class of a small LM's layers."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(2048, 1024, dtype=dtype, device=device)
    b = torch.randn(1024, 2048, dtype=dtype, device=device)
    return _best_rate(lambda: a @ b, 2.0 * 2048 * 1024 * 2048, device, seconds)


def measure_attention_rate(dtype: Any = None, device: str = "cpu", seconds: float = 0.4) -> float:
    """Best-of-several FLOP/s of causal SDPA over 2,048 tokens, 8 heads of 64 (the flash path the evals take);
    FLOPs counted as ModelCost does: 4·heads·head_dim·T²/2."""
    import torch
    import torch.nn.functional as F

    dtype = dtype or torch.float32
    q, k, v = (torch.randn(1, 8, 2048, 64, dtype=dtype, device=device) for _ in range(3))
    with torch.inference_mode():
        return _best_rate(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                          4.0 * 8 * 64 * 2048 * 2048 / 2, device, seconds)


def plan_attention_weight(dtype: Any = None, device: str = "cpu", refresh: bool = False) -> float:
    """How many times the plain causal kernel's time per attention FLOP the dynamic methods' per-bucket path takes
    on this machine (cached like matmul_rate), within [1, PLAN_WEIGHT_MAX]."""
    import torch

    w = _cached_rate("plan-attention-weight", dtype or torch.float32, device, measure_plan_attention_weight, refresh)
    return min(max(w, 1.0), PLAN_WEIGHT_MAX)


def measure_plan_attention_weight(dtype: Any = None, device: str = "cpu", seconds: float = 0.6) -> float:
    """Plain causal SDPA's best FLOP/s over CausalLengthPlan.attend's (a dynamic method past the window: 64-query
    buckets, keys re-rotated per bucket, a masked SDPA block each), timed in alternating rounds on the same
    tensors: 2,048 queries past a 2,048-token window, 8 query heads of 64 on 4 KV heads, FLOPs counted as ModelCost
    does. A ratio taken side by side, because the per-bucket path's many small calls slow far more than one big
    kernel when other work shares the cores. Shorter than the lengths it serves, where the per-bucket work weighs
    less: the estimate errs long."""
    import torch
    import torch.nn.functional as F

    from ..models.attention import AttnCall, CausalLengthPlan
    from ..scaling import RopeShape, parse_spec

    dtype = dtype or torch.float32
    L, T, H, Hkv, D = 2048, 4096, 8, 4, 64
    plan = CausalLengthPlan(parse_spec("dynamic-ntk:factor=2"), RopeShape(D, 10000.0, L))
    layer = types.SimpleNamespace(scaling=D ** -0.5, attention_dropout=0.0, training=False,
                                  num_key_value_groups=H // Hkv)
    q = torch.randn(1, H, T, D, dtype=dtype, device=device)
    k, v = (torch.randn(1, Hkv, T, D, dtype=dtype, device=device) for _ in range(2))
    q_pos, k_pos = torch.arange(L, T, device=device)[None], torch.arange(T, device=device)[None]

    def planned() -> None:
        plan.attend(AttnCall(layer, q[:, :, L:], k, v, q_pos, k_pos, None, T, {}))

    def plain() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    best = {"plain": 0.0, "plan": 0.0}
    with torch.inference_mode():
        for _ in range(3):
            best["plain"] = max(best["plain"], _best_rate(plain, 4.0 * H * D * attention_units(T, 0), device,
                                                          seconds / 6))
            best["plan"] = max(best["plan"], _best_rate(planned, 4.0 * H * D * attention_units(T - L, L), device,
                                                        seconds / 6))
    return best["plain"] / best["plan"]


def available_memory(device: str = "cpu") -> float:
    """Bytes a new allocation can use now: MemAvailable on CPU (Linux), free memory on a GPU."""
    if device != "cpu":
        import torch

        return float(torch.cuda.mem_get_info(torch.device(device))[0])  # that GPU's, not the current one's
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s" if s >= 1 else f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
