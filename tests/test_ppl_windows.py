"""ppl `--windows W`: the window protocol averages W consecutive L-token windows of each document (one long book then
gives a curve of W samples, not its opening pages), and a resumed folder keeps the count it was run with."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctxext.cli import main
from ctxext.data import load_documents, special_prefix, windows_of
from ctxext.errors import CtxextError
from ctxext.evals import run_eval
from ctxext.evals.files import curve_path
from ctxext.evals.reach import window_nll
from ctxext.fixtures import HELD_OUT_BOOK, books_dir
from ctxext.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def book() -> str:
    return str(books_dir() / HELD_OUT_BOOK)


def test_windows_of_cuts_consecutive_pieces_after_the_prefix():
    toks = np.arange(10, 30, dtype=np.int64)
    got = windows_of(toks, np.array([1], dtype=np.int64), 5, 3)
    assert [w.tolist() for w in got] == [[1, 10, 11, 12, 13], [1, 14, 15, 16, 17], [1, 18, 19, 20, 21]]
    assert len(windows_of(toks, np.array([], dtype=np.int64), 8, 9)) == 2  # only whole windows


def test_each_length_averages_its_own_windows(tmp_path, book):
    """Lengths 512 and 256 in one run: the 256 curve is the mean over the document's first three 256-token windows
    (windows past the first are not slices of the longer run's), and n counts windows."""
    res = run_eval("tiny-rope", ["default"], ["ppl"], [512, 256], samples=1, windows=3, data=[book],
                   out=tmp_path / "w", **QUIET)
    lm = load_model("tiny-rope")
    (doc,) = load_documents([book], lm.tokenizer)
    prefix = special_prefix(lm.tokenizer)
    for length in (512, 256):
        curve = np.load(curve_path(tmp_path / "w", "ppl", "default", length))
        want = window_nll(lm.model, doc.tokens, length, 3, prefix)
        assert np.isnan(curve[0]) and np.allclose(curve[1:], want, rtol=1e-4, atol=1e-5)
        one = window_nll(lm.model, doc.tokens, length, 1, prefix)
        assert not np.allclose(curve[1:], one, rtol=1e-3)  # three windows are not the first one
        overall = [r for r in res["records"] if r["length"] == length and r["bucket"] is None]
        assert overall[0]["n"] == 3
        assert overall[0]["value"] == pytest.approx(float(np.exp(np.mean(want))), rel=1e-4)
    assert res["meta"]["config"]["resume_keys"]["windows"] == 3


def test_a_document_with_fewer_windows_scores_what_it_holds(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text(" ".join(f"word{i % 50}" for i in range(900)))
    lines = []
    res = run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, windows=50, data=[text],
                   out=tmp_path / "o", progress=False, log=lines.append)
    lm = load_model("tiny-rope")
    held = len(load_documents([text], lm.tokenizer)[0].tokens) // 256
    assert 1 <= held < 50
    assert [r["n"] for r in res["records"] if r["bucket"] is None] == [held]
    assert any(f"hold fewer than the 50 windows asked (--windows): {text} ({held})" in m for m in lines), lines


def test_resume_refuses_another_window_count(tmp_path, book):
    run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, windows=2, data=[book], out=tmp_path / "o", **QUIET)
    with pytest.raises(CtxextError, match=r"other settings \(windows 2 -> 3\)"):
        run_eval("tiny-rope", ["default"], ["ppl"], [512], samples=1, windows=3, data=[book], out=tmp_path / "o",
                 resume=True, **QUIET)


def _as_before_windows(out):
    """Rewrite a results.json as a folder written before --windows existed (no such resume key)."""
    path = out / "results.json"
    res = json.loads(path.read_text())
    del res["meta"]["config"]["resume_keys"]["windows"]
    res["meta"]["config"]["resume_acting"] = [k for k in res["meta"]["config"]["resume_acting"] if k != "windows"]
    path.write_text(json.dumps(res))


def test_an_older_ppl_folder_read_one_window_and_keeps_it(tmp_path, book):
    """Its cells averaged one window a document: adding cells of several windows would mix the two in one table."""
    run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, data=[book], out=tmp_path / "o", **QUIET)
    _as_before_windows(tmp_path / "o")
    with pytest.raises(CtxextError, match=r"other settings \(windows None -> 2\)"):
        run_eval("tiny-rope", ["default"], ["ppl"], [512], samples=1, windows=2, data=[book], out=tmp_path / "o",
                 resume=True, **QUIET)
    res = run_eval("tiny-rope", ["default"], ["ppl"], [512], samples=1, data=[book], out=tmp_path / "o",
                   resume=True, **QUIET)
    assert sorted({r["length"] for r in res["records"]}) == [256, 512]


