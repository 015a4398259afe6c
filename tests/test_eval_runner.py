"""`ctxext eval` end to end on the tiny-rope fixture: the files written, what they say about a model past its
256-token window, resume after an interruption, and clear errors for bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.evals import run_eval
from ctxext.evals import ppl as ppl_task
from ctxext.fixtures import HELD_OUT_BOOK, books_dir

RECORD_KEYS = {"model", "scaling", "task", "length", "depth", "bucket", "metric", "value", "n"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def book() -> str:
    return str(books_dir() / HELD_OUT_BOOK)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, book):
    out = tmp_path_factory.mktemp("eval") / "run"
    code = main(["eval", "--model", "tiny-rope", "--scaling", "default", "--scaling", "linear:factor=4",
                 "--task", "ppl", "--task", "passkey", "--task", "niah", "--task", "needle-ppl", "--task", "fit",
                 "--lengths", "256,1024", "--depths", "0,0.5,1", "--samples", "2", "--data", book,
                 "--out", str(out), "--no-progress"])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def values(res, **where):
    return [r for r in res["records"] if all(r[k] == v for k, v in where.items())]


def one(res, **where):
    (r,) = values(res, **where)
    return r["value"]


def test_results_json_is_flat_and_complete(full_run):
    out, res = full_run
    meta = res["meta"]
    assert {"ctxext", "torch", "transformers"} <= set(meta["versions"])
    assert meta["seed"] == 0 and meta["command"].startswith("ctxext eval --model tiny-rope")
    assert meta["config"]["specs"]["linear:factor=4"] == {"method": "linear", "params": {"factor": 4.0}}
    assert meta["config"]["model_info"]["trained_len"] == 256 and meta["machine"]["cpu_count"]
    assert meta["config"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # --device auto
    for r in res["records"]:
        assert set(r) == RECORD_KEYS and r["model"] == "tiny-rope"
        assert (r["bucket"] is None) or (len(r["bucket"]) == 2 and r["bucket"][0] < r["bucket"][1] <= r["length"])
    keys = [(r["scaling"], r["task"], r["length"], r["depth"], r["metric"], tuple(r["bucket"] or ())) for r in res["records"]]
    assert len(keys) == len(set(keys))  # one record per cell and metric
    for spec in ("default", "linear:factor=4"):
        for L in (256, 1024):
            assert [r["depth"] for r in values(res, scaling=spec, task="passkey", length=L)] == [0.0, 0.5, 1.0]
            assert all(r["n"] == 2 and r["metric"] == "accuracy" for r in values(res, scaling=spec, task="passkey"))
            assert len(values(res, scaling=spec, task="niah", length=L)) == 3
            assert one(res, scaling=spec, task="needle-ppl", length=L) > 1
            # a fit, or nothing where the law does not fit the curve (logged; see evals.fit.no_fit_reason)
            assert {r["metric"] for r in values(res, scaling=spec, task="fit", length=L)} in (
                {"alpha", "beta", "gamma", "rmse"}, set())
        buckets = [r["bucket"] for r in values(res, scaling=spec, task="ppl", length=1024) if r["bucket"]]
        assert buckets == [[b, b + 128] for b in range(0, 1024, 128)]  # longest length / 8
    assert one(res, scaling="default", task="fit", length=1024, metric="gamma") > 0  # the in-window curve fits
    assert all(r["value"] > 0 for r in values(res, task="fit", metric="gamma"))


def test_summary_and_plots(full_run):
    out, _ = full_run
    text = (out / "summary.md").read_text()
    for part in ("## ppl", "## passkey", "## niah", "## needle-ppl", "## fit", "| `default` |",
                 "| `linear:factor=4` |", "1,024 ▲", "ppl by position bucket at length 1,024", "by depth"):
        assert part in text, part
    for png in ("ppl_by_position.png", "passkey_heatmap.png", "niah_heatmap.png"):
        assert (out / png).stat().st_size > 10_000 and f"]({png})" in text
    assert len(list((out / "curves").glob("ppl-*.npy"))) == 4


def test_answers_files_hold_every_trial(full_run):
    """OUT/answers/<task>-<spec>-<length>.jsonl: one row per trial with the key, what greedy decoding answered and
    the verdict; per depth, the share of correct rows is the accuracy record."""
    import re

    from ctxext.evals.files import slug

    out, res = full_run
    for task in ("passkey", "niah"):
        for spec in ("default", "linear:factor=4"):
            for L in (256, 1024):
                path = out / "answers" / f"{task}-{slug(spec)}-{L}.jsonl"
                rows = [json.loads(x) for x in path.read_text().splitlines()]
                assert [(r["depth"], r["trial"]) for r in rows] == [(d, t) for d in (0.0, 0.5, 1.0) for t in (0, 1)]
                for r in rows:
                    assert len(r["target"]) in (5, 7) and r["target"].isdigit() and isinstance(r["answer"], str)
                    assert L * 3 // 4 < r["prompt_tokens"] < L and r["needle_at"] < r["prompt_tokens"]
                    got = re.search(r"\d+", r["answer"])
                    assert r["correct"] == (got is not None and got.group() == r["target"])
                for d in (0.0, 0.5, 1.0):
                    acc = one(res, scaling=spec, task=task, length=L, depth=d)
                    assert acc == sum(r["correct"] for r in rows if r["depth"] == d) / 2


def test_past_the_window_default_explodes_and_interpolation_holds(full_run):
    """The fixture's real behaviour: default RoPE breaks past 256 tokens; linear ×4 without fine-tuning is worse
    than default inside the window (compressed angles) and better far past it (measured 159.5 vs 183.8 at 896-1023)."""
    _, res = full_run

    def bucket(spec, start):
        return next(r["value"] for r in values(res, scaling=spec, task="ppl", length=1024) if r["bucket"][0] == start)

    d_in = bucket("default", 128)
    assert bucket("default", 896) > 3 * d_in
    assert bucket("linear:factor=4", 128) > bucket("default", 128)
    assert bucket("linear:factor=4", 896) < 0.95 * bucket("default", 896)


def test_window_curves_of_shorter_lengths_are_slices_of_longer_ones(full_run, tmp_path, book, monkeypatch):
    """ppl at 256 computed alone equals the value read from the first 256 positions of the 1024 forward."""
    _, res = full_run
    calls = []
    real = ppl_task.token_nll
    monkeypatch.setattr(ppl_task, "token_nll", lambda m, ids: calls.append(len(ids)) or real(m, ids))
    alone = run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=2, data=[book], out=tmp_path / "a",
                     progress=False, log=lambda m: None)
    assert calls == [256]
    assert one(alone, task="ppl", length=256, bucket=None) == pytest.approx(
        one(res, scaling="default", task="ppl", length=256, bucket=None), rel=1e-5)


def test_resume_after_interruption_loses_no_cell(tmp_path, book, monkeypatch):
    out = tmp_path / "r"
    real = ppl_task.token_nll
    seen = []

    def flaky(model, ids):
        seen.append(len(ids))
        if len(seen) == 2:  # yarn's first forward, after default's cells (its 256 cell is a slice of 512)
            raise KeyboardInterrupt
        return real(model, ids)

    monkeypatch.setattr(ppl_task, "token_nll", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_eval("tiny-rope", ["default", "yarn:factor=4"], ["ppl"], [256, 512], samples=1, data=[book], out=out,
                 progress=False, log=lambda m: None)
    partial = json.loads((out / "results.json").read_text())  # valid JSON, written after every cell
    assert {(r["scaling"], r["length"]) for r in partial["records"]} == {("default", 512), ("default", 256)}
    assert (out / "summary.md").is_file()  # reports are written on interruption too
    with pytest.raises(CtxextError, match="already exists; pass --resume"):
        run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, data=[book], out=out, progress=False,
                 log=lambda m: None)
    with pytest.raises(CtxextError, match="other settings .*seed 0 -> 1"):
        run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, data=[book], out=out, resume=True, seed=1,
                 progress=False, log=lambda m: None)
    seen.clear()
    monkeypatch.setattr(ppl_task, "token_nll", lambda m, ids: seen.append(len(ids)) or real(m, ids))
    lines = []
    done = run_eval("tiny-rope", ["default", "yarn:factor=4"], ["ppl"], [256, 512], samples=1, data=[book],
                    out=out, resume=True, progress=False, log=lines.append)
    assert seen == [512]  # only yarn's cells ran (its 256 window is a slice of the 512 one)
    assert any("2 cells to run" in line for line in lines)
    assert {(r["scaling"], r["length"]) for r in done["records"] if r["bucket"] is None} == {
        ("default", 256), ("default", 512), ("yarn:factor=4", 256), ("yarn:factor=4", 512)}
    assert done["meta"]["runs"] == 2
    again = run_eval("tiny-rope", ["default", "yarn:factor=4"], ["ppl"], [256, 512], samples=1, data=[book],
                     out=out, resume=True, progress=False, log=lines.append)
    assert len(again["records"]) == len(done["records"]) and "nothing to run" in lines[-1]


def test_resume_adds_passkey_cells_to_a_folder_of_ppl_cells(tmp_path, book):
    # passkey reads no --data, so its cells join a ppl folder; the folder keeps the data its ppl cells came from
    out = tmp_path / "mix"
    run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, data=[book], out=out, progress=False,
             log=lambda m: None)
    res = run_eval("tiny-rope", ["default"], ["passkey"], [256], samples=1, depths="0.5", out=out, resume=True,
                   progress=False, log=lambda m: None)
    assert {r["task"] for r in res["records"]} == {"ppl", "passkey"}
    assert res["meta"]["config"]["resume_keys"]["data"] == [str(Path(book).resolve())]
    # the meta describes every record in the file, not the last run's alone (it said tasks ['passkey'], data None)
    cfg = res["meta"]["config"]
    assert (cfg["tasks"], cfg["lengths"], cfg["depths"], cfg["data"]) == (["ppl", "passkey"], [256], [0.5], [book])
    res = run_eval("tiny-rope", ["default"], ["passkey"], [300], samples=1, depths="0.25", out=out, resume=True,
                   progress=False, log=lambda m: None, command="third")
    assert (res["meta"]["config"]["lengths"], res["meta"]["config"]["depths"]) == ([256, 300], [0.25, 0.5])
    assert res["meta"]["commands"] == ["third"]  # the first two had no command (Python API)
    assert "`third`" in (out / "summary.md").read_text()
    other = tmp_path / "other.txt"
    other.write_text(Path(book).read_text())
    with pytest.raises(CtxextError, match="other settings .*data"):
        run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, data=[other], out=out,
                 resume=True, progress=False, log=lambda m: None)


def test_each_cell_is_timed_beside_its_estimate_and_resume_keeps_the_times(tmp_path, book):
    import re

    from ctxext.evals.cost import ModelCost
    from ctxext.evals.tasks import Settings, get_task
    from ctxext.models import model_info

    out = tmp_path / "timed"
    kw = dict(samples=1, data=[book], out=out, progress=False, log=lambda m: None)
    first = run_eval("tiny-rope", ["default"], ["ppl"], [256, 512], **kw)
    t = first["meta"]["timings"]
    # ppl runs the longest length and slices the shorter ones from it: their time is in the longest cell's
    assert [(x["scaling"], x["task"], x["length"], x["depth"]) for x in t] == [("default", "ppl", 512, None),
                                                                                 ("default", "ppl", 256, None)]
    assert all(0 <= x["seconds"] < 60 for x in t) and t[0]["seconds"] > 0
    mach = first["meta"]["machine"]
    mc = ModelCost.of(model_info("tiny-rope"), 4, attn_weight=mach["matmul_flops"] / mach["attention_flops"])
    est = get_task("ppl").cost(mc, 512, [], Settings(samples=1))[0] / mach["matmul_flops"]
    assert t[0]["estimated_seconds"] == pytest.approx(est, abs=1e-3)
    again = run_eval("tiny-rope", ["default", "linear:factor=2"], ["ppl"], [256, 512], resume=True, **kw)
    saved = json.loads((out / "results.json").read_text())["meta"]["timings"]
    assert saved == again["meta"]["timings"] and saved[:2] == t and len(saved) == 4
    assert {x["scaling"] for x in saved[2:]} == {"linear:factor=2"}
    summary = (out / "summary.md").read_text()
    assert "## Time" in summary and re.search(r"\| ppl \| 512 \| 2 \| 2 \| ", summary)


def test_resume_measures_a_rewritten_spec_file_again(tmp_path, book, capsys):
    # a search's best.json keeps its name when a resumed search finds better factors: its old cells are stale
    spec = tmp_path / "best.json"
    spec.write_text(json.dumps({"method": "linear", "params": {"factor": 4}, "meta": {"cost": 1}}))
    out = tmp_path / "f"
    kw = dict(samples=1, data=[book], out=out, progress=False, log=lambda m: None)
    first = run_eval("tiny-rope", ["default", str(spec)], ["ppl"], [512], **kw)
    spec.write_text(json.dumps({"method": "linear", "params": {"factor": 4}, "meta": {"cost": 2}}))
    same = run_eval("tiny-rope", ["default", str(spec)], ["ppl"], [512], resume=True, **kw)
    assert same["records"] == first["records"]  # provenance alone changed: nothing is measured again
    spec.write_text(json.dumps({"method": "ntk", "params": {"factor": 4}}))
    again = run_eval("tiny-rope", ["default", str(spec)], ["ppl"], [512], resume=True, **kw)

    def whole(res, s):
        return [r["value"] for r in res["records"] if r["scaling"] == s and r["bucket"] is None]

    assert len(whole(again, str(spec))) == 1 and whole(again, str(spec)) != whole(first, str(spec))
    assert whole(again, "default") == whole(first, "default")
    assert "changed since its" in capsys.readouterr().err
    assert again["meta"]["config"]["specs"][str(spec)]["method"] == "ntk"


def test_sliding_protocol(tmp_path, book):
    res = run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, data=[book], out=tmp_path / "s",
                   protocol="both", stride=128, progress=False, log=lambda m: None)
    sliding = [r for r in res["records"] if r["metric"] == "ppl_sliding" and r["bucket"]]
    assert sliding[-1]["bucket"][1] == 512  # the first 2L tokens
    window = one(res, metric="ppl", bucket=None)
    # past 256 every token keeps >= 128 tokens of context inside the window: no explosion over [256, 512) (the
    # first buckets hold the document's opening, hard with no context, and are the same in both protocols; one
    # 32-token bucket, the end of the table of contents, is hard with any context: 188 with 128-224 tokens of it)
    past = [r["value"] for r in sliding if r["bucket"][0] >= 256]
    assert len(past) == 8 and float(np.exp(np.mean(np.log(past)))) < 3 * window
    assert one(res, metric="ppl_sliding", bucket=None) == pytest.approx(window, rel=0.5)


def test_dry_run_states_the_cost_and_runs_nothing(tmp_path, book):
    lines = []
    res = run_eval("tiny-rope", ["default"], ["ppl", "passkey"], [256, 1024], samples=1, data=[book],
                   out=tmp_path / "d", dry_run=True, log=lines.append)
    assert res["records"] == [] and not (tmp_path / "d" / "results.json").exists()
    text = "\n".join(lines)
    assert "ppl" in text and "1,024 tokens" in text and "total ≈" in text and "measured matmul rate" in text


# ------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def cli(tmp_path, capsys):
    def run(*args: str) -> tuple[int, str]:
        code = main(["eval", "--model", "tiny-rope", "--out", str(tmp_path / "o"), "--no-progress", *args])
        return code, capsys.readouterr().err

    return run


def test_bad_input_fails_with_one_clear_line(cli, tmp_path, book):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    cases = [
        (["--task", "ppl", "--lengths", "256"], "task ppl needs --data"),
        (["--task", "ppl", "--lengths", "256", "--data", str(tmp_path / "nope.txt")], "data path not found"),
        (["--task", "ppl", "--lengths", "256", "--data", str(empty)], "every document is empty"),
        (["--task", "ppl", "--lengths", "256,512", "--data", str(short)],
         r"no document is long enough for every length \(the longest has \d+ tokens\)"),
        (["--task", "niah", "--lengths", "256", "--data", str(short)], "fewer than length 256"),
        (["--task", "passkey", "--lengths", "1000000000"], r"length 1,000,000,000 cannot fit in memory for passkey: "
                                                           r"it needs ≈ [\d.]+ GB"),
        (["--task", "passkey", "--lengths", "256", "--depths", "0,1.5"], r"depth 1.5 is outside \[0, 1\]"),
        (["--task", "passkey", "--lengths", "256", "--depths", "half"], "depth 'half' is not a number"),
        (["--task", "paskey", "--lengths", "256"], r"unknown task 'paskey' \(did you mean 'passkey'\?\)"),
        (["--task", "passkey", "--lengths", "4k"], "length '4k' is not an integer"),
        (["--task", "passkey", "--lengths", "40"], "length 40 is too short for the prompt"),
        (["--task", "passkey", "--lengths", "256", "--scaling", "yarn:factr=2"], r"did you mean 'factor'"),
        (["--task", "passkey", "--lengths", "256", "--scaling", "ntk-alibi:factor=2"], "does not fit"),
        (["--task", "passkey", "--lengths", "256", "--device", "gpu"], "unknown device 'gpu'; accepted: auto, cpu"),
        (["--task", "passkey", "--lengths", "256", "--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--task", "ppl", "--lengths", "256", "--data", book, "--stride", "100"],
         "--stride acts only with --protocol sliding or both; add one or drop --stride"),
        (["--task", "passkey", "--lengths", "256", "--depths", "0.5", "--max-new-tokens", "3"],
         r"--max-new-tokens 3 is too small: this tokenizer writes the answer in \d+ tokens; use at least \d+"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--task", "passkey", "--lengths", "256", "--device", "cuda"], "no CUDA GPU"))
    for args, match in cases:
        code, err = cli(*args)
        assert code == 2, (args, err)
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("ctxext: error:")]
        assert len(lines) == 1, (args, err)
        assert re_search(match, lines[0]), (args, lines[0])


@pytest.mark.parametrize("spec,match", [
    ("self-extend:group=4,window=1000", "self-extend: window=1000 must be smaller than the trained length 256"),
    ("streaming:window=300", r"streaming: sinks \+ window = 304 must fit in the trained length 256"),
    ("longrope:factor=4,long_factor=[1,2,3,4]", "long_factor has 4 values; this model has 16 rotary pairs"),
])
def test_windows_past_the_trained_length_fail_before_weights(cli, tmp_path, book, monkeypatch, spec, match):
    """These were checked when the spec was applied: --dry-run passed them, and a real run loaded the weights and ran
    the earlier specs' cells before it failed."""
    import ctxext.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("weights loaded before the spec check"))
    for dry in (["--dry-run"], []):
        code, err = cli("--task", "ppl", "--task", "stream-ppl", "--lengths", "1024", "--samples", "1", "--data", book,
                        "--scaling", "default", "--scaling", spec, *dry)
        assert code == 2 and re_search(match, err.strip().splitlines()[-1]), err
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize("args,match", [
    (["--task", "passkey", "--lengths", "128,512", "--depths", "0,1"],
     r"passkey: length 128 is too short for the prompt \(\d+ tokens without any haystack\)"),
    (["--task", "niah", "--lengths", "40"], r"niah: length 40 is too short for the prompt"),
    (["--task", "needle-ppl", "--lengths", "40"], r"needle-ppl: length 40 is too short for the prompt"),
    (["--task", "passkey", "--lengths", "512", "--depths", "0.5", "--max-new-tokens", "3"],
     r"--max-new-tokens 3 is too small: this tokenizer writes the answer in \d+ tokens"),
])
def test_prompts_too_long_for_a_length_fail_before_weights(cli, tmp_path, book, monkeypatch, args, match):
    """Found when the task ran: after the weights loaded and every earlier task's (and spec's) cells had run, so one
    bad length threw away the valid cells after it. Now with the tokenizer alone, in --dry-run too."""
    import ctxext.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("weights loaded before the prompt check"))
    for dry in (["--dry-run"], []):
        code, err = cli("--task", "ppl", "--samples", "1", "--data", book, *args, *dry)
        assert code == 2 and re_search(match, err.strip().splitlines()[-1]), err
    assert not (tmp_path / "o" / "results.json").exists()


