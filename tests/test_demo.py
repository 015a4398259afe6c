"""`ctxext demo` end to end on the tiny RoPE fixture (the README's main job runs the same steps on SmolLM2): every
step's folder, the combined summary, and the plan checked against the measured perplexity curve."""

import re

import numpy as np
import pytest

from ctxext.cli import main
from ctxext.evals.files import curve_path
from ctxext.evals.reach import ppl_break
from ctxext.models import model_info
from ctxext.scaling import parse_spec
from ctxext.theory import predicted_reach


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--model", "tiny-rope", "--out", str(out), "--ppl-length", "1024", "--passkey-length", "512",
               "--depths", "0.5"])
    assert rc == 0
    return out


def test_demo_writes_every_step_and_one_summary(demo):
    for f in ("plan/results.json", "plan/plan.png", "ppl/results.json", "ppl/ppl_by_position.png",
              "passkey/results.json", "plan_check.md", "summary.md"):
        assert (demo / f).is_file(), f
    md = (demo / "summary.md").read_text()
    titles = ["## Plan", "## Perplexity", "## Plan vs measurement", "## Passkey"]
    assert [l for l in md.splitlines() if l in titles] == titles
    assert "![plan](plan/plan.png)" in md and "![ppl_by_position](ppl/ppl_by_position.png)" in md


def test_plan_check_puts_the_measured_break_beside_the_prediction(demo):
    # the table is the break point of each measured curve (the physics, on 8 windows, is in test_reach: one window
    # of the tiny fixture opens with the book's licence header, so its break here is not a model property)
    check = (demo / "plan_check.md").read_text()
    breaks = {s: ppl_break(np.load(curve_path(demo / "ppl", "ppl", s, 1024)).astype(np.float64)[1:], 256)
              for s in ("default", "yarn:factor=2", "ntk:factor=2")}
    shape = model_info("tiny-rope").rope_shape
    tol = breaks["default"].reach / predicted_reach(parse_spec("default"), shape).tokens
    assert f"measured / predicted ({tol:.2f})" in check
    for spec, pred in (("default", 353), ("yarn:factor=2", 707), ("ntk:factor=2", 488)):
        b = breaks[spec]
        m = f"≥ {b.length:,}" if b.censored else f"{b.reach:,.0f}"
        row = re.search(rf"\| `{re.escape(spec)}` \| {pred} \| {m} \| ([\d.–]+) \| ([\d,–]+) \|", check)
        assert row, (spec, check)
        if not b.censored:
            assert float(row.group(1)) == pytest.approx(b.reach / pred, abs=0.01)
        if spec != "default":
            assert int(row.group(2).replace(",", "")) == pytest.approx(pred * tol, abs=3)


def test_summary_names_the_versions(demo):
    md = (demo / "summary.md").read_text()
    assert re.search(r'versions: \{"ctxext": "[^"]+", "torch": "[^"]+", "transformers": "[^"]+"\}', md), md[-300:]


def test_a_ppl_length_inside_the_window_is_refused_before_any_work(tmp_path, capsys):
    rc = main(["demo", "--model", "tiny-rope", "--out", str(tmp_path / "d"), "--ppl-length", "256"])
    err = capsys.readouterr().err
    assert rc == 2 and "--ppl-length 256 must be longer than tiny-rope's trained window (256 tokens)" in err
    assert not (tmp_path / "d" / "plan").exists()
