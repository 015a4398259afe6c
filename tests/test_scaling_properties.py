"""Properties every registered method must have, and METHODS.md reference values."""

import math

import numpy as np
import pytest

from ctxext.scaling import REGISTRY, RopeShape, alibi_slopes, parse_spec, resolve_alibi, resolve_rope
from ctxext.scaling.basic import ntk_base
from ctxext.scaling.yarn import yarn_ramp_bounds

SMOL = RopeShape(64, 1e5, 8192)
LLAMA2 = RopeShape(128, 1e4, 4096)

# One representative spec per registered method at s = 4; a new method must be added here (test below).
EXAMPLES = {
    "default": "default", "linear": "linear:factor=4", "abf": "abf:base=2e6", "ntk": "ntk:factor=4",
    "dynamic-ntk": "dynamic-ntk:factor=4", "ntk-by-parts": "ntk-by-parts:factor=4", "yarn": "yarn:factor=4",
    "dynamic-yarn": "dynamic-yarn", "llama3": "llama3:factor=4",
    "longrope": "longrope:factor=4,long_factor=[" + ",".join(["1"] * 16 + ["4"] * 16) + "]",
    "alibi-interp": "alibi-interp:factor=4", "ntk-alibi": "ntk-alibi:factor=4",
    # attention methods keep the model's frequencies (they move positions, not frequencies)
    "self-extend": "self-extend:group=4,window=2048", "streaming": "streaming:sinks=4,window=2044",
}


def test_every_registered_method_has_an_example():
    assert set(EXAMPLES) == set(REGISTRY)


@pytest.mark.parametrize("name", [n for n, m in REGISTRY.items() if "rope" in m.encodings])
def test_rope_methods_are_valid_frequency_vectors(name):
    spec = parse_spec(EXAMPLES[name])
    for t in (None, 1000, 8192, 4 * 8192):
        f = resolve_rope(spec, SMOL, t)
        assert f.inv_freq.shape == (32,)
        assert np.all(np.isfinite(f.inv_freq)) and np.all(f.inv_freq > 0)
        assert np.all(np.diff(f.inv_freq) < 0), "frequencies stay strictly decreasing over pairs"
        factors = f.factors(SMOL)
        assert np.all(factors >= 1 - 1e-12), "no method rotates faster than the model was trained"
        assert f.attention_factor >= 1.0


@pytest.mark.parametrize("name", [n for n, m in REGISTRY.items() if m.length_dependent])
def test_length_dependent_methods_are_default_inside_the_window(name):
    f = resolve_rope(parse_spec(EXAMPLES[name]), SMOL, 8192)
    default = resolve_rope(parse_spec("default"), SMOL)
    # (longrope without short_factor: all ones inside the window; its attention factor stays)
    np.testing.assert_allclose(f.inv_freq, default.inv_freq, rtol=1e-12)
    assert f.attention_factor == 1.0 or name == "longrope"


def test_linear_is_default_divided_by_s():
    d = resolve_rope(parse_spec("default"), SMOL).inv_freq
    for s in (1.5, 2, 4, 8):
        np.testing.assert_allclose(resolve_rope(parse_spec(f"linear:factor={s}"), SMOL).inv_freq, d / s, rtol=1e-12)


@pytest.mark.parametrize("method", ["yarn", "ntk-by-parts", "llama3"])
def test_band_methods_lie_between_extrapolation_and_interpolation(method):
    d = resolve_rope(parse_spec("default"), SMOL).inv_freq
    f = resolve_rope(parse_spec(f"{method}:factor=4"), SMOL).inv_freq
    assert np.all(f <= d * (1 + 1e-12)) and np.all(f >= d / 4 * (1 - 1e-12))
    assert f[0] == pytest.approx(d[0]), "highest frequency extrapolates"
    assert f[-1] == pytest.approx(d[-1] / 4), "lowest frequency interpolates"