def test_longqa_names_the_length_asked_when_the_question_leaves_no_room(tmp_path):
    from ctxext.evals.longqa import build_prompt
    from ctxext.models import load_model

    tok = load_model("tiny-rope").tokenizer
    with pytest.raises(CtxextError, match=r"longqa: length 30 leaves no room for context after the question "
                                          r"\(\d+ tokens\) and the answer \(--max-new-tokens 16\)"):
        build_prompt(tok, "Some context.", "Who wrote the letter to the captain of the ship?", 30, 16)


@pytest.mark.parametrize("args,match", [
    (["--task", "needle-ppl", "--task", "stream-ppl", "--depths", "7,abc"],
     "--depths acts only with --task passkey or niah; needle-ppl, stream-ppl do not use it"),
    (["--task", "passkey", "--protocol", "both"], "--protocol acts only with --task ppl; passkey does not use it"),
    (["--task", "stream-ppl", "--samples", "3"], "--samples acts only with --task ppl or passkey or niah or "
                                                 "needle-ppl or longqa; stream-ppl does not use it"),
    (["--task", "needle-ppl", "--max-new-tokens", "4"],
     "--max-new-tokens acts only with --task passkey or niah or longqa; needle-ppl does not use it"),
    (["--task", "ppl", "--no-prefix-reuse"], "--no-prefix-reuse acts only with --task passkey or niah"),
    (["--task", "passkey", "--bucket", "64"], "--bucket acts only with --task ppl or stream-ppl"),
])
def test_an_option_no_task_uses_is_refused(cli, book, args, match):
    """Each was accepted and did nothing (--depths was not even parsed without a task that sweeps depths)."""
    code, err = cli("--lengths", "512", "--data", book, "--dry-run", *args)
    assert code == 2 and match in err.strip().splitlines()[-1], err


