"""Fitness of a candidate: needle-driven perplexity (LongRoPE2) or plain perplexity at a length, measured with the
eval harness on the search data, on the model already in memory (the candidate's factors are applied in place
with `apply_spec`; weights are never reloaded).

- `needle-ppl`: the eval task's own `run` on the search documents, so the value is what
  `ctxext eval --task needle-ppl --samples N --seed S` reports on the same data.
- `both`: the worse of the two, each relative to the method to beat, `yarn:factor=s`, measured at the same length
  and samples: max(needle-ppl / needle-ppl_yarn, ppl / ppl_yarn). Below 1 means better than YaRN on both. (On
  its own needle-ppl favours PI-like factors that ruin perplexity, and a geometric mean of the two still trades
  one for the other; the max does not.)
- `ppl`: perplexity of the first `length` tokens of each *passage* — the documents cut into consecutive pieces of
  the target length, taken round-robin over documents, each led by the tokenizer's start tokens (BOS where it
  has one) as the `ppl` task leads each document — exp(mean token NLL) as the `ppl` task's overall record.
  When every document is one passage (e.g. JSONL with one target-length text per line) the value equals
  `ctxext eval --task ppl --samples N` on that data.

Cost of an evaluation is stated in full-length-evaluation equivalents: the eval task's FLOP estimate at
(length, samples) divided by the one at (target, full samples) — deterministic, so a resumed search spends
exactly what the uninterrupted one did.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Document, lead
from ..errors import CtxextError
from ..scaling import Spec, get_method
from .space import Candidate

FITNESSES = ("needle-ppl", "ppl", "both")


def candidate_spec(c: Candidate, scale: float, original_len: int, text: str | None = None) -> Spec:
    """The `longrope` spec of a candidate (long factors = the candidate's, short factors 1)."""
    values = {"factor": scale, "long_factor": c.factors, "attention_factor": c.attention_factor,
              "start_tokens": c.start_tokens}
    params = get_method("longrope").make_params(values)
    return Spec("longrope", params, text or f"search:{c.key()}", original_len)


NO_PREFIX = np.zeros(0, dtype=np.int64)


def passages(docs: list[Document], length: int, prefix: np.ndarray = NO_PREFIX) -> list[np.ndarray]:
    """`length`-token passages: `prefix` (the tokenizer's start tokens) then consecutive pieces of every document,
    interleaved document by document (the first few passages cover several documents)."""
    n = length - len(prefix)
    per_doc = [[lead(prefix, d.tokens[i:i + n]) for i in range(0, len(d) - n + 1, n)] for d in docs]
    out: list[np.ndarray] = []
    for k in range(max((len(p) for p in per_doc), default=0)):
        out += [p[k] for p in per_doc if k < len(p)]
    return out


def check_data(docs: list[Document], target: int, fitness: str, samples: int,
               prefix: np.ndarray = NO_PREFIX) -> None:
    """One-line errors when the search data cannot serve a fitness at the target length."""
    total = sum(len(d) for d in docs)
    longest = max((len(d) for d in docs), default=0)
    if fitness in ("needle-ppl", "both") and total < target:
        raise CtxextError(f"search data holds {total} tokens in all, fewer than the target {target}; "
                          "give more text (--data) or a shorter --target")
    if fitness in ("ppl", "both"):
        if longest < target - len(prefix):  # a passage is the prefix (BOS) + target − len(prefix) document tokens
            raise CtxextError(f"search data is shorter than the target: the longest document has {longest} tokens, "
                              f"the target is {target}; give longer documents (--data) or a shorter --target")
        n = len(passages(docs, target, prefix))
        if n < samples:
            raise CtxextError(f"search data gives {n} passage(s) of {target} tokens, fewer than --samples {samples}; "
                              "give more text or fewer samples")


@dataclass
class Evaluator:
    """Evaluates candidates on one loaded model. `samples` is the full-cost sample count at the target."""

    lm: Any  # ctxext.models.LoadedModel
    docs: list[Document]
    fitness: str
    target: int
    samples: int
    seed: int = 0
    scratch: Path | None = None  # where eval tasks may write side files
    reference: dict[str, dict[str, float]] = field(default_factory=dict)  # "LxN" -> parts of the reference spec

    def __post_init__(self) -> None:
        from ..evals.cost import ATTENTION_SLOWDOWN, ModelCost

        if self.fitness not in FITNESSES:
            raise CtxextError(f"unknown fitness '{self.fitness}'; accepted: {', '.join(FITNESSES)}")
        self.shape = self.lm.info.rope_shape
        self.scale = self.target / self.shape.original_len
        self.mc = ModelCost.of(self.lm.info, 4, attn_weight=ATTENTION_SLOWDOWN)
        self._unit = self.flops(self.target, self.samples)
        self._passages: dict[int, list[np.ndarray]] = {}
        self.reference_spec = f"yarn:factor={self.scale:g}"

    # ---- cost
    def flops(self, length: int, samples: int) -> float:
        from ..evals import get_task
        from ..evals.tasks import Settings

        names = ("needle-ppl", "ppl") if self.fitness == "both" else (self.fitness,)
        s = Settings(seed=self.seed, samples=samples)
        return sum(get_task(n).cost(self.mc, length, [], s)[0] for n in names)

    def cost(self, length: int, samples: int) -> float:
        """Full-length-evaluation equivalents of one evaluation at (length, samples)."""
        return self.flops(length, samples) / self._unit

    def ppl_cost(self, length: int, samples: int) -> float:
        """Cost of a plain-perplexity evaluation (the in-window guard), in the same unit."""
        from ..evals import get_task
        from ..evals.tasks import Settings

        return get_task("ppl").cost(self.mc, length, [], Settings(seed=self.seed, samples=samples))[0] / self._unit

    def short_ppl(self, attention_factor: float, samples: int) -> float:
        """Perplexity inside the original window (length L, short factors 1) with attention factor m: m = 1 is
        the model as trained."""
        import torch

        from ..evals.attention import fast_attention
        from ..models import apply_spec

        c = Candidate((1.0,) * self.shape.n_pairs, float(attention_factor))
        apply_spec(self.lm, self.spec(c))
        with torch.inference_mode(), fast_attention(self.lm.model):
            return self._ppl(self.shape.original_len, samples)

    # ---- value
    def spec(self, c: Candidate) -> Spec:
        return candidate_spec(c, self.scale, self.shape.original_len)

    def evaluate(self, c: Candidate, length: int, samples: int) -> tuple[float, float, dict[str, float]]:
        """(fitness, wall seconds, {task: value}) of candidate c at (length, samples): lower is better."""
        return self.evaluate_spec(self.spec(c), length, samples)

    def evaluate_spec(self, spec: Spec, length: int, samples: int) -> tuple[float, float, dict[str, float]]:
        """The same for any spec (e.g. the exact `yarn:factor=s` a search is compared with)."""
        parts, seconds = self.measure(spec, length, samples)
        return self.combine(parts, length, samples), seconds, parts

    def measure(self, spec: Spec, length: int, samples: int) -> tuple[dict[str, float], float]:
        """({task: value}, wall seconds) of a spec at (length, samples)."""
        import torch

        from ..evals.attention import fast_attention
        from ..models import apply_spec

        t0 = time.perf_counter()
        apply_spec(self.lm, spec)
        with torch.inference_mode(), fast_attention(self.lm.model):
            parts = {}
            if self.fitness in ("needle-ppl", "both"):
                parts["needle-ppl"] = self._needle(length, samples)
            if self.fitness in ("ppl", "both"):
                parts["ppl"] = self._ppl(length, samples)
        return parts, time.perf_counter() - t0

    def combine(self, parts: dict[str, float], length: int, samples: int) -> float:
        if self.fitness != "both":
            return parts[self.fitness]
        ref = self.reference_parts(length, samples)
        return max(parts[k] / ref[k] for k in ("needle-ppl", "ppl"))

    def reference_parts(self, length: int, samples: int) -> dict[str, float]:
        """Parts of `yarn:factor=s` at (length, samples), measured once (run_search precomputes and stores them)."""
        from ..scaling import parse_spec

        key = f"{length}x{samples}"
        if key not in self.reference:
            self.reference[key] = self.measure(parse_spec(self.reference_spec), length, samples)[0]
        return self.reference[key]

    def _ppl(self, length: int, samples: int) -> float:
        from ..evals.scoring import token_nll

        if length not in self._passages:
            from ..data import special_prefix

            self._passages[length] = passages(self.docs, length, special_prefix(self.lm.tokenizer))
        chosen = self._passages[length][:samples]
        if len(chosen) < samples:
            raise CtxextError(f"search data gives {len(chosen)} passage(s) of {length} tokens, fewer than {samples}")
        sums = np.zeros(length)  # summed per position, as the ppl task does, so the value is bit-identical
        for p in chosen:
            sums[1:] += token_nll(self.lm.model, p)
        return math.exp(sums.sum() / ((length - 1) * len(chosen)))

    def _needle(self, length: int, samples: int) -> float:
        from ..evals import needle_ppl
        from ..evals.tasks import Settings, TaskContext

        ctx = TaskContext(lm=self.lm, spec=self.lm.spec, settings=Settings(seed=self.seed, samples=samples),
                          docs=self.docs, out=self.scratch or Path("."), cost=self.mc,
                          same_freqs=lambda a, b: True, log=lambda m: None)
        ((_, recs),) = list(needle_ppl.run(ctx, [(length, None)]))
        return float(recs[0]["value"])