def test_dynamic_yarn_at_length_sL_is_yarn_s():
    for s in (2, 4):
        a = resolve_rope(parse_spec("dynamic-yarn"), SMOL, s * 8192)
        b = resolve_rope(parse_spec(f"yarn:factor={s}"), SMOL)
        np.testing.assert_allclose(a.inv_freq, b.inv_freq, rtol=1e-12)
        assert a.attention_factor == pytest.approx(b.attention_factor)


def test_ntk_reference_bases_and_lowest_pair_interpolated_by_s():
    assert ntk_base(1e4, 128, 2) == pytest.approx(20221, abs=1)
    assert ntk_base(1e4, 128, 4) == pytest.approx(40890, abs=1)
    for s in (2, 4, 8):
        f = resolve_rope(parse_spec(f"ntk:factor={s}"), LLAMA2).factors(LLAMA2)
        assert f[-1] == pytest.approx(s, rel=1e-6) and f[0] == pytest.approx(1.0)


def test_yarn_reference_values():
    assert yarn_ramp_bounds(LLAMA2, 32, 1) == (20, 46)
    assert yarn_ramp_bounds(SMOL, 32, 1) == (10, 20)
    for s, m in ((2, 1.0693), (4, 1.1386), (8, 1.2079), (16, 1.2773)):
        assert resolve_rope(parse_spec(f"yarn:factor={s}"), SMOL).attention_factor == pytest.approx(m, abs=1e-4)


def test_longrope_reference_attention_factor_and_start_tokens():
    shape = RopeShape(64, 1e4, 4096)
    spec = parse_spec("longrope:factor=16,start_tokens=4,long_factor=[" + ",".join(["2"] * 32) + "]")
    f = resolve_rope(spec, shape)
    assert f.attention_factor == pytest.approx(1.1547, abs=1e-4)
    assert f.start_tokens == 4
    np.testing.assert_allclose(f.factors(shape), 2.0)
    # inside the window the short factors (default: none) apply
    np.testing.assert_allclose(resolve_rope(spec, shape, 4096).factors(shape), 1.0)


def test_llama3_keeps_short_wavelengths_and_divides_long_ones():
    shape = RopeShape(128, 5e5, 8192)
    f = resolve_rope(parse_spec("llama3"), shape)
    wavelen = 2 * math.pi / shape.theta()
    fac = f.factors(shape)
    assert np.all(fac[wavelen < 8192 / 4] == pytest.approx(1.0))
    assert np.all(fac[wavelen > 8192] == pytest.approx(8.0))
    mid = (wavelen >= 8192 / 4) & (wavelen <= 8192)
    assert mid.any() and np.all((fac[mid] > 1) & (fac[mid] < 8))


def test_alibi_reference_slopes():
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -k for k in range(1, 9)])
    np.testing.assert_allclose(alibi_slopes(12), [2.0 ** -k for k in range(1, 9)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5])
    ntk = resolve_alibi(parse_spec("ntk-alibi:factor=2"), 8)
    np.testing.assert_allclose(ntk, [0.5, 0.226431, 0.102542, 0.046437, 0.021030, 0.009524, 0.004313, 0.001953], atol=1e-6)
    np.testing.assert_allclose(resolve_alibi(parse_spec("alibi-interp:factor=2"), 8), alibi_slopes(8) / 2)
    np.testing.assert_allclose(resolve_alibi(parse_spec("default"), 12), alibi_slopes(12))


@pytest.mark.parametrize("heads", [1, 3, 5, 8, 12, 16, 24, 32])
def test_ntk_alibi_keeps_steepest_and_divides_flattest(heads):
    base = alibi_slopes(heads)
    ntk = resolve_alibi(parse_spec("ntk-alibi:factor=4"), heads)
    ratio = base / ntk
    assert ratio[np.argmax(base)] == pytest.approx(1.0 if heads > 1 else 4.0)
    assert ratio[np.argmin(base)] == pytest.approx(4.0)
    assert np.all((ratio >= 1 - 1e-12) & (ratio <= 4 + 1e-12))