def test_options_a_task_uses_pass_the_check(cli, book):
    code, err = cli("--lengths", "512", "--data", book, "--dry-run", "--task", "fit", "--protocol", "both",
                    "--samples", "2", "--bucket", "128")  # fit reads ppl, which uses all three
    assert code == 0, err


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_skipped_documents_are_reported(tmp_path, book):
    short = tmp_path / "short.txt"
    short.write_text("A short document. " * 20)
    lines = []
    res = run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=3, data=[short, book], out=tmp_path / "k",
                   progress=False, log=lines.append)
    assert any("skipped 1 document(s) shorter than 256 tokens: " in m and "short.txt" in m for m in lines)
    assert "ppl @ 256: 1 document(s) of at least 256 tokens for the 3 asked (--samples); the figure averages " \
           "those" in lines
    (overall,) = values(res, bucket=None)
    assert overall["n"] == 1 and math.isfinite(overall["value"])


def test_python_api_and_cli_agree(full_run, tmp_path, book):
    _, res = full_run
    api = run_eval("tiny-rope", ["linear:factor=4"], ["passkey"], [256], depths=[0, 0.5, 1], samples=2,
                   out=tmp_path / "api", progress=False, log=lambda m: None)
    for r in api["records"]:
        assert r["value"] == one(res, scaling="linear:factor=4", task="passkey", length=256, depth=r["depth"])
    assert Path(tmp_path / "api" / "results.json").is_file()


