"""Scaling laws of RoPE extrapolation (Liu et al. 2023), predicted reach and the planner.

Reference values are docs/METHODS.md's; properties loop over shapes and methods.
"""

import math

import numpy as np
import pytest

from ctxext.errors import CtxextError
from ctxext.scaling import REGISTRY, RopeShape, parse_spec
from ctxext.theory import (
    REACH_CAP, RULES, base_for_reach, check_target, critical_base, critical_dim, extrapolation_limit, plan,
    predicted_reach, wavelengths,
)

SMOL = RopeShape(64, 1e5, 8192)
LLAMA2 = RopeShape(128, 1e4, 4096)
SHAPES = [LLAMA2, RopeShape(128, 5e5, 8192), RopeShape(96, 1e4, 2048), SMOL, RopeShape(32, 1e4, 256)]


def reach(spec: str, shape: RopeShape, d_extra=None) -> float:
    return predicted_reach(parse_spec(spec), shape, d_extra).tokens


# --- reference values (METHODS.md) -----------------------------------------------------------------------

@pytest.mark.parametrize("d,b,L,expected", [(128, 1e4, 4096, 92), (128, 5e5, 8192, 70), (96, 1e4, 2048, 62),
                                            (64, 1e5, 8192, 40)])
def test_critical_dim_reference(d, b, L, expected):
    assert critical_dim(d, b, L) == expected


def test_extrapolation_limit_reference():
    assert extrapolation_limit(128, 1e6, 92) == pytest.approx(129_027, rel=1e-5)  # LLaMA2, B = 1e6
    assert extrapolation_limit(64, 1e5, 40) == pytest.approx(8_379, rel=1e-4)  # SmolLM2, own base


@pytest.mark.parametrize("T,expected", [(16384, 304_202), (32768, 925_387), (65536, 2_815_042)])
def test_critical_base_reference(T, expected):
    assert critical_base(1e5, 8192, T) == pytest.approx(expected, abs=1)  # references are rounded


def test_lead_rule_reproduces_paper_limit():
    """reach = 2π/θ'_c with c = d_extra/2 is the paper's T_extra: LLaMA2 tuned with B = 1e6 -> ~129k."""
    assert reach("abf:base=1000000", LLAMA2) == pytest.approx(129_027, rel=1e-5)
    assert reach("default", SMOL) == pytest.approx(8_379, rel=1e-4)
    p = plan(LLAMA2, 200_000, base=1e6)  # critical dim stays the one learned with b = 1e4
    assert p.critical_dim == 92
    assert p.extrapolation_limit == pytest.approx(129_027, rel=1e-5)
    default = next(r for r in p.recommendations if r.method == "default")
    assert default.predicted_reach == pytest.approx(129_027, rel=1e-5) and not default.reaches_target
    assert plan(LLAMA2, 120_000, base=1e6).recommended("training-free").spec == "default"


@pytest.mark.parametrize("base", [None, 5e5, 3e6])
def test_fine_tuning_base_is_the_critical_base_shown(base):
    """The recommended ABF base is the plan's critical base for T whatever --base says: it is defined by the
    base the critical dimension was learned with (before: --base 5e5 recommended abf:base=6315089 beside a
    critical base of 925,387)."""
    p = plan(SMOL, 32768, base=base)
    assert p.critical_base == pytest.approx(925_387, abs=1)
    assert p.recommended("fine-tuning").spec == f"abf:base={math.ceil(p.critical_base)}"


# --- properties ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_critical_pair_is_first_pair_without_full_period(shape):
    lam = wavelengths(shape.theta())
    c = critical_dim(shape.rotary_dim, shape.base, shape.original_len) // 2
    assert np.all(lam[:c] <= shape.original_len)
    assert np.all(lam[c:] > shape.original_len)


