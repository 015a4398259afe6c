"""Bad specs fail with one clear line before any model is touched."""

import json

import pytest

from ctxext.errors import CtxextError
from ctxext.scaling import RopeShape, check_fits, parse_spec, resolve_rope

SMOL = RopeShape(64, 1e5, 8192)


def fails(text, *needles):
    with pytest.raises(CtxextError) as e:
        parse_spec(text)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_unknown_method_suggests_the_closest():
    fails("yarm:factor=2", "unknown scaling method 'yarm'", "did you mean 'yarn'", "accepted:")
    fails("linaer:factor=2", "did you mean 'linear'")


def test_unknown_key_lists_accepted_keys():
    fails("yarn:facter=2", "unknown key 'facter'", "did you mean 'factor'", "beta_fast")


def test_factor_below_one_and_bad_numbers():
    fails("linear:factor=0.5", "linear: factor must be >= 1", "0.5")  # the method named: which --scaling it was
    fails("yarn:factor=0.9", "yarn: factor must be >= 1")
    fails("dynamic-yarn:max_factor=0.5", "dynamic-yarn: max_factor must be >= 1")
    fails("ntk-alibi:factor=0.5", "ntk-alibi: factor must be >= 1")
    fails("yarn:factor=4,original_max_position_embeddings=4095.9", "yarn: original_max_position_embeddings='4095.9' "
          "is not an integer")  # was cut to 4095 silently
    assert parse_spec("yarn:factor=4,original_max_position_embeddings=4096.0").original_len == 4096
    fails("linear:factor=abc", "factor='abc' is not a valid")
    fails("linear", "missing required key", "factor")
    fails("yarn:factor", "expected key=value")


def test_a_key_given_twice_is_refused():
    """yarn:factor=2,factor=3 exported factor 3 without a word (the last value won)."""
    assert fails("yarn:factor=2,factor=3") == "'factor' is given twice in 'yarn:factor=2,factor=3'; give each key once"
    fails("self-extend:group=4, window=64,window =32", "'window' is given twice")
    assert parse_spec("yarn:factor=2,beta_fast=16").params.beta_fast == 16


def test_base_must_be_positive():
    fails("abf:base=0", "base must be > 0")
    fails("abf:base=-5", "base must be > 0")
    with pytest.raises(CtxextError, match="rope base must be > 0"):
        RopeShape(64, 0.0, 8192)


def test_longrope_factor_lists():
    fails("longrope:factor=2,long_factor=[1,2,1.5]", "non-decreasing", "pair 2")
    fails("longrope:factor=2,long_factor=[1,2],short_factor=[1,1,1]", "short_factor has 3 values")
    spec = parse_spec("longrope:factor=2,long_factor=[1,1.5,2]")
    with pytest.raises(CtxextError, match="has 3 values; this model has 32 rotary pairs"):
        resolve_rope(spec, SMOL)


def test_encoding_mismatch_both_ways():
    with pytest.raises(CtxextError, match="'ntk-alibi' does not fit .* \\(RoPE\\); accepted for RoPE models: .*yarn"):
        check_fits(parse_spec("ntk-alibi:factor=2"), "rope")
    with pytest.raises(CtxextError, match="'yarn' does not fit .* \\(ALiBi\\); accepted for ALiBi models: alibi-interp"):
        check_fits(parse_spec("yarn:factor=2"), "alibi")
    check_fits(parse_spec("default"), "alibi")


def test_json_spec_round_trip(tmp_path):
    spec = parse_spec("longrope:factor=4,start_tokens=2,long_factor=[1,2,3,4]")
    path = tmp_path / "best.json"
    path.write_text(json.dumps(spec.to_dict()))
    again = parse_spec(str(path))
    assert again.method == "longrope" and again.params == spec.params and again.text == str(path)


def test_json_spec_errors(tmp_path):
    fails(str(tmp_path / "missing.json"), "not found")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    fails(str(bad), "not valid JSON")
    nomethod = tmp_path / "nomethod.json"
    nomethod.write_text(json.dumps({"params": {}}))
    fails(str(nomethod), "has no 'method'")


def test_original_length_override():
    spec = parse_spec("yarn:factor=2,original_max_position_embeddings=4096")
    assert spec.original_len == 4096
    a = resolve_rope(spec, SMOL)
    b = resolve_rope(parse_spec("yarn:factor=2"), RopeShape(64, 1e5, 4096))
    assert (a.inv_freq == b.inv_freq).all()
    fails("yarn:factor=2,original_max_position_embeddings=-3", "must be > 0")


def test_non_finite_and_overflowing_numbers(tmp_path):
    """Before: inf/nan and 1e30-sized numbers parsed, then overflowed (OverflowError, an absurd
    max_position_embeddings) only once a model was loaded, or escaped as OverflowError for integer keys."""
    fails("yarn:factor=inf", "factor='inf' is not a finite number")
    fails("yarn:factor=1e400", "is not a finite number")
    fails("linear:factor=nan", "is not a finite number")
    fails("longrope:factor=2,long_factor=[1,nan,3]", "long_factor='[1,nan,3]' is not a finite number")
    fails("longrope:factor=2,start_tokens=inf,long_factor=[1,2]", "start_tokens='inf' is not a finite number")
    fails("yarn:factor=2,original_max_position_embeddings=inf", "is not a finite number")
    fails("ntk:factor=1e30", "factor must be <= 2147483647", "1e+30")
    fails("yarn:factor=2,original_max_position_embeddings=1e30", "original_max_position_embeddings must be <= 2147483647")
    path = tmp_path / "inf.json"
    path.write_text('{"method": "linear", "params": {"factor": Infinity}}')
    fails(str(path), "factor=inf is not a finite number")
    assert parse_spec("ntk:factor=2147483647").params.factor == 2147483647