def test_progress_never_passes_its_estimate():
    from ctxext.evals.progress import bar_step

    done, total = 0.0, 10.0
    for step in (4.0, 4.0, 4.0, 4.0):  # 16 s of work against a 10 s estimate
        done += bar_step(done, total, step)
    assert done == total
    assert bar_step(2.0, 10.0, 3.0) == 3.0 and bar_step(10.0, 10.0, 1.0) == 0.0


def test_summary_rows_are_the_specs_each_task_measured():
    from ctxext.evals.results import summary_markdown

    def rec(s, task, v):
        return {"scaling": s, "task": task, "metric": "ppl", "length": 512, "depth": None, "bucket": None,
                "value": v}

    recs = [rec("yarn:factor=2", "ppl", 30.0), rec("streaming:sinks=4,window=60", "stream-ppl", 31.0),
            rec("default", "ppl", 90.0)]
    md = summary_markdown({"config": {"model": "m", "model_info": {"trained_len": 256}}}, recs, [])
    ppl_part, stream_part = md.split("## stream-ppl")
    assert "| `yarn:factor=2` | 30.00 |" in ppl_part and "| `default` | 90.00 |" in ppl_part
    assert "streaming" not in ppl_part.split("## ppl")[1]
    assert "| `streaming:sinks=4,window=60` | 31.00 |" in stream_part and "yarn" not in stream_part


