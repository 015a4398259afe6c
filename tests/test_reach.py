"""Where perplexity breaks (ctxext.evals.reach) and the planner's calibration by the default's break
(ctxext.theory.Calibration, `ctxext plan --calibrate`)."""

import json
import math
import re

import numpy as np
import pytest

from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.evals.reach import ppl_break
from ctxext.theory import Calibration


def _curve(n: int, jump_at: int, low: float = 20.0, high: float = 60.0) -> np.ndarray:
    nll = np.full(n - 1, math.log(low))  # nll[i] scores token i+1
    nll[jump_at - 1:] = math.log(high)
    return nll


def test_break_is_the_first_bucket_past_twice_the_in_window_ppl():
    b = ppl_break(_curve(2048, 640), trained=256)  # buckets of 32 tokens; the jump opens bucket [640, 672)
    assert (b.reach, b.censored, b.length) == (641.0, False, 2048)
    assert b.in_window_ppl == pytest.approx(20.0)
    # a rise below 2x is not a break: the curve is censored at its length
    held = ppl_break(_curve(2048, 640, high=39.0), trained=256)
    assert (held.reach, held.censored) == (2048.0, True)


def test_a_rise_inside_the_first_half_of_the_window_is_not_a_break():
    nll = _curve(1024, 700)
    nll[:60] = math.log(200.0)  # short prefixes are hard for any model; the reference skips them too
    assert ppl_break(nll, trained=256).reach == 705.0  # bucket [704, 736) holds the jump at 700 from 704 on


def test_break_needs_a_curve_past_the_window():
    with pytest.raises(CtxextError, match="longer than the trained window"):
        ppl_break(np.zeros(255), trained=256)


def test_calibration_carries_every_prediction_by_the_defaults_tolerance():
    c = Calibration(predicted=8379.0, measured=11265.0, censored=False)
    assert c.tolerance == pytest.approx(1.3444, abs=1e-4)
    assert c.reach(16757.5) == pytest.approx(22529.5, abs=1.0)


def test_plan_calibrate_measures_the_defaults_break_on_the_tiny_fixture(tmp_path, capsys):
    args = ["plan", "--model", "tiny-rope", "--target", "1024", "--calibrate", "--calibrate-len", "2048",
            "--calibrate-windows", "8", "--json", "--device", "cpu"]
    assert main(args) == 0
    d = json.loads(capsys.readouterr().out)
    c = d["calibration"]
    assert (c["length"], c["windows"], c["predicted"]) == (2048, 8, pytest.approx(d["extrapolation_limit"]))
    # the trained fixture really breaks past its 256-token window, near the critical pair's limit (353)
    assert not c["censored"] and 256 < c["measured"] < 2048
    assert abs(c["tolerance"] - 1) <= 0.25 and c["tolerance"] == pytest.approx(c["measured"] / c["predicted"], abs=1e-4)
    assert c["in_window_ppl"] > 1
    for r in d["recommendations"]:
        if r["reach_capped"]:
            assert r["calibrated_reach"] is None
        else:
            assert r["calibrated_reach"] == round(r["predicted_reach"] * c["measured"] / c["predicted"])
    assert main([a for a in args if a != "--json"] + ["--out", str(tmp_path / "p")]) == 0
    text = capsys.readouterr().out
    assert "calibrated   default RoPE passed 2x" in text and "calibrated reach" in text
    assert "calibrated reach" in (tmp_path / "p" / "summary.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--data", "x.txt"], "only take effect with --calibrate"),
    (["--calibrate", "--calibrate-len", "256"], "must be longer than the trained window"),
    (["--calibrate", "--data", "{short}"], r"no document under .* has 512 tokens \(1 x 512; longest: \d+\)"),
])
def test_plan_calibrate_refusals_are_one_line(extra, message, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("A short text. " * 20)
    extra = [a.format(short=short) for a in extra]
    assert main(["plan", "--model", "tiny-rope", "--target", "1024", *extra]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(message, err[-1]) and "Traceback" not in "\n".join(err)  # one line closes it, no trace


def test_plan_calibrate_averages_enough_windows_by_default(tmp_path, capsys):
    # one 512-token window of the held-out book is its title page and contents list: the break read 257 (0.73)
    assert main(["plan", "--model", "tiny-rope", "--target", "1024", "--calibrate", "--json", "--device", "cpu"]) == 0
    c = json.loads(capsys.readouterr().out)["calibration"]
    assert (c["length"], c["windows"]) == (512, 16)
    assert abs(c["tolerance"] - 1) <= 0.1 and not c["censored"]
    # a text holding fewer windows than the default gives as many as it holds; an explicit count it lacks is refused
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir
    part = tmp_path / "part.txt"
    part.write_text((books_dir() / HELD_OUT_BOOK).read_text()[:12000])
    assert main(["plan", "--model", "tiny-rope", "--target", "1024", "--calibrate", "--data", str(part), "--json",
                 "--device", "cpu"]) == 0
    c = json.loads(capsys.readouterr().out)["calibration"]
    assert 1 <= c["windows"] < 16
    assert main(["plan", "--model", "tiny-rope", "--target", "1024", "--calibrate", "--data", str(part),
                 "--calibrate-windows", "16", "--device", "cpu"]) != 0
    assert "no document under" in capsys.readouterr().err


def test_a_censored_reach_is_the_measured_length_and_a_few_tail_tokens_decide_nothing():
    """A 1,000-token curve that never broke was 'censored at 1,024' (whole buckets, never measured); with 1,029
    tokens one bad token in a 5-token last bucket was a break at 1,025."""
    held = ppl_break(np.full(999, math.log(20.0)), trained=256)
    assert (held.reach, held.censored, held.length) == (1000.0, True, 1000)
    tail = np.full(1028, math.log(20.0))
    tail[-1] = math.log(1e6)
    b = ppl_break(tail, trained=256)
    assert (b.reach, b.censored) == (1029.0, True)
    half = np.full(1048, math.log(20.0))  # a last bucket at least half full (24 of 32) still counts
    half[1024:] = math.log(1e6)
    assert (ppl_break(half, trained=256).reach, ppl_break(half, trained=256).censored) == (1025.0, False)