def test_critical_dim_monotone():
    lengths = [256, 1024, 2048, 4096, 8192, 32768, 131072]
    for d, b in [(64, 1e4), (128, 1e4), (128, 5e5), (64, 1e5)]:
        dims = [critical_dim(d, b, L) for L in lengths]
        assert dims == sorted(dims) and dims[-1] > dims[0]  # more trained length, more complete dims
        bases = [critical_dim(d, B, 4096) for B in (1e3, 1e4, 1e5, 1e6)]
        assert bases == sorted(bases, reverse=True)  # larger base, longer wavelengths, fewer complete dims
    assert critical_dim(128, 500, 4096) == 128  # small base: every pair turns within L (clamped to d)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("s", [1.5, 2, 4, 8, 16])
def test_interpolating_methods_scale_reach_by_s(shape, s):
    """Linear, yarn, ntk-by-parts and llama3 all divide the critical pair's frequency by s."""
    base_reach = reach("default", shape)
    for name in ("linear", "yarn", "ntk-by-parts", "llama3"):
        assert reach(f"{name}:factor={s}", shape) == pytest.approx(s * base_reach, rel=1e-6), name


@pytest.mark.parametrize("shape", SHAPES)
def test_base_change_and_ntk_closed_forms(shape):
    d = shape.rotary_dim
    d_extra = critical_dim(d, shape.base, shape.original_len)
    for B in (shape.base * 3, 1e6, 5e7):
        assert reach(f"abf:base={B}", shape) == pytest.approx(extrapolation_limit(d, B, d_extra), rel=1e-6)
        assert extrapolation_limit(d, base_for_reach(d, d_extra, 50_000), d_extra) == pytest.approx(50_000)
    t_extra = extrapolation_limit(d, shape.base, d_extra)
    for s in (2, 4, 8):  # NTK: b' = b·s^(d/(d-2)) -> reach grows only as s^(d_extra/(d-2))
        assert reach(f"ntk:factor={s}", shape) == pytest.approx(t_extra * s ** (d_extra / (d - 2)), rel=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_critical_base_puts_critical_pair_at_target(shape):
    d, b, L = shape.rotary_dim, shape.base, shape.original_len
    d_extra = critical_dim(d, b, L)
    assert critical_base(b, L, L) == pytest.approx(b)
    for T in (2 * L, 4 * L, 32 * L):
        b0 = critical_base(b, L, T)
        assert b0 > b
        # pairs below c turn a full period within T under β₀; the critical pair's wavelength reaches T
        lam = wavelengths(RopeShape(d, b0, L).theta())
        assert np.all(lam[: d_extra // 2] <= T * (1 + 1e-6)) and lam[d_extra // 2] >= T * (1 - 1e-6)
        assert base_for_reach(d, d_extra, T) <= b0 * (1 + 1e-9)


def test_dynamic_ntk_reach_closed_form_and_monotone():
    """α = 1: s_t = t/L, reach solves t = T_extra·(t/L)^(d_extra/(d−2))."""
    d, L, d_extra = 64, 8192, 40
    t_extra = extrapolation_limit(d, 1e5, d_extra)
    e = d_extra / (d - 2)
    expected = L * (t_extra / L) ** (1 / (1 - e))
    assert reach("dynamic-ntk:factor=1", SMOL) == pytest.approx(expected, abs=2)
    reaches = [reach(f"dynamic-ntk:factor={a}", SMOL) for a in (1, 1.5, 2, 3, 4)]
    assert reaches == sorted(reaches) and reaches[-1] > 4 * reaches[0]


def test_unbounded_reach_is_capped_and_flagged():
    r = predicted_reach(parse_spec("dynamic-yarn"), SMOL)  # critical pair always interpolated by t/L
    assert r.capped and r.tokens == REACH_CAP
    r = predicted_reach(parse_spec("dynamic-yarn:max_factor=4"), SMOL)
    assert not r.capped and r.tokens == pytest.approx(4 * reach("default", SMOL), rel=1e-3)
    assert predicted_reach(parse_spec("default"), RopeShape(128, 500, 4096)).capped  # small-base regime


def test_a_smaller_base_plans_as_a_model_trained_with_it():
    """plan(base=B < trained) used the trained base's critical dimension: default's reach came out at 547 tokens,
    below the 4,096 trained; with B's own critical dimension it agrees with predicted_reach on that shape."""
    small = plan(LLAMA2, 16384, base=500)
    default = next(r for r in small.recommendations if r.method == "default")
    assert default.reach_capped and small.critical_dim == critical_dim(128, 500, 4096)
    assert predicted_reach(parse_spec("default"), RopeShape(128, 500, 4096)).capped
    big = plan(LLAMA2, 16384, base=5e5)  # a larger base keeps the trained critical dimension (METHODS.md)
    assert big.critical_dim == critical_dim(128, 1e4, 4096) == 92


def test_bad_inputs():
    with pytest.raises(CtxextError, match="base > 1"):
        critical_dim(64, 1.0, 4096)
    with pytest.raises(CtxextError, match="not longer than the model's trained window"):
        check_target(8192, 8192)
    # past the cap a capped reach counted as reaching it: 20M and 1.07B got the same dynamic-ntk factor, "≥ T: yes"
    with pytest.raises(CtxextError, match="--target 20,000,000 is past the 16,777,216 tokens the planner searches"):
        plan(SMOL, 20_000_000)
    assert plan(SMOL, 2**24).target == 2**24
    with pytest.raises(CtxextError):
        plan(SMOL, 4096)
    # position methods keep the model's frequencies: the default's 2π/θ_c is no prediction for them (it was returned)
    for text in ("self-extend:group=4,window=2048", "streaming:window=2044"):
        with pytest.raises(CtxextError, match="wavelength prediction does not apply"):
            predicted_reach(parse_spec(text), SMOL)


# --- planner ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol_plan():
    return plan(SMOL, 32768)


def test_plan_smollm2_32k_numbers(smol_plan):
    p = smol_plan
    assert (p.critical_dim, p.critical_pair) == (40, 20)
    assert p.extrapolation_limit == pytest.approx(8_379, rel=1e-4)
    assert p.critical_base == pytest.approx(925_387, rel=1e-6)
    assert p.training_free_base == pytest.approx(base_for_reach(64, 40, 32768))
    assert p.recommended("training-free").spec == "dynamic-ntk:factor=2.4266"  # s = 4 > 2
    assert p.recommended("fine-tuning").spec == "abf:base=925387"
    by = {r.spec.split(":")[0] + (":tf" if r.method == "abf" and not r.fine_tuning["required"] else ""): r
          for r in p.recommendations}
    assert by["default"].predicted_reach == pytest.approx(8_379, rel=1e-4) and not by["default"].reaches_target
    assert by["linear"].spec == "linear:factor=4" and by["linear"].fine_tuning["required"]
    assert by["yarn"].attention_factor == pytest.approx(1.1386, abs=1e-4)
    assert by["abf"].fine_tuning["required"] and by["abf"].predicted_reach >= 32768
    assert by["abf:tf"].spec == "abf:base=886405"
    assert by["dynamic-yarn"].reach_capped
    assert set(p.skipped) == {"alibi-interp", "ntk-alibi", "self-extend", "streaming"}
    assert "self-extend:group=5,window=2045 reaches 32,780" in p.skipped["self-extend"]  # G divides W: (8192-2045)·5+2045


def test_plan_every_spec_parses_and_numbers_are_the_specs(smol_plan):
    for r in smol_plan.recommendations:
        spec = parse_spec(r.spec)
        assert spec.method == r.method
        assert spec.to_dict()["params"] == r.params
        again = predicted_reach(spec, SMOL)
        assert again.tokens == pytest.approx(r.predicted_reach) and again.capped == r.reach_capped
        assert r.reaches_target == (r.method != "default")
        assert r.rationale and r.fine_tuning["cost"]


def test_plan_searched_parameters_are_minimal(smol_plan):
    """ntk and dynamic-ntk factors are the smallest (to 4 decimals) whose reach covers the target."""
    for r in smol_plan.recommendations:
        if r.method in ("ntk", "dynamic-ntk"):
            f = r.params["factor"]
            assert reach(f"{r.method}:factor={f}", SMOL) >= 32768 * (1 - 1e-6)
            assert reach(f"{r.method}:factor={f - 0.0005}", SMOL) < 32768


def test_plan_pairs_table(smol_plan):
    rows = smol_plan.pairs()
    assert len(rows) == 32 and [r["index"] for r in rows] == list(range(32))
    assert sum(r["full_period_within_original"] for r in rows) == 20
    assert sum(r["full_period_within_target"] for r in rows) == 24
    assert set(rows[0]["factors"]) == {"dynamic-ntk:factor=2.4266", "abf:base=925387"}
    for spec in rows[0]["factors"]:  # base changes: f_i = (B/b)^(2i/d), 1 at pair 0, growing
        f = [r["factors"][spec] for r in rows]
        assert f[0] == pytest.approx(1) and np.all(np.diff(f) > 0)
    assert rows[31]["factors"]["abf:base=925387"] == pytest.approx(9.25387 ** (62 / 64), rel=1e-5)


def test_plan_training_free_choice_by_scale():
    """default within T_extra; yarn up to s = 2; dynamic-ntk past it. Fine-tuning: abf at the critical base."""
    assert plan(SMOL, 16384).recommended("training-free").spec == "yarn:factor=2"
    assert plan(SMOL, 16385).recommended("training-free").method == "dynamic-ntk"
    assert plan(LLAMA2, 8192).recommended("training-free").spec == "yarn:factor=2"
    for T in (8300, 16384, 65536):
        assert plan(SMOL, T).recommended("fine-tuning").spec == f"abf:base={math.ceil(critical_base(1e5, 8192, T))}"


def test_plan_covers_every_registered_rope_method(smol_plan):
    planned = {r.method for r in smol_plan.recommendations}
    for name, m in REGISTRY.items():
        assert (name in planned) == ("rope" in m.encodings and name in RULES), name
        assert (name in planned) != (name in smol_plan.skipped), name


def test_plan_target_within_extrapolation_limit_keeps_default():
    p = plan(SMOL, 8300)  # > L = 8192 but < T_extra = 8379
    assert p.recommended("training-free").spec == "default"
    for r in p.recommendations:
        assert r.reaches_target
        if r.method == "abf":
            assert r.params["base"] >= SMOL.base  # never suggests lowering the base
    d = p.to_dict()
    assert d["recommended"]["training-free"] == "default"
    assert math.isclose(d["scale"], 8300 / 8192)


def test_plan_to_dict_is_json_ready(smol_plan):
    import json

    d = json.loads(json.dumps(smol_plan.to_dict()))
    for key in ("rotary_dim", "rope_theta", "original_max_position_embeddings", "target", "critical_dim",
                "critical_pair", "extrapolation_limit", "critical_base", "wavelengths", "recommendations", "pairs"):
        assert key in d
    assert len(d["wavelengths"]) == 32
    assert {"method", "spec", "params", "predicted_reach", "fine_tuning", "rationale", "recommended"} <= set(
        d["recommendations"][0])


def test_the_training_free_base_is_the_abf_rows():
    """Just past the window the lowest base reaching T is below the model's own (96,476 vs 100,000): the facts line
    named that while the training-free abf row said abf:base=100000."""
    from ctxext.models import model_info

    p = plan(model_info("smollm2-135m").rope_shape, 8193)
    row = next(r for r in p.recommendations if r.method == "abf" and not r.fine_tuning["required"])
    assert p.training_free_base == 100000.0 and row.spec == "abf:base=100000"