def test_needle_ppl_ignores_the_decoding_budget_and_bf16_passkey_runs(tmp_path, book):
    """needle-ppl decodes nothing, so --max-new-tokens does not bound it; passkey's shared-prefix path keeps a
    bf16 model's activations in bf16 (its merged attention came back fp32 and crashed the next projection)."""
    res = run_eval("tiny-rope", ["default"], ["needle-ppl"], [256], samples=1, data=[book], out=tmp_path / "n",
                   progress=False, max_new_tokens=1)
    assert res["records"][0]["value"] > 1
    res = run_eval("tiny-rope", ["default"], ["passkey"], [200], depths=[0.2, 0.5], samples=2, out=tmp_path / "b",
                   progress=False, dtype="bfloat16")
    assert {r["n"] for r in res["records"] if r["metric"] == "accuracy"} == {2}


def test_a_loaded_model_is_recorded_in_its_own_dtype(tmp_path, book):
    """run_eval on a LoadedModel in bfloat16 recorded dtype 'float32' (the argument's default): its results were
    labelled with the wrong precision and a float32 run resumed into them as if they were its own."""
    from ctxext.models import load_model

    lm = load_model("tiny-rope", dtype=torch.bfloat16)
    res = run_eval(lm, ["default"], ["ppl"], [256], samples=1, data=[book], out=tmp_path / "bf", progress=False,
                   log=lambda m: None)
    assert res["meta"]["config"]["dtype"] == "bfloat16" and lm.model.dtype == torch.bfloat16
    with pytest.raises(CtxextError, match="dtype 'float32' applies to a model loaded by name; this model is already "
                                          "in bfloat16"):
        run_eval(lm, ["default"], ["ppl"], [256], samples=1, data=[book], out=tmp_path / "bf2", dtype="float32")
    lm32 = load_model("tiny-rope")
    with pytest.raises(CtxextError, match="cannot resume"):  # the bf16 cells are not a float32 run's
        run_eval(lm32, ["default"], ["ppl"], [256], samples=1, data=[book], out=tmp_path / "bf", resume=True,
                 progress=False, log=lambda m: None)


