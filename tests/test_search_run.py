"""`ctxext search` on the tiny RoPE fixture: bad input, fitness equal to `ctxext eval`, the outputs (best.json that
--scaling and export accept), and kill -9 + --resume ending exactly like an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxext.cli import main
from ctxext.data import load_documents
from ctxext.errors import CtxextError
from ctxext.evals import run_eval
from ctxext.export import plan_export
from ctxext.fixtures import HELD_OUT_BOOK, book_path
from ctxext.models import load_model
from ctxext.scaling import parse_spec
from ctxext.search import Candidate, Evaluator, candidate_spec, make_space, seed_candidates

MODEL = "tiny-rope"
BOOK = str(book_path(HELD_OUT_BOOK))
# a small search: target 512 (2× the 256 window), rungs 384×1 then 512×2, 4 members, budget 11 full evaluations
# (the in-window guard takes ~3.4 of them for fitness ppl, the first generation 4 + 4 × 0.33, a generation the rest)
SMALL = ["--model", MODEL, "--target", "512", "--samples", "2", "--population", "4", "--budget", "11",
         "--rung", "384:1", "--rung", "512:2", "--no-progress"]

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lm():
    return load_model(MODEL)


@pytest.fixture(scope="module")
def parts_jsonl(tmp_path_factory, lm):
    """Frankenstein cut into documents of 1.2-1.9× 512 tokens (one ppl passage each)."""
    ids = load_documents([BOOK], lm.tokenizer)[0].tokens
    path = tmp_path_factory.mktemp("data") / "parts.jsonl"
    with path.open("w") as f:
        for i in range(4):
            f.write(json.dumps({"text": lm.tokenizer.decode(ids[i * 800:(i + 1) * 800].tolist())}) + "\n")
    docs = load_documents([path], lm.tokenizer)
    assert all(512 <= len(d) < 1024 for d in docs)
    return path


def last(err: str) -> str:
    """The final line of stderr (the model loader may print its own progress before a data error)."""
    return err.strip().splitlines()[-1]


def run_cli(args, capsys):
    code = main(["search", *args])
    return code, capsys.readouterr().err


def test_bad_input_one_line_errors(tmp_path, capsys):
    code, err = run_cli([*SMALL, "--data", BOOK, "--out", str(tmp_path / "a"), "--budget", "3"], capsys)
    assert code == 2 and err.strip() == ("ctxext: error: --budget 3 is smaller than --population 4: the first "
                                         "generation alone costs one full-length evaluation per member; raise --budget")
    code, err = run_cli(["--model", MODEL, "--target", "256", "--data", BOOK, "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and err.strip() == ("ctxext: error: --target 256 is not past the trained window (256 tokens); "
                                         "search factors for a longer target, e.g. 512")
    short = tmp_path / "short.txt"
    short.write_text(Path(BOOK).read_text()[:3000])  # ~700 tokens
    code, err = run_cli([*SMALL, "--data", str(short), "--out", str(tmp_path / "c"), "--fitness", "ppl",
                         "--target", "1024", "--rung", "1024:2"], capsys)
    assert code == 2 and last(err).startswith("ctxext: error: search data is shorter than the target: the longest "
                                              "document has ") and err.count("ctxext: error") == 1
    code, err = run_cli([*SMALL, "--data", str(short), "--out", str(tmp_path / "d"), "--target", "1024",
                         "--rung", "1024:2"], capsys)
    assert code == 2 and "fewer than the target 1024" in last(err) and err.count("ctxext: error") == 1
    code, err = run_cli([*SMALL, "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and "data path not found" in err
    code, err = run_cli([*SMALL, "--data", BOOK, "--out", str(tmp_path / "f"), "--device", "tpu"], capsys)
    assert code == 2 and last(err) == "ctxext: error: unknown device 'tpu'; accepted: auto, cpu, cuda, cuda:<index>"
    assert not (tmp_path / "f").exists()  # refused before anything is written


def test_fitness_equals_ctxext_eval(lm, parts_jsonl, tmp_path):
    shape = lm.info.rope_shape
    space = make_space(16, 2.0, 7, 256)
    cand = seed_candidates(space, shape)["longrope2"]
    spec_file = tmp_path / "cand.json"
    spec = candidate_spec(cand, 2.0, 256)
    spec_file.write_text(json.dumps(spec.to_dict()))
    res = run_eval(lm, [str(spec_file), "yarn:factor=2"], ["ppl", "needle-ppl"], [512], samples=3,
                   data=[str(parts_jsonl)], out=tmp_path / "eval", seed=4, progress=False, log=lambda m: None)
    got = {r["task"]: r["value"] for r in res["records"] if r["bucket"] is None and r["scaling"] == str(spec_file)}
    yarn = {r["task"]: r["value"] for r in res["records"] if r["bucket"] is None and r["scaling"] == "yarn:factor=2"}
    for fitness in ("ppl", "needle-ppl"):
        ev = Evaluator(lm, load_documents([parts_jsonl], lm.tokenizer), fitness, 512, 3, seed=4)
        value, _, parts = ev.evaluate(cand, 512, 3)
        assert value == got[fitness] and parts == {fitness: value}
    both = Evaluator(lm, load_documents([parts_jsonl], lm.tokenizer), "both", 512, 3, seed=4)
    value, _, parts = both.evaluate(cand, 512, 3)
    assert parts == got and both.reference_parts(512, 3) == yarn  # the reference is yarn:factor=s, as eval reports
    assert value == max(got["ppl"] / yarn["ppl"], got["needle-ppl"] / yarn["needle-ppl"])
    assert both.evaluate_spec(parse_spec("yarn:factor=2"), 512, 3)[0] == 1.0
    assert both.cost(512, 3) == 1.0 and 0 < both.cost(384, 1) < 0.3


def test_search_outputs_and_best_json_is_a_spec(parts_jsonl, tmp_path, capsys):
    out = tmp_path / "s"
    code, err = run_cli([*SMALL, "--data", str(parts_jsonl), "--out", str(out), "--fitness", "ppl",
                         "--search-attention"], capsys)
    assert code == 0, err
    assert {"best.json", "history.jsonl", "results.json", "summary.md", "factors.png", "fitness_vs_cost.png",
            "guard.json", "search.json"} <= {p.name for p in out.iterdir()}
    res = json.loads((out / "results.json").read_text())
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert len(hist) == res["evaluations"] and res["spent"] <= 11 + 1e-9
    assert len(res["seeds"]) == 4 and res["generations"] >= 1  # every seed measured, then children
    assert hist[-1]["cost_total"] == pytest.approx(res["spent"])
    assert res["best"]["fitness"] == min(h["fitness"] for h in hist if h["rung"] == 1)
    assert res["best"]["fitness"] <= min(res["seeds"].values())
    g = res["guard"]  # the in-window guard bounded m; every candidate respects it
    assert all(h["attention_factor"] <= g["cap"] + 1e-12 for h in hist)
    spec = parse_spec(str(out / "best.json"))  # accepted by --scaling
    assert spec.method == "longrope" and list(spec.params.long_factor) == res["best"]["factors"]
    best = json.loads((out / "best.json").read_text())
    assert best["model"] == MODEL and best["target"] == 512 and best["fitness"] == "ppl"
    assert best["cost"] == res["spent"] and best["fitness_value"] == res["best"]["fitness"]
    state = json.loads((out / "search.json").read_text())["resume_keys"]
    assert state["data_files"] == [[str(parts_jsonl.resolve()), parts_jsonl.stat().st_size]]
    ex = plan_export(MODEL, str(out / "best.json"))  # exported as a standard longrope rope config
    assert ex.rope_parameters["rope_type"] == "longrope" and ex.max_position_embeddings == 512
    assert ex.rope_parameters["long_factor"] == res["best"]["factors"]
    ev = run_eval(MODEL, [str(out / "best.json")], ["ppl"], [512], samples=2, data=[str(parts_jsonl)],
                  out=tmp_path / "ev", progress=False, log=lambda m: None)
    (rec,) = [r for r in ev["records"] if r["bucket"] is None]
    assert rec["value"] == res["best"]["fitness"]  # ctxext eval reports the fitness the search found
    assert "searched best" in (out / "summary.md").read_text()


def test_kill_and_resume_equals_uninterrupted(parts_jsonl, tmp_path, capsys):
    args = [*SMALL, "--data", str(parts_jsonl), "--budget", "9", "--seed", "3", "--fitness", "both"]
    a = tmp_path / "a"
    assert run_cli([*args, "--out", str(a)], capsys)[0] == 0
    n_total = len((a / "history.jsonl").read_text().splitlines())
    b = tmp_path / "b"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import sys, torch; torch.set_num_threads(1); from ctxext.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "search", *args, "--out", str(b)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hist = b / "history.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if hist.is_file() and len(hist.read_text().splitlines()) >= n_total // 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len([x for x in hist.read_text().splitlines() if x.endswith("}")])
    assert 0 < done < n_total and not (b / "best.json").exists()
    code, err = run_cli([*args, "--out", str(b), "--resume"], capsys)
    assert code == 0, err
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert rb["replayed"] == done  # nothing evaluated twice
    assert rb["best"]["factors"] == ra["best"]["factors"] and rb["best"]["fitness"] == ra["best"]["fitness"]
    assert rb["curve"] == ra["curve"] and rb["spent"] == ra["spent"]
    strip = lambda d: [{k: v for k, v in json.loads(x).items() if k != "seconds"}
                       for x in (d / "history.jsonl").read_text().splitlines()]
    assert strip(b) == strip(a)
    assert json.loads((b / "best.json").read_text())["params"] == json.loads((a / "best.json").read_text())["params"]


def test_resume_refuses_other_settings(parts_jsonl, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "search.json").write_text(json.dumps({"resume_keys": {"seed": 9}}))
    code, err = run_cli([*SMALL, "--data", str(parts_jsonl), "--out", str(out), "--resume"], capsys)
    assert code == 2 and "cannot resume the search" in err and err.count("\n") == 1


def test_an_earlier_search_is_not_thrown_away_without_resume(parts_jsonl, tmp_path, capsys):
    """Rerunning into a folder that holds a search, without --resume, started over and rewrote its history."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "history.jsonl").write_text('{"fitness": 1.0}\n')
    code, err = run_cli([*SMALL, "--data", str(parts_jsonl), "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{out} holds an earlier search ({out / 'history.jsonl'}); pass --resume to continue it" in err
    assert (out / "history.jsonl").read_text() == '{"fitness": 1.0}\n' and not (out / "search.json").exists()


def test_resuming_a_finished_search_measures_nothing(parts_jsonl, tmp_path, capsys, monkeypatch):
    """--resume on a search that ended replays history, reuses the guard and the reference (exact yarn) and gives
    the same results; before, the reference was measured again (one more full evaluation, ~30 min at 64k on a CPU)."""
    out = tmp_path / "s"
    args = [*SMALL, "--data", str(parts_jsonl), "--out", str(out), "--fitness", "ppl", "--budget", "8"]
    assert run_cli(args, capsys)[0] == 0
    first = json.loads((out / "results.json").read_text())
    assert json.loads((out / "references.json").read_text())["parts"]["512x2"] == {"ppl": first["reference"]["fitness"]}
    calls = []
    for name in ("measure", "short_ppl"):
        real = getattr(Evaluator, name)
        monkeypatch.setattr(Evaluator, name, lambda self, *a, _r=real, _n=name, **k: calls.append(_n) or _r(self, *a, **k))
    code, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    again = json.loads((out / "results.json").read_text())
    assert calls == [] and again["replayed"] == first["evaluations"]
    assert again["reference"] == first["reference"] and again["best"]["fitness"] == first["best"]["fitness"]


def test_budget_must_cover_guard_reference_and_first_generation(lm, parts_jsonl, tmp_path, capsys, monkeypatch):
    """The guard and the reference are spent before the first generation: a budget they leave too small for it is a
    one-line error with the figures (before: an AssertionError, or a search that never measured part of its initial
    population and returned the first seed); --resume with the least budget it names then works."""
    docs = load_documents([parts_jsonl], lm.tokenizer)
    out = tmp_path / "n"  # the reported case: fitness needle-ppl, default rungs, budget = population
    code, err = run_cli(["--model", MODEL, "--target", "512", "--samples", "2", "--population", "4", "--budget", "4",
                         "--data", str(parts_jsonl), "--out", str(out), "--no-progress"], capsys)
    guard = len(json.loads((out / "guard.json").read_text())["probes"]) * \
        Evaluator(lm, docs, "needle-ppl", 512, 2).ppl_cost(256, 2)
    assert 1 < guard < 4  # 2 to 9 in-window ppl runs at 256 tokens
    least = np.ceil((guard + 4) * 100 - 1e-7) / 100
    assert code == 2 and last(err) == (
        f"ctxext: error: --budget 4 cannot measure the first generation: the in-window guard spent {guard:.3g} "
        f"full-length evaluations and the reference 0, and the 4 members need 4 more (1 each); raise --budget to at "
        f"least {least:g} (--resume keeps the guard's measurements)")
    assert err.count("ctxext: error") == 1 and "Traceback" not in err and not (out / "history.jsonl").exists()

    out = tmp_path / "b"  # fitness both: the reference (yarn:factor=2 at 384×1 and 512×2) is in the budget too
    ev = Evaluator(lm, docs, "both", 512, 2)
    args = [*SMALL, "--data", str(parts_jsonl), "--out", str(out), "--fitness", "both"]
    code, err = run_cli([*args, "--budget", "7"], capsys)
    guard = len(json.loads((out / "guard.json").read_text())["probes"]) * ev.ppl_cost(256, 2)
    ref = ev.cost(384, 1) + ev.cost(512, 2)
    least = np.ceil((guard + ref + 4) * 100 - 1e-7) / 100
    assert 7 < least < 8  # the old check (budget >= population) let 7 through
    assert code == 2 and last(err) == (
        f"ctxext: error: --budget 7 cannot measure the first generation: the in-window guard spent {guard:.3g} "
        f"full-length evaluations and the reference {ref:.3g}, and the 4 members need 4 more (1 each); raise --budget "
        f"to at least {least:g} (--resume keeps the guard's measurements)")
    assert not (out / "references.json").exists()  # refused before the reference was measured
    short = tmp_path / "s"  # reference + first generation alone exceed the budget: refused before the guard runs
    code, err = run_cli([*SMALL, "--data", str(parts_jsonl), "--out", str(short), "--fitness", "both",
                         "--budget", "4"], capsys)
    assert code == 2 and "the in-window guard spent 0 full-length evaluations" in last(err)
    assert not (short / "guard.json").exists()

    calls = []
    real = Evaluator.short_ppl
    monkeypatch.setattr(Evaluator, "short_ppl", lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
    code, err = run_cli([*args, "--budget", f"{least:g}", "--resume"], capsys)
    assert code == 0, err
    assert calls == []  # the guard measured by the refused run is reused
    res = json.loads((out / "results.json").read_text())
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert len({h["key"] for h in hist if h["rung"] == 1 and h["generation"] == 0}) == 4  # all measured at full
    assert len(res["seeds"]) == 4 and res["spent"] <= least + 1e-9
    assert res["guard_cost"] == pytest.approx(guard) and res["reference_cost"] == pytest.approx(ref)


@pytest.mark.parametrize("extra, message", [
    (["--rung", "200:1", "--rung", "512:2"], "--rung 200:1: a proxy rung's length must lie past the trained window "
                                             "(256) and below --target 512"),
    (["--rung", "1024:1", "--rung", "512:2"], "--rung 1024:1: a proxy rung's length must lie past"),
    (["--rung", "384:0", "--rung", "512:2"], "--rung 384:0: a rung needs at least 1 sample"),
    (["--rung", "448:1", "--rung", "384:1", "--rung", "512:2"], "--rung lengths must rise, each once, to --target"),
    (["--budget", "nan"], "--budget must be a finite number of full-length evaluations, got nan"),
    (["--budget", "inf"], "--budget must be a finite number of full-length evaluations, got inf"),
    (["--short-tolerance", "nan"], "--short-tolerance must be a finite fraction, got nan"),
])
def test_settings_that_cannot_search_are_refused_before_weights(tmp_path, capsys, monkeypatch, extra, message):
    """A proxy rung inside the window scored every candidate alike (80 evaluations, nothing promoted); a 0-sample
    rung failed after the weights naming --samples; nan budgets never stopped."""
    import ctxext.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    base = SMALL if "--rung" not in extra else [a for i, a in enumerate(SMALL)
                                                if a != "--rung" and (i == 0 or SMALL[i - 1] != "--rung")]
    code, err = run_cli([*base, "--data", BOOK, "--out", str(tmp_path / "o"), *extra], capsys)
    assert code == 2 and message in last(err), err


def test_a_search_does_not_write_over_another_runs_folder(tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("{}")
    code, err = run_cli([*SMALL, "--data", BOOK, "--out", str(out)], capsys)
    assert code == 2 and "holds another run's results.json / summary.md; choose another --out" in last(err)
    assert (out / "results.json").read_text() == "{}"


def test_fixed_critical_with_every_pair_pinned_is_refused_up_front(tmp_path, capsys):
    """Base 30: the critical pair is the last one; --fixed-critical left nothing to mutate, found after the guard."""
    import shutil

    from ctxext.models.names import resolve_model_path

    src = resolve_model_path(MODEL)
    folder = tmp_path / "b30"
    shutil.copytree(src, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_theta"] = 30.0
    cfg.get("rope_parameters", {}).update({"rope_theta": 30.0}) if isinstance(cfg.get("rope_parameters"), dict) else None
    (folder / "config.json").write_text(json.dumps(cfg))
    code, err = run_cli(["--model", str(folder), *SMALL[2:], "--fixed-critical", "--data", BOOK,
                         "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--fixed-critical pins every pair here (critical pair 16 of 16)" in last(err), err


def test_the_guard_names_itself_when_the_documents_are_shorter_than_the_window(lm, tmp_path, capsys):
    """needle-ppl joins short documents; the guard needs window-long ones, and its error said 'the target is 256'
    (the window) and suggested a shorter --target."""
    ids = load_documents([BOOK], lm.tokenizer)[0].tokens
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"text": lm.tokenizer.decode(ids[i:i + 150].tolist())}) + "\n"
                             for i in range(0, 150 * 40, 150)))
    code, err = run_cli([*SMALL, "--fitness", "needle-ppl", "--data", str(short), "--out", str(tmp_path / "o")],
                        capsys)
    assert code == 2 and "the in-window guard scores passages of the trained length 256" in last(err)
    assert "--short-tolerance -1" in last(err)


def test_a_search_measured_with_an_older_needle_ppl_is_not_resumed(parts_jsonl, tmp_path, capsys):
    from ctxext.search.driver import STATE

    out = tmp_path / "s"
    args = [*SMALL, "--data", str(parts_jsonl), "--out", str(out), "--fitness", "needle-ppl", "--short-tolerance",
            "-1", "--budget", "5"]
    assert run_cli(args, capsys)[0] == 0
    state = json.loads((out / STATE).read_text())
    del state["resume_keys"]["needle_ppl_version"]  # as written before needle-ppl scored the number's tokens only
    (out / STATE).write_text(json.dumps(state))
    code, err = run_cli([*args, "--resume"], capsys)
    assert code == 2 and "needle_ppl_version was None, now 2" in last(err)


def test_a_changed_data_file_refuses_the_resume_and_an_older_state_still_resumes(tmp_path):
    """The state held the data's paths only: a file rewritten between runs was searched on other text from the
    resume on. A search.json written before the sizes were kept resumes on its paths alone."""
    from ctxext.search import config_from
    from ctxext.search.driver import write_state

    cfg = config_from(512, samples=2)
    info = {"model": MODEL, "data": ["/d.jsonl"], "data_files": [["/d.jsonl", 100]]}
    write_state(tmp_path, cfg, info, resume=False)
    write_state(tmp_path, cfg, info, resume=True)  # the same: accepted
    with pytest.raises(CtxextError, match=r"data_files was \[\['/d.jsonl', 100\]\], now \[\['/d.jsonl', 180\]\]"):
        write_state(tmp_path, cfg, {**info, "data_files": [["/d.jsonl", 180]]}, resume=True)
    old = json.loads((tmp_path / "search.json").read_text())
    del old["resume_keys"]["data_files"]
    (tmp_path / "search.json").write_text(json.dumps(old))
    write_state(tmp_path, cfg, info, resume=True)  # written before data_files: resumes on the paths


def test_a_proxy_rung_the_data_cannot_serve_is_refused_before_any_evaluation(parts_jsonl, tmp_path, capsys):
    """It was checked at the target only: the guard and the whole first generation ran before the proxy failed,
    and a --resume with corrected rungs is refused, so that work was lost."""
    args = [("384:500" if a == "384:1" else a) for a in SMALL]
    code, err = run_cli([*args, "--fitness", "ppl", "--data", str(parts_jsonl), "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "--rung 384:500: search data gives" in err
    assert not (tmp_path / "s" / "history.jsonl").exists()


def test_a_proxy_rung_dearer_than_the_full_one_is_refused(parts_jsonl, tmp_path, capsys):
    """`--rung 384:8 --rung 512:2` was accepted: every child paid more on the 'cheap' proxy than a full evaluation."""
    args = [("384:8" if a == "384:1" else a) for a in SMALL]
    code, err = run_cli([*args, "--data", str(parts_jsonl), "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "--rung 384:8 costs" in err and "not less than the full rung's 1" in err
    assert not (tmp_path / "s" / "history.jsonl").exists()
