"""`ctxext demo` end to end on the tiny RoPE fixture (the README's main job runs the same steps on SmolLM2): every
step's folder, the combined summary, and the plan checked against the measured perplexity curve."""

import json
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
    # the table is the break point of each measured curve, averaged over 16 windows of the book (one window is its
    # licence header and contents: default RoPE's break there was 257, a property of the text, not of the model)
    check = (demo / "plan_check.md").read_text()
    assert "on the 1,024-token curve of step 2, averaged over 16 consecutive windows of the book" in check
    ppl = json.loads((demo / "ppl" / "results.json").read_text())
    assert [r["n"] for r in ppl["records"] if r["bucket"] is None] == [16, 16, 16]
    breaks = {s: ppl_break(np.load(curve_path(demo / "ppl", "ppl", s, 1024)).astype(np.float64)[1:], 256)
              for s in ("default", "yarn:factor=2", "ntk:factor=2")}
    shape = model_info("tiny-rope").rope_shape
    tol = breaks["default"].reach / predicted_reach(parse_spec("default"), shape).tokens
    assert 0.9 < tol < 1.1  # the planner's prediction of the trained model's own break (257 / 353 = 0.73 on one)
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


def test_plan_check_json_holds_the_table(demo):
    rows = {r["spec"]: r for r in json.loads((demo / "plan_check.json").read_text())["rows"]}
    check = (demo / "plan_check.md").read_text()
    assert set(rows) == {"default", "yarn:factor=2", "ntk:factor=2"}
    for spec, r in rows.items():
        cells = re.search(rf"\| `{re.escape(spec)}` \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|", check).groups()
        assert cells[0].strip() == f"{r['predicted']:,.0f}"
        assert cells[2].strip().lstrip("≥ ") == f"{r['ratio']:.2f}"
        assert cells[3].strip() == ("–" if r["calibrated"] is None else f"{r['calibrated']:,.0f}")
    assert "min of measurement; this invocation" in (demo / "summary.md").read_text().splitlines()[0]


def test_a_curve_that_never_breaks_bounds_the_ratio_from_below(tmp_path):
    """On SmolLM2 with the defaults both scaled methods hold to the end of the 12,288-token curve: their rows read
    '≥' and the text says no break was compared with the prediction."""
    from ctxext.commands.demo import plan_check
    from ctxext.evals.files import curve_path

    for spec in ("default", "yarn:factor=2"):
        path = curve_path(tmp_path / "ppl", "ppl", spec, 1024)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.r_[np.nan, np.full(1023, 3.0)].astype(np.float32))
    md, rows = plan_check(tmp_path, "tiny-rope", ["default", "yarn:factor=2"], 1024)
    assert "| `yarn:factor=2` | 707 | ≥ 1,024 | ≥ 1.45 | – |" in md
    assert "`default`, `yarn:factor=2`: no break within the 1,024-token curve, so the ratio is a lower bound" in md
    assert rows[1]["ratio_is_lower_bound"] and rows[1]["ratio"] == pytest.approx(1024 / 706.66, rel=1e-4)


@pytest.mark.parametrize("extra,needle", [
    (["--depths", "0.1,abc"], "depth 'abc' is not a number"),
    (["--passkey-length", "20"], "passkey: length 20 is too short for the prompt"),
    (["--passkey-length", "100000000"], "cannot fit in memory for passkey"),
])
def test_step_3_refusals_come_before_step_1(tmp_path, capsys, extra, needle):
    """They came after the plan and the whole perplexity step (minutes on SmolLM2)."""
    rc = main(["demo", "--model", "tiny-rope", "--out", str(tmp_path / "d"), "--ppl-length", "1024", *extra])
    assert rc == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_an_earlier_demo_is_not_half_overwritten_without_resume(demo, capsys):
    """Without --resume the plan was rewritten (for the new model) before the eval refused the folder."""
    before = {p: p.stat().st_mtime_ns for p in (demo / "plan").iterdir()}
    rc = main(["demo", "--model", "tiny-rope", "--out", str(demo), "--ppl-length", "1024", "--passkey-length", "512"])
    assert rc == 2 and "already exists; pass --resume" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (demo / "plan").iterdir()} == before  # not even rewritten


def test_specs_are_named_as_the_eval_files_them(tmp_path):
    """'default ' (a stray space) found no curve: measured '–' and no calibration although the eval ran."""
    rc = main(["demo", "--model", "tiny-rope", "--out", str(tmp_path / "d"), "--ppl-length", "512", "--passkey-length",
               "300", "--depths", "0.5", "--scaling", "default ", "--scaling", " yarn:factor=2"])
    assert rc == 0
    check = (tmp_path / "d" / "plan_check.md").read_text()
    assert "Calibrated:" in check and "| `default` | 353 | – |" not in check and "`yarn:factor=2`" in check
