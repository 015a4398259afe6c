"""The search space of per-pair rescale factors, and operators that only ever make valid candidates.

LongRoPE (Ding et al. 2024, https://arxiv.org/abs/2402.13753) searches non-decreasing factors f_i (θ'_i = θ_i/f_i)
on a 0.01 grid, seeded from PI / NTK / YaRN. LongRoPE2 (Shang et al. 2025, https://arxiv.org/abs/2502.20082)
splits the pairs at the critical dimension: pairs below it get NTK-like factors, pairs at or above it are searched
in [s, 2s]; the *real* critical dimension may lie below the theoretical one, so it is searched too.

Here a candidate is a factor vector on the grid plus the attention factor m and n̂ start tokens. Validity:
non-decreasing, and lo_i <= f_i <= hi_i with per-pair bounds that are themselves non-decreasing
(lo = 1 below the critical pair c, s from c on; hi = 2s). On the grid "s" is s rounded up (`grid_ceil`): a pair at
or above c never interpolates less than s when s is off the grid (12000/8192 = 1.4648 -> 1.47, not 1.46). Because
lo and hi are non-decreasing, clipping a non-decreasing vector into [lo, hi] and rounding it to the grid keep it
non-decreasing, so every operator below ends with `project` and never produces an invalid child. With
`search_critical` off the pairs below c are pinned (lo = hi) to the NTK-like curve, as in LongRoPE2 with a fixed
critical dimension.

Everything here is a pure function of numpy vectors and a `numpy.random.Generator`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

from ..errors import CtxextError

GRID = 0.01  # LongRoPE's factor step
START_TOKEN_CHOICES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)  # LongRoPE's n̂ set


@dataclass(frozen=True)
class Candidate:
    """One point of the space: per-pair factors (on the grid), attention factor m, n̂ start tokens."""

    factors: tuple[float, ...]
    attention_factor: float
    start_tokens: int = 0

    def key(self) -> str:
        """Stable id: the same candidate always gets the same key (cache, history, resume)."""
        blob = json.dumps([[round(f, 6) for f in self.factors], round(self.attention_factor, 6), self.start_tokens])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def as_array(self) -> np.ndarray:
        return np.asarray(self.factors, dtype=np.float64)

    def to_dict(self) -> dict:
        return {"factors": list(self.factors), "attention_factor": self.attention_factor,
                "start_tokens": self.start_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        return cls(tuple(float(x) for x in d["factors"]), float(d["attention_factor"]), int(d.get("start_tokens", 0)))


@dataclass(frozen=True)
class Space:
    """Bounds of the search for one model shape and target. `critical_pair` c = d_extra/2 (theory)."""

    n_pairs: int
    scale: float  # s = target / trained length
    critical_pair: int
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    attention_factor: float  # m of every candidate unless `search_attention`
    attention_range: tuple[float, float]
    search_attention: bool = False
    start_token_choices: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        if len(lo) != self.n_pairs or len(hi) != self.n_pairs:
            raise CtxextError(f"search space: bounds need {self.n_pairs} values")
        if np.any(np.diff(lo) < 0) or np.any(np.diff(hi) < 0) or np.any(lo > hi) or np.any(lo < 1):
            raise CtxextError("search space: bounds must be non-decreasing with 1 <= lo <= hi")

    def is_valid(self, c: Candidate) -> bool:
        f = c.as_array()
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        a0, a1 = self.attention_range
        return (len(f) == self.n_pairs and bool(np.all(np.diff(f) >= 0)) and bool(np.all(f >= lo - 1e-9))
                and bool(np.all(f <= hi + 1e-9)) and bool(np.allclose(f, snap(f)))
                and c.start_tokens in self.start_token_choices
                and (a0 - 1e-12 <= c.attention_factor <= a1 + 1e-12))

    def real_critical_pair(self, c: Candidate) -> int:
        """The first pair interpolated by at least s, i.e. by the space's lower bound grid_ceil(s) (LongRoPE2's real
        critical dimension / 2)."""
        at = np.nonzero(c.as_array() >= grid_ceil(self.scale) - 1e-9)[0]
        return int(at[0]) if at.size else self.n_pairs


def snap(f: np.ndarray) -> np.ndarray:
    """Round to the 0.01 grid (a monotone map: keeps a vector non-decreasing)."""
    return np.round(np.round(np.asarray(f, dtype=np.float64) / GRID) * GRID, 6)  # 6: print 2.8, not 2.8000000000000003


def grid_ceil(x: float) -> float:
    """The smallest grid value >= x; a value already on the grid stays (the 1e-9 absorbs 1.15/0.01 = 114.999…)."""
    return float(np.round(math.ceil(x / GRID - 1e-9) * GRID, 6))


def longrope_attention(scale: float, original_len: int) -> float:
    """LongRoPE's default m = sqrt(1 + ln s / ln L) (METHODS.md)."""
    return 1.0 if scale <= 1 else math.sqrt(1 + math.log(scale) / math.log(original_len))


def ntk_like(n_pairs: int, scale: float, critical_pair: int) -> np.ndarray:
    """LongRoPE2's lower part: NTK-style geometric factors s^(i/c), reaching exactly s at the critical pair
    (an NTK base change b' = b·s^(d/(2c)), so pair c is interpolated by s and pair 0 is kept)."""
    c = max(critical_pair, 1)
    i = np.arange(n_pairs, dtype=np.float64)
    return np.minimum(scale ** (i / c), scale)