def test_one_spec_or_task_may_be_a_string(tmp_path, book):
    """run_eval("tiny-rope", "yarn:factor=2", "ppl", ...) iterated the strings: "unknown scaling method 'y'"."""
    res = run_eval("tiny-rope", "yarn:factor=2", "ppl", "256", samples=1, data=[book], out=tmp_path / "s",
                   progress=False, log=lambda m: None)
    assert {(r["scaling"], r["task"]) for r in res["records"]} == {("yarn:factor=2", "ppl")}


def test_load_model_takes_auto_device():
    from ctxext.models import load_model

    lm = load_model("tiny-rope", device="auto")
    assert str(next(lm.model.parameters()).device) == ("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(CtxextError, match="unknown device 'gpu'"):
        load_model("tiny-rope", device="gpu")


def test_needle_ppl_scores_the_numbers_tokens_only(tmp_path, book, monkeypatch):
    """The fixtures' (and SmolLM2's) tokenizer splits " 1234567" into " " and seven digits: the space was scored
    as an eighth answer token, which is not about recalling the number. It is the question's last token now."""
    from transformers import AutoTokenizer

    from ctxext.evals import needle_ppl
    from ctxext.evals.scoring import Scorer
    from ctxext.models.names import resolve_model_path

    seen = []
    real = Scorer.score

    def spy(self, base, probes, **kw):
        seen.extend(probes)
        return real(self, base, probes, **kw)

    monkeypatch.setattr(Scorer, "score", spy)
    res = run_eval("tiny-rope", ["default"], ["needle-ppl"], [256], samples=2, data=[book], out=tmp_path / "n",
                   progress=False)
    assert len(seen) == 2
    tok = AutoTokenizer.from_pretrained(resolve_model_path("tiny-rope"))
    for p in seen:
        assert len(p.answer) == needle_ppl.DIGITS and tok.decode(p.answer.tolist()).isdigit()
        assert tok.decode(p.tail.tolist()).endswith("mentioned in the provided text is ")
    assert res["records"][0]["n"] == 2 and res["records"][0]["value"] > 1


def test_a_value_that_is_not_a_number_is_recorded_as_none(tmp_path, book):
    """streaming:sinks=0,window=1 has no in-window token to score: its ppl_in_window was NaN, which the JSON writer
    refused with a traceback, after summary.md had been written and with no results.json."""
    res = run_eval("tiny-rope", ["streaming:sinks=0,window=1"], ["stream-ppl"], [300], data=[book], out=tmp_path / "s",
                   progress=False, log=lambda m: None)
    saved = json.loads((tmp_path / "s" / "results.json").read_text())["records"]
    head = {r["metric"]: r["value"] for r in saved if r["bucket"] is None}
    assert head["ppl_in_window"] is None and head["ppl"] > 1 and len(saved) == len(res["records"])
    assert "stream-ppl" in (tmp_path / "s" / "summary.md").read_text()


def test_a_resumed_runs_summary_lists_each_command(tmp_path, book):
    out = tmp_path / "r"
    for cmd, L in (("ctxext eval A", 256), ("ctxext eval B", 300)):
        res = run_eval("tiny-rope", ["default"], ["passkey"], [L], samples=1, depths="0.5", out=out, resume=True,
                       progress=False, log=lambda m: None, command=cmd)
    assert res["meta"]["commands"] == ["ctxext eval A", "ctxext eval B"]
    text = (out / "summary.md").read_text()
    assert "2 runs (--resume), oldest first:\n\n- `ctxext eval A`\n- `ctxext eval B`" in text
    # a resume with nothing to run rewrote summary.md ('3 runs') but not results.json (runs 2, two commands)
    run_eval("tiny-rope", ["default"], ["passkey"], [300], samples=1, depths="0.5", out=out, resume=True,
             progress=False, log=lambda m: None, command="ctxext eval C")
    saved = json.loads((out / "results.json").read_text())["meta"]
    assert saved["runs"] == 3 and saved["commands"][-1] == "ctxext eval C"
    assert "3 runs (--resume)" in (out / "summary.md").read_text()


def test_bucket_labels_stay_readable():
    from ctxext.evals.results import bucket_label

    assert bucket_label((2048, 4096)) == "2k–4k" and bucket_label((0, 1536)) == "0k–1.5k"
    assert bucket_label((1280, 1500)) == "1,280–1,500" and bucket_label((0, 256)) == "0–256"


def test_a_resumed_run_keeps_every_machine(tmp_path, book, monkeypatch):
    import ctxext.runinfo as runinfo

    out = tmp_path / "m"
    for name in ("Linux-A", "Linux-B", "Linux-A"):
        monkeypatch.setattr(runinfo, "machine", lambda n=name: {"platform": n, "processor": "x86", "cpu_count": 2})
        res = run_eval("tiny-rope", ["default"], ["passkey"], [256 + len(name) * (name == "Linux-B")], samples=1,
                       depths="0.5", out=out, resume=True, progress=False, log=lambda m: None)
    assert [m["platform"] for m in res["meta"]["machines"]] == ["Linux-A", "Linux-B"]
    assert res["meta"]["machine"]["platform"] == "Linux-A"


def test_resume_with_fewer_tasks_keeps_the_options_they_do_not_use(cli, tmp_path, book):
    """A passkey + needle-ppl folder run with --max-new-tokens 12 could not be resumed with needle-ppl alone: the
    option was refused as unused, and leaving it out was refused as 'max_new_tokens 12 -> 16'."""
    code, err = cli("--task", "passkey", "--task", "needle-ppl", "--lengths", "256", "--depths", "0.5",
                    "--samples", "1", "--max-new-tokens", "12", "--data", book)
    assert code == 0, err
    code, err = cli("--task", "needle-ppl", "--lengths", "300", "--samples", "1", "--data", book, "--resume")
    assert code == 0, err
    meta = json.loads((tmp_path / "o" / "results.json").read_text())["meta"]
    assert meta["config"]["resume_keys"]["max_new_tokens"] == 12 and meta["runs"] == 2
    code, err = cli("--task", "passkey", "--lengths", "300", "--depths", "0.5", "--samples", "1", "--resume")
    assert code == 2 and "max_new_tokens 12 -> 16" in err  # passkey does use it


def test_a_changed_task_protocol_is_measured_again_on_resume(tmp_path, book, capsys):
    """needle-ppl scores the number's tokens only since version 2: a folder measured before kept its old cells
    beside new ones (108.9 beside a fresh 94.9 for the same cell)."""
    out = tmp_path / "v"
    run_eval("tiny-rope", ["default"], ["needle-ppl"], [256], samples=1, data=[book], out=out, progress=False,
             log=lambda m: None)
    path = out / "results.json"
    d = json.loads(path.read_text())
    fresh = d["records"][0]["value"]
    d["records"][0]["value"] = 108.9  # as measured by version 1, whose files carry no task_versions
    del d["meta"]["config"]["task_versions"]
    path.write_text(json.dumps(d))
    res = run_eval("tiny-rope", ["default"], ["needle-ppl"], [256], samples=1, data=[book], out=out, resume=True,
                   progress=False, log=lambda m: None)
    assert [r["value"] for r in res["records"]] == [fresh]
    assert "the needle-ppl protocol changed since its 1 record(s)" in capsys.readouterr().err
    assert res["meta"]["config"]["task_versions"]["needle-ppl"] == 2


@pytest.mark.parametrize("rope_type", ["longrope", "dynamic"])
def test_position_methods_on_a_length_dependent_own_rope_fail_before_weights(tmp_path, monkeypatch, rope_type):
    """A Phi-3-128k-style checkpoint (own longrope) or a dynamic one: self-extend keeps the model's own RoPE, which
    changes with the length; refused from the config, not after the weights and the default spec's cells."""
    import ctxext.models as models
    from ctxext.errors import CtxextError
    from ctxext.evals.runner import run_eval
    from test_export import tiny_checkpoint

    def own(cfg):
        extra = {"short_factor": [1.0] * 16, "long_factor": [4.0] * 16} if rope_type == "longrope" else {}
        cfg.update(max_position_embeddings=1024, rope_parameters={
            "rope_type": rope_type, "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 256,
            **extra})
    m = tiny_checkpoint(tmp_path / "m", "llama", own)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("weights loaded before the spec check"))
    with pytest.raises(CtxextError, match=f"self-extend keeps the model's own RoPE, but this checkpoint's "
                                          f"\\('{rope_type}'\\) changes with the length"):
        run_eval(str(m), ["default", "self-extend:group=2,window=64"], ["ppl"], [512],
                 data=[books_dir() / HELD_OUT_BOOK], out=tmp_path / "o")


