"""Scaling laws of RoPE extrapolation, predicted reach of any scaling spec, and the planner.

Liu et al. 2023, "Scaling Laws of RoPE-based Extrapolation", https://arxiv.org/abs/2310.05209.
Notation as docs/METHODS.md: rotary dim d, pair i = 0 … d/2−1, base b, θ_i = b^(−2i/d), wavelength
λ_i = 2π/θ_i, trained length L, target T.

One rule predicts the reach of every spec (so the planner can later be checked against measurement):
the critical pair c = d_extra/2 is the first pair that never completed a full period in training; a scaled
model works up to the scaled wavelength of that pair, reach = 2π/θ'_c. For length-dependent methods θ'_c
depends on the current length t, and the reach is the first t past L where t > 2π/θ'_c(t).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np

from .errors import CtxextError
from .scaling import REGISTRY, RopeShape, Spec, factors_of, parse_spec, resolve_rope
from .scaling.spec import effective_shape

TWO_PI = 2 * math.pi
REACH_CAP = 2**24  # 16.8M tokens: reaches at or past this are reported as the cap, flagged `reach_capped`
REL_TOL = 1e-6  # θ is float32 in models (and in ctxext.scaling): "reaches T" allows that rounding

# Fine-tuning cost anchors (docs/METHODS.md, "Anchor results").
COST_PI = "~200-1000 steps at T (PI)"
COST_YARN = "optional ~400 steps at T (YaRN)"
COST_ABF = "continual pretraining at T (>= PI's 200-1000 steps)"
COST_NONE = "none"


# --- scaling laws: pure functions of plain numbers -------------------------------------------------------

def _check_base(base: float) -> None:
    if not base > 1:
        raise CtxextError(f"the scaling laws need a rope base > 1, got {base:g}")


def critical_dim(rotary_dim: int, base: float, original_len: float) -> int:
    """d_extra = 2·ceil((d/2)·log_b(L/2π)), clamped to [0, d]: the number of dims (pairs × 2) whose
    wavelength fits inside the trained length L, i.e. that saw every phase in training."""
    _check_base(base)
    raw = 2 * math.ceil((rotary_dim / 2) * math.log(original_len / TWO_PI) / math.log(base))
    return min(max(raw, 0), rotary_dim)


def extrapolation_limit(rotary_dim: int, base: float, d_extra: int) -> float:
    """T_extra = 2π·B^(d_extra/d): the wavelength of the critical pair under base B (the longest context a
    model whose critical dimension is d_extra reaches with base B)."""
    return TWO_PI * base ** (d_extra / rotary_dim)


def critical_base(base: float, original_len: float, target: float) -> float:
    """β₀ = b^(log_{L/2π}(T/2π)): the base whose critical pair has wavelength T (paper's critical base for
    tuning length T; at or below it a model tuned at T extrapolates up to T)."""
    _check_base(base)
    return base ** (math.log(target / TWO_PI) / math.log(original_len / TWO_PI))


def base_for_reach(rotary_dim: int, d_extra: int, reach: float) -> float:
    """The base B with T_extra(B) = reach: (reach/2π)^(d/d_extra). Training-free base for a target."""
    if d_extra <= 0:
        raise CtxextError("no pair completes a period within the trained length; a base change cannot set the reach")
    return (reach / TWO_PI) ** (rotary_dim / d_extra)


def wavelengths(inv_freq: np.ndarray) -> np.ndarray:
    """λ_i = 2π/θ_i, tokens per full turn of pair i."""
    return TWO_PI / np.asarray(inv_freq, dtype=np.float64)


# --- predicted reach of a spec ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Reach:
    tokens: float
    capped: bool = False  # True: no limit found below REACH_CAP (tokens == the cap)


def predicted_reach(spec: Spec, shape: RopeShape, d_extra: int | None = None, cap: int = REACH_CAP) -> Reach:
    """Reach of `spec` on a model of this shape: 2π/θ'_c for the critical pair c = d_extra/2 (d_extra from the
    shape unless given: after a base change the critical dimension learned in pretraining stays).
    Length-dependent specs: the first t > L with t > 2π/θ'_c(t), found on a ×1.01 grid then bisected. Position
    methods (self-extend, streaming) keep the model's frequencies, so no wavelength prediction applies: refused
    (it returned the default's reach for them, which the demo printed as their prediction)."""
    if spec.method in ATTENTION_NOTES:
        raise CtxextError(f"'{spec.method}' moves positions and keeps the model's own frequencies: the planner's "
                          "wavelength prediction does not apply to it")
    if d_extra is None:
        d_extra = critical_dim(shape.rotary_dim, shape.base, shape.original_len)
    c = d_extra // 2
    if c >= shape.n_pairs:  # every pair saw a full period: the paper's small-base regime, no limit
        return Reach(float(cap), True)

    def limit(t: int | None) -> float:
        return TWO_PI / float(resolve_rope(spec, shape, t).inv_freq[c])

    if not spec.entry.length_dependent:  # the formula's own value, past the cap too (it read 'no limit')
        return Reach(limit(None))
    ok = effective_shape(spec, shape).original_len
    if limit(ok) < ok:
        return Reach(limit(ok))
    t = ok
    while True:
        nxt = min(cap, max(t + 1, int(t * 1.01)))
        if nxt > limit(nxt):
            break
        if nxt >= cap:
            return Reach(float(cap), True)
        ok = t = nxt
    bad = nxt
    while bad - ok > 1:  # ok fits, bad does not
        mid = (ok + bad) // 2
        ok, bad = (mid, bad) if mid <= limit(mid) else (ok, mid)
    return Reach(float(ok))


# --- calibration by one measurement ---------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """The default RoPE's measured break point against its predicted reach: how far past the critical pair's
    limit this model holds perplexity (a large model degrades gradually there, a tiny one breaks at it)."""

    predicted: float  # the default spec's predicted reach
    measured: float  # where its perplexity first passes 2x in-window (the measured length when censored)
    censored: bool  # it held over the whole measured length: the tolerance is a lower bound

    @property
    def tolerance(self) -> float:
        return self.measured / self.predicted

    def reach(self, predicted: float) -> float:
        """A spec's predicted reach carried by the same tolerance."""
        return predicted * self.tolerance


# --- the planner -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recommendation:
    method: str
    spec: str  # parseable by ctxext.scaling.parse_spec
    params: dict[str, Any]
    predicted_reach: float
    reach_capped: bool  # no limit found below REACH_CAP
    reaches_target: bool
    attention_factor: float  # at the target length
    fine_tuning: dict[str, Any]  # {"required": bool, "cost": str}
    rationale: str
    recommended: str | None = None  # "training-free" | "fine-tuning" | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    shape: RopeShape  # the shape planned for (base replaced when a base was given)
    trained_base: float  # the base the critical dimension was learned with
    target: int
    critical_dim: int
    extrapolation_limit: float
    critical_base: float
    training_free_base: float
    wavelengths: np.ndarray
    recommendations: list[Recommendation]
    skipped: dict[str, str]

    @property
    def critical_pair(self) -> int:
        return self.critical_dim // 2

    def recommended(self, kind: str) -> Recommendation | None:
        return next((r for r in self.recommendations if r.recommended == kind), None)

    def pairs(self) -> list[dict[str, Any]]:
        """Per-pair table: wavelength, full period within L / within T, factor f_i of each recommended spec."""
        specs = [r for r in self.recommendations if r.recommended]
        factors = {r.spec: factors_of(parse_spec(r.spec), self.shape, self.target) for r in specs}
        return [{"index": i, "wavelength": float(lam),
                 "full_period_within_original": bool(lam <= self.shape.original_len),
                 "full_period_within_target": bool(lam <= self.target),
                 "factors": {s: float(f[i]) for s, f in factors.items()}}
                for i, lam in enumerate(self.wavelengths)]

    def to_dict(self) -> dict[str, Any]:
        rec = {k: (r.spec if (r := self.recommended(k)) else None) for k in ("training-free", "fine-tuning")}
        return {
            "rotary_dim": self.shape.rotary_dim,
            "rope_theta": self.trained_base,
            "planned_base": self.shape.base,
            "original_max_position_embeddings": self.shape.original_len,
            "target": self.target,
            "scale": self.target / self.shape.original_len,
            "critical_dim": self.critical_dim,
            "critical_pair": self.critical_pair,
            "extrapolation_limit": self.extrapolation_limit,
            "critical_base": self.critical_base,
            "training_free_base": self.training_free_base,
            "reach_cap": REACH_CAP,
            "wavelengths": [float(x) for x in self.wavelengths],
            "recommended": rec,
            "recommendations": [r.to_dict() for r in self.recommendations],
            "skipped": self.skipped,
            "pairs": self.pairs(),
        }


def check_target(target: int, original_len: int) -> None:
    """A plan extends the window: refuse a target at or below the trained length (one line), and one past
    REACH_CAP, where reaches are not searched (a capped reach was taken as reaching any target)."""
    if target <= original_len:
        raise CtxextError(f"--target {target} is not longer than the model's trained window "
                          f"({original_len} tokens); give a target > {original_len}")
    if target > REACH_CAP:
        raise CtxextError(f"--target {target:,} is past the {REACH_CAP:,} tokens the planner searches reaches up to; "
                          f"give a target <= {REACH_CAP:,}")


def _up(x: float, digits: int = 4) -> float:
    """Round up (a rounded parameter must still reach the target)."""
    q = 10**digits
    return math.ceil(x * q - 1e-9) / q


def _num(x: float) -> str:
    return f"{x:.4f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class _Ctx:
    shape: RopeShape
    target: int
    d_extra: int
    t_extra: float  # reach of the unscaled model
    trained_base: float  # the base d_extra was learned with (shape.base is the planned one under --base)

    @property
    def s(self) -> float:
        return self.target / self.shape.original_len

    def reach(self, spec: str) -> float:
        r = predicted_reach(parse_spec(spec), self.shape, self.d_extra)
        return math.inf if r.capped else r.tokens * (1 + REL_TOL)


# A rule returns (spec, fine_tuning, rationale) for one method; the planner computes reach and params from
# the spec itself, so the numbers shown are always those of the spec the user would run.
Rule = Callable[[_Ctx], tuple[str, dict[str, Any], str]]
RULES: dict[str, Rule] = {}


def rule(name: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn
    return deco


def _ft(required: bool, cost: str) -> dict[str, Any]:
    return {"required": required, "cost": cost}


@rule("default")
def _default(c: _Ctx):
    verdict = ("already reaches the target" if c.t_extra >= c.target
               else "past it the critical pair meets phases never seen in training")
    return "default", _ft(False, COST_NONE), (
        f"as trained: reach T_extra = 2π·b^(d_extra/d) ≈ {c.t_extra:,.0f}; {verdict}")


@rule("linear")
def _linear(c: _Ctx):
    return f"linear:factor={_num(_up(c.s))}", _ft(True, COST_PI), (
        "PI: every pair divided by s, reach s·T_extra; crowds the short wavelengths, so it loses quality "
        "until fine-tuned (SmolLM2 ×2 untuned: PPL 41-64 vs 12.7; LLaMA-7B recovers after 200 steps)")


def _ntk_factor_for(c: _Ctx, reach: float) -> float:
    """Static NTK factor whose base b·s^(d/(d−2)) puts the critical pair's wavelength at `reach`."""
    d = c.shape.rotary_dim
    return max(1.0, (base_for_reach(d, c.d_extra, reach) / c.shape.base) ** ((d - 2) / d))


@rule("ntk")
def _ntk(c: _Ctx):
    f = _up(_ntk_factor_for(c, c.target))
    nominal = c.reach(f"ntk:factor={_num(c.s)}")
    how = (f"only reaches {nominal:,.0f} (reach grows as s^(d_extra/(d-2))), so the factor is raised to cover the "
           "target" if nominal < c.target else
           f"reaches {nominal:,.0f}, past the target, so the factor is the smallest that covers it")
    return f"ntk:factor={_num(f)}", _ft(False, COST_NONE), (
        f"static NTK-aware base change; the nominal factor s={_num(c.s)} {how}; same frequencies as the "
        "training-free abf base")


@rule("dynamic-ntk")
def _dynamic_ntk(c: _Ctx):
    def reach(a: float) -> float:
        return c.reach(f"dynamic-ntk:factor={_num(a)}")

    lo, hi = 1.0, 2.0
    while reach(hi) < c.target and hi < 2.0 ** 30:  # its reach grows slowly in alpha on a small rotary dim
        lo, hi = hi, hi * 2
    for _ in range(40):
        if hi - lo < 1e-4:
            break
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if reach(mid) >= c.target else (mid, hi)
    a = hi if reach(lo) < c.target else lo
    return f"dynamic-ntk:factor={_num(_up(a))}", _ft(False, "none (length-dependent)"), (
        "NTK base recomputed for the current length, unchanged up to L; alpha chosen so the critical pair's "
        "wavelength keeps up with the length until the target; degrades most gently training-free past s = 2 "
        "(LLaMA2-7B at 16k: 23.3 vs YaRN 87.9)")


@rule("ntk-by-parts")
def _ntk_by_parts(c: _Ctx):
    return f"ntk-by-parts:factor={_num(_up(c.s))}", _ft(False, COST_YARN), (
        "short wavelengths extrapolate, those longer than L are divided by s; reach s·T_extra; YaRN without the "
        "attention temperature")


@rule("yarn")
def _yarn(c: _Ctx):
    return f"yarn:factor={_num(_up(c.s))}", _ft(False, COST_YARN), (
        "NTK-by-parts ramp plus attention temperature; the critical pair is fully interpolated, reach "
        "s·T_extra; best training-free up to s = 2 (SmolLM2 ×2 untuned: PPL 13.4-26.5 to 16k), then "
        "degrades (LLaMA2-7B s=4: PPL 87.9); ~400 tuning steps, 10x fewer tokens than PI")


@rule("dynamic-yarn")
def _dynamic_yarn(c: _Ctx):
    return "dynamic-yarn", _ft(False, "none (length-dependent)"), (
        "YaRN with s_t = t/L: the critical pair is interpolated by t/L at every length, so the rule sets no "
        "limit; quality still decays as s_t grows")


@rule("abf")
def _abf(c: _Ctx):
    b0 = critical_base(c.trained_base, c.shape.original_len, c.target)
    return f"abf:base={math.ceil(b0)}", _ft(True, COST_ABF), (
        "critical base for T, tuned at T: the pairs below the critical one all turn a full period within T, "
        "so tuning shows them every phase, and the critical pair's wavelength reaches T (Liu et al.); "
        "NTK/ABF-style tuning beats YaRN after long training (LongRoPE2, LLaMA3-8B 128k RULER: 73.2 vs 49.4)")


def training_free_base(shape: RopeShape, d_extra: int, target: int) -> float:
    """The lowest base whose critical-pair wavelength reaches `target`, never below the shape's own (a lower base
    is no extension)."""
    return max(shape.base, base_for_reach(shape.rotary_dim, d_extra, target))


def _abf_training_free(c: _Ctx):
    b = training_free_base(c.shape, c.d_extra, c.target)
    return f"abf:base={math.ceil(b)}", _ft(False, COST_NONE), (
        "training-free base (T/2π)^(d/d_extra): the lowest base whose critical-pair wavelength reaches the "
        "target; same frequencies as the ntk entry")


@rule("llama3")
def _llama3(c: _Ctx):
    return f"llama3:factor={_num(_up(c.s))}", _ft(False, "optional (Llama 3.1: with pretraining)"), (
        "wavelength bands: shorter than L/4 kept, longer than L divided by s, smooth between; reach s·T_extra")


@rule("longrope")
def _longrope(c: _Ctx):
    from .search.space import ntk_like

    s = _up(c.s)
    cp = c.d_extra // 2
    # the search's own LongRoPE2 seed: s^(i/c) below the critical pair c, s at and above it (it used the NTK curve
    # s^(2i/(d-2)) here, another vector than the one ctxext search starts from)
    f = [s if i >= cp else _up(x) for i, x in enumerate(ntk_like(c.shape.n_pairs, s, cp))]
    lf = ",".join(_num(x) for x in f)
    return f"longrope:factor={_num(s)},long_factor=[{lf}]", _ft(False, "search first (ctxext search)"), (
        "the per-pair evolutionary search's LongRoPE2 seed (s^(i/c) below the critical pair c, s at and above "
        "it; the search's in-window guard may lower m); searched factors beat PI/NTK/YaRN training-free on "
        "LLaMA2-7B")


def _self_extend_note(c: _Ctx) -> str:
    from .scaling.attention import SelfExtendParams, self_extend_reach

    def reach(g: int, w: int) -> int:
        return self_extend_reach(L, SelfExtendParams(group=g, window=w))

    L = c.shape.original_len
    w = max(1, L // 4)
    g = max(2, math.ceil((c.target - w) / (L - w)))
    if g <= w:
        w -= w % g  # (L − W)·G + W holds when G divides W (a few tokens less otherwise)
    while reach(g, w) < c.target:  # grows with G: L − W + W//G stays >= L − W > 0
        g += 1
    return (f"attention method (positions remapped, frequencies unchanged): reach about (L − W)·G + W, e.g. "
            f"self-extend:group={g},window={w} reaches {reach(g, w):,}; no wavelength prediction "
            "applies")


def _streaming_note(c: _Ctx) -> str:
    return ("attention method: a rolling window (plus sinks) of at most L tokens, so perplexity holds over any "
            "length but nothing older than the window is retrieved; no reach to predict")


# Methods that change attention instead of frequencies: the wavelength theory does not apply; say why.
ATTENTION_NOTES: dict[str, Callable[[_Ctx], str]] = {"self-extend": _self_extend_note, "streaming": _streaming_note}


def plan(shape: RopeShape, target: int, base: float | None = None, patchable: bool = True,
         only_default: str | None = None) -> Plan:
    """Predict reach and recommend parameters per RoPE method for extending `shape` to `target` tokens.

    `base`: plan for the model with its rope base changed to B (e.g. after ABF tuning). A larger B keeps the
    critical dimension learned with the trained base (METHODS.md); a smaller one lets more dimensions see a full
    period within the trained length, so its own critical dimension counts (down to the small-base regime, where
    every dimension does and no limit is predicted), as `predicted_reach` on a model trained with B says.
    `patchable`: whether ctxext can patch this architecture's attention; when not, the length-dependent methods
    (dynamic ones, longrope) are skipped, so the training-free pick is one the model can run. `only_default`: why
    ctxext applies no method but `default` to this architecture; every other method is skipped with it.
    """
    check_target(target, shape.original_len)
    d_extra = critical_dim(shape.rotary_dim, min(shape.base, base or shape.base), shape.original_len)
    planned = shape if base is None else RopeShape(shape.rotary_dim, float(base), shape.original_len)
    _check_base(planned.base)
    ctx = _Ctx(planned, target, d_extra, predicted_reach(parse_spec("default"), planned, d_extra).tokens, shape.base)

    recs: list[Recommendation] = []
    skipped: dict[str, str] = {}
    for name, method in REGISTRY.items():
        if "rope" not in method.encodings:
            skipped[name] = "does not fit RoPE models"
            continue
        if name in ATTENTION_NOTES:
            skipped[name] = ATTENTION_NOTES[name](ctx)
            continue
        if name not in RULES:
            skipped[name] = "no planner rule yet"
            continue
        if only_default and name != "default":
            skipped[name] = only_default
            continue
        if method.length_dependent and not patchable:
            skipped[name] = "patches attention, which ctxext does not support for this architecture"
            continue
        rules = [RULES[name]] + ([_abf_training_free] if name == "abf" else [])
        for fn in rules:
            try:
                text, ft, why = fn(ctx)
                spec = parse_spec(text)
                reach = predicted_reach(spec, planned, d_extra)
                m = resolve_rope(spec, planned, target).attention_factor
            except (CtxextError, ZeroDivisionError, OverflowError) as e:  # an ntk factor past 2^31, rotary dim 2
                skipped[name] = f"no {name} spec for this model and target ({e})"
                continue
            params = spec.to_dict()["params"]
            recs.append(Recommendation(name, text, params, reach.tokens, reach.capped,
                                       reach.capped or reach.tokens >= target * (1 - REL_TOL), float(m), ft, why))
    recs = _mark(recs, ctx)
    return Plan(planned, shape.base, target, d_extra, ctx.t_extra,
                critical_base(shape.base, shape.original_len, target),
                training_free_base(planned, d_extra, target) if d_extra else math.inf,  # the abf row's
                wavelengths(planned.theta()), recs, skipped)


def _mark(recs: list[Recommendation], c: _Ctx) -> list[Recommendation]:
    """Training-free: `default` if it already reaches T; yarn up to s = 2 (YaRN s=2 beats PI and NTK just past
    the window; SmolLM2 yarn ×2 measured PPL 13-27 to 16k); past s = 2 dynamic-ntk (LongRoPE's training-free
    LLaMA2-7B at 16k, s=4: dynamic NTK 23.3 vs YaRN 87.9). Fine-tuning: abf at the critical base."""
    if c.t_extra >= c.target:
        tf = "default"
    else:
        tf = "yarn" if c.s <= 2 else "dynamic-ntk"
    free = {r.method: r for r in recs if not r.fine_tuning["required"]}
    if tf != "default" and not (tf in free and free[tf].reaches_target):  # the pick must reach T by this rule
        tf = next((m for m in (tf, "yarn", "dynamic-ntk", "ntk", "abf") if m in free and free[m].reaches_target),
                  tf)
    tf_spec = next((r.spec for r in recs if r.method == tf), None)
    ft_spec = next((r.spec for r in recs if r.method == "abf" and r.fine_tuning["required"]), None)
    out = []
    for r in recs:
        kind = "training-free" if r.spec == tf_spec else "fine-tuning" if r.spec == ft_spec else None
        out.append(replace(r, recommended=kind))
    return out