def test_an_older_ppl_folder_resumed_with_passkey_still_keeps_one_window(tmp_path, book):
    """A passkey resume wrote the windows key (null) while the folder's acting keys still lacked it: the next resume
    took ppl --windows 3 beside the one-window cells."""
    run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, data=[book], out=tmp_path / "o", **QUIET)
    _as_before_windows(tmp_path / "o")
    run_eval("tiny-rope", ["default"], ["passkey"], [256], depths=[0.5], samples=1, out=tmp_path / "o", resume=True,
             **QUIET)
    with pytest.raises(CtxextError, match=r"other settings \(windows None -> 3\)"):
        run_eval("tiny-rope", ["default"], ["ppl"], [128], samples=1, windows=3, data=[book], out=tmp_path / "o",
                 resume=True, **QUIET)


def test_an_older_passkey_folder_takes_ppl_with_windows(tmp_path, book):
    run_eval("tiny-rope", ["default"], ["passkey"], [256], depths=[0.5], samples=1, out=tmp_path / "o", **QUIET)
    _as_before_windows(tmp_path / "o")
    res = run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, windows=2, data=[book], out=tmp_path / "o",
                   resume=True, **QUIET)
    assert {r["task"] for r in res["records"]} == {"passkey", "ppl"}


def test_windows_with_the_sliding_protocol_or_without_ppl_is_refused(tmp_path, book, capsys):
    with pytest.raises(CtxextError, match="--windows acts on the window protocol"):
        run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, windows=2, protocol="sliding", data=[book],
                 out=tmp_path / "s", **QUIET)
    with pytest.raises(CtxextError, match="--windows must be >= 1, got 0"):
        run_eval("tiny-rope", ["default"], ["ppl"], [256], windows=0, data=[book], out=tmp_path / "z", **QUIET)
    rc = main(["eval", "--model", "tiny-rope", "--task", "passkey", "--lengths", "256", "--windows", "2",
               "--out", str(tmp_path / "p"), "--dry-run"])
    assert rc == 2 and "--windows acts only with --task ppl" in capsys.readouterr().err


def test_the_estimate_counts_every_window(tmp_path, book):
    one = run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, data=[book], out=tmp_path / "a",
                   dry_run=True, **QUIET)
    four = run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, windows=4, data=[book], out=tmp_path / "b",
                    dry_run=True, **QUIET)
    assert four["estimated_seconds"] == pytest.approx(4 * one["estimated_seconds"], rel=1e-6)


def test_the_estimate_leaves_out_windows_read_from_a_longer_forward(tmp_path, book):
    """A shorter length's first window is a slice of the longer one's forward (static specs): the estimate charged it
    a full forward. longrope switches factors at the trained length, so 256 and 512 are both computed."""
    from ctxext.evals.ppl import sliced_lengths

    def est(specs, lengths, **kw):
        return run_eval("tiny-rope", specs, ["ppl"], lengths, samples=1, data=[book], out=tmp_path / "x",
                        dry_run=True, **kw, **QUIET)["estimated_seconds"]

    assert est(["default"], [256, 512]) == pytest.approx(est(["default"], [512]), rel=1e-9)
    assert est(["default"], [256, 512], windows=2) == pytest.approx(
        est(["default"], [512], windows=2) + est(["default"], [256]), rel=1e-9)
    longrope = "longrope:factor=2,long_factor=[" + ",".join(["2"] * 16) + "]"
    assert est([longrope], [256, 512]) == pytest.approx(est([longrope], [256]) + est([longrope], [512]), rel=1e-9)
    assert sliced_lengths([128, 512, 256, 1024], lambda a, b: (a > 256) == (b > 256)) == {512, 128}
    res = run_eval("tiny-rope", ["default"], ["ppl"], [256, 512], samples=1, data=[book], out=tmp_path / "r", **QUIET)
    times = {t["length"]: t["estimated_seconds"] for t in res["meta"]["timings"]}
    assert times[256] == 0 and times[512] > 0


def test_the_plot_says_it_averages_windows(tmp_path, book, monkeypatch):
    """It was titled 'one window of the first L tokens' over 'position in the document' for every --windows run,
    the tiny-rope demo's included."""
    import ctxext.evals.plots as plots

    seen = {}
    real = plots.save

    def save(fig, path):
        seen[path.name] = (fig.axes[0].get_title(), fig.axes[0].get_xlabel())
        return real(fig, path)

    monkeypatch.setattr(plots, "save", save)
    for windows, out in ((3, "w"), (None, "one")):
        run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, windows=windows, data=[book],
                 out=tmp_path / out, **QUIET)
        title, xlabel = seen.pop("ppl_by_position.png")
        want = ("mean of 3 consecutive L-token windows", "window") if windows else \
            ("one window of the first L tokens", "document")
        assert title.endswith(f"({want[0]})") and xlabel.startswith(f"position in the {want[1]}")