def make_space(n_pairs: int, scale: float, critical_pair: int, original_len: int, *,
               search_critical: bool = True, search_attention: bool = False,
               start_tokens: bool = False, max_attention: float | None = None) -> Space:
    """The LongRoPE2 space: pairs >= c in [s, 2s]; below c free in [1, 2s] (search_critical) or pinned to NTK.
    m is LongRoPE's default, or searched in [1, 1.1·default]; `max_attention` caps it (the in-window guard: m also
    scales logits inside the original window, where the short factors keep the model as trained)."""
    if scale <= 1:
        raise CtxextError(f"search space: the scale must be > 1, got {scale:g}")
    c = min(max(critical_pair, 0), n_pairs)
    floor = grid_ceil(scale)  # pairs >= c: at least s, also when s is off the grid
    top = max(float(snap(2 * scale)), floor)
    lo = np.where(np.arange(n_pairs) >= c, floor, 1.0)
    hi = np.full(n_pairs, top)
    if not search_critical:
        pinned = snap(ntk_like(n_pairs, scale, c))
        lo[:c], hi[:c] = pinned[:c], pinned[:c]
    lo, hi = np.maximum.accumulate(lo), np.maximum.accumulate(hi)
    m = longrope_attention(scale, original_len)
    top_m = m * 1.1 if search_attention else m
    if max_attention is not None:
        top_m = max(1.0, min(top_m, max_attention))
    m = min(m, top_m)
    choices = tuple(n for n in START_TOKEN_CHOICES if n < original_len) if start_tokens else (0,)
    return Space(n_pairs, float(scale), c, tuple(lo), tuple(hi), m, (1.0, top_m) if search_attention
                 else (m, m), search_attention, choices)


def project(space: Space, f: np.ndarray) -> np.ndarray:
    """The valid vector nearest in spirit to f: non-decreasing (running max), clipped to [lo, hi], on the grid."""
    f = np.maximum.accumulate(np.asarray(f, dtype=np.float64))
    f = np.clip(f, np.asarray(space.lo), np.asarray(space.hi))
    return snap(f)


def candidate(space: Space, f: np.ndarray, attention_factor: float | None = None, start_tokens: int = 0) -> Candidate:
    """A valid candidate from any vector (projected) and an attention factor (clipped to the range)."""
    a0, a1 = space.attention_range
    m = space.attention_factor if attention_factor is None or not space.search_attention \
        else float(np.clip(round(attention_factor, 4), a0, a1))
    st = start_tokens if start_tokens in space.start_token_choices else 0
    out = Candidate(tuple(float(x) for x in project(space, f)), float(m), int(st))
    assert space.is_valid(out), out
    return out


def _push(f: np.ndarray, i: int, value: float) -> np.ndarray:
    """Set pair i and keep the vector non-decreasing by moving its neighbours with it (up: the pairs after it;
    down: the pairs before it) — the mutated pair keeps its new value."""
    f = f.copy()
    f[i] = value
    if i + 1 < len(f):
        f[i + 1:] = np.maximum(f[i + 1:], value)
    f[:i] = np.minimum(f[:i], value)
    return f


def mutate(space: Space, parent: Candidate, rng: np.random.Generator, prob: float = 0.3,
           sigma: float = 0.1) -> Candidate:
    """Each pair that is free to move mutates with probability `prob` (at least one does): a log-normal step
    (relative size `sigma`), then neighbours are pushed to keep the order, then projection. The attention
    factor and n̂ mutate with the same probability when they are searched."""
    f = parent.as_array()
    lo, hi = np.asarray(space.lo), np.asarray(space.hi)
    free = np.nonzero(hi > lo)[0]
    if free.size == 0:
        raise CtxextError("search space has no free pair to mutate")
    picks = free[rng.random(free.size) < prob]
    if picks.size == 0:
        picks = np.asarray([free[rng.integers(free.size)]])
    for i in rng.permutation(picks):
        step = math.exp(sigma * float(rng.standard_normal()))
        value = float(np.clip(f[i] * step, lo[i], hi[i]))
        if abs(value - f[i]) < GRID:  # move at least one grid step
            value = float(np.clip(f[i] + (GRID if step >= 1 else -GRID), lo[i], hi[i]))
        f = _push(f, int(i), value)
    m, st = parent.attention_factor, parent.start_tokens
    if space.search_attention and rng.random() < prob:
        m = m * math.exp(0.03 * float(rng.standard_normal()))
    if len(space.start_token_choices) > 1 and rng.random() < prob:
        j = space.start_token_choices.index(st) if st in space.start_token_choices else 0
        j = int(np.clip(j + (1 if rng.random() < 0.5 else -1), 0, len(space.start_token_choices) - 1))
        st = space.start_token_choices[j]
    return candidate(space, f, m, st)


def crossover(space: Space, a: Candidate, b: Candidate, rng: np.random.Generator) -> Candidate:
    """A one-point cut A[:k] + B[k:] at a cut where the order holds (A[k-1] <= B[k]); when no inner cut is valid,
    a random convex mix w·A + (1-w)·B (also non-decreasing). m and n̂ come from either parent."""
    fa, fb = a.as_array(), b.as_array()
    if rng.random() < 0.5:
        fa, fb = fb, fa
    n = len(fa)
    cuts = [k for k in range(1, n) if fa[k - 1] <= fb[k] and not (np.array_equal(fa[k:], fb[k:]))]
    if cuts:
        k = cuts[int(rng.integers(len(cuts)))]
        f = np.concatenate([fa[:k], fb[k:]])
    else:
        w = float(rng.uniform(0.25, 0.75))
        f = w * fa + (1 - w) * fb
    m = a.attention_factor if rng.random() < 0.5 else b.attention_factor
    st = a.start_tokens if rng.random() < 0.5 else b.start_tokens
    return candidate(space, f, m, st)