def test_resume_adds_tasks_with_options_the_folder_never_used_and_refuses_changed_data(tmp_path, book):
    """A passkey folder records no bucket or protocol (no cell used them): ppl with its own bucket may join it (it
    was refused: "other settings (bucket 32 -> 128)"). A --data folder that gained a book between runs is refused
    (new lengths were measured on other documents, beside the old cells)."""
    import shutil

    out, quiet = tmp_path / "o", dict(progress=False, log=lambda m: None)
    run_eval("tiny-rope", ["default"], ["passkey"], [256], depths=[0.5], samples=1, out=out, **quiet)
    res = run_eval("tiny-rope", ["default"], ["ppl"], [512], samples=1, bucket=128, protocol="sliding",
                   data=[book], out=out, resume=True, **quiet)
    assert res["meta"]["config"]["resume_keys"]["bucket"] == 128
    assert {r["task"] for r in res["records"]} == {"passkey", "ppl"}

    data = tmp_path / "books"
    data.mkdir()
    shutil.copy(book, data)
    run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, data=[data], out=tmp_path / "d", **quiet)
    shutil.copy(books_dir() / "pg1342.txt", data)
    with pytest.raises(CtxextError, match=r"other settings \(data files \(names and sizes\) differ: 1 new or "
                                          r"changed \(e\.g\. .*pg1342\.txt\)\)"):
        run_eval("tiny-rope", ["default"], ["ppl"], [256, 512], samples=1, data=[data], out=tmp_path / "d",
                 resume=True, **quiet)


def test_a_default_a_task_used_is_still_compared_on_resume(tmp_path, book):
    """ppl's --samples left at its default (4 documents) is recorded null, as a key no task used is: the resume
    accepted --samples 1 into it, and one table averaged 4 documents in some cells and 1 in others."""
    import shutil

    data = tmp_path / "books"
    data.mkdir()
    for name in ("pg84.txt", "pg1342.txt"):
        shutil.copy(books_dir() / name, data)
    quiet = dict(progress=False, log=lambda m: None)
    run_eval("tiny-rope", ["default"], ["ppl"], [256], data=[data], out=tmp_path / "o", dry_run=False, **quiet)
    with pytest.raises(CtxextError, match=r"other settings \(samples None -> 1\)"):
        run_eval("tiny-rope", ["default"], ["ppl"], [512], samples=1, data=[data], out=tmp_path / "o", resume=True,
                 **quiet)
    run_eval("tiny-rope", ["default"], ["ppl"], [256], samples=1, data=[data / "pg84.txt", data / "pg1342.txt"],
             out=tmp_path / "p", **quiet)
    with pytest.raises(CtxextError, match=r"data files \(names and sizes\) differ: the same files in another order"):
        run_eval("tiny-rope", ["default"], ["ppl"], [512], samples=1, data=[data / "pg1342.txt", data / "pg84.txt"],
                 out=tmp_path / "p", resume=True, **quiet)


def test_a_model_handed_in_is_handed_back_with_its_own_spec(book):
    """run_eval left a LoadedModel with the last spec it evaluated applied (linear here), silently changing what
    the caller's next forward computed."""
    import torch

    from ctxext.models import apply_spec, load_model

    lm = load_model("tiny-rope")
    apply_spec(lm, "yarn:factor=2")
    ids = torch.arange(3, 300)[None]
    with torch.inference_mode():
        before = lm.model(ids).logits
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        run_eval(lm, ["default", "linear:factor=2"], ["ppl"], [256], samples=1, data=[book], out=d, progress=False,
                 log=lambda m: None)
    assert lm.spec.text == "yarn:factor=2"
    with torch.inference_mode():
        assert torch.equal(lm.model(ids).logits, before)


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """A Ctrl-C between writing the temporary and the rename left `.NAME.PID.tmp` beside results (never reused)."""
    import ctxext.evals.files as files

    path = tmp_path / "results.json"
    files.atomic_write(path, "old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
