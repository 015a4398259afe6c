"""End-to-end training runs on the tiny-rope fixture: files written, exact resume after Ctrl-C, refusals before any
weights are loaded. (The run that shows learning is in test_train_learns.py.)"""

import json
import os
import signal
from pathlib import Path

import pytest

from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.fixtures import HELD_OUT_BOOK, TRAIN_BOOKS, books_dir
from ctxext.train import TrainConfig, train

MODEL = "tiny-rope"


def books(*names):
    return tuple(str(books_dir() / n) for n in names)


def small(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(model=MODEL, scaling="yarn:factor=2", data=books(TRAIN_BOOKS[2]), seq_len=512, steps=6, lr=1e-3,
                batch_tokens=1024, warmup=2, evaluate=False, grad_checkpointing=False, out=str(tmp_path / "run"))
    return TrainConfig(**{**base, **kw})


def history(out) -> list[float]:
    return [h["loss"] for h in json.loads((Path(out) / "results.json").read_text())["training"]["history"]]


@pytest.mark.slow
def test_cli_run_writes_results_and_a_stock_loadable_final_model(tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--model", MODEL, "--scaling", "linear:factor=2", "--data", books(TRAIN_BOOKS[2])[0],
               "--seq-len", "512", "--steps", "4", "--lr", "1e-3", "--batch-tokens", "1024", "--warmup", "1",
               "--eval-data", books(HELD_OUT_BOOK)[0], "--eval-docs", "1", "--passkey-trials", "1",
               "--lora", "--out", str(out), "--no-progress"])
    assert rc == 0
    for f in ("results.json", "summary.md", "loss-curve.png", "spec.json", "checkpoint/state.pt",
              "final/config.json", "final/model.safetensors", "final/README.md"):
        assert (out / f).is_file(), f
    res = json.loads((out / "results.json").read_text())
    recs = res["records"]  # the ctxext eval record format, at steps 0 and 4
    assert {r["model"] for r in recs} == {f"{MODEL}@step0", f"{MODEL}@step4"}
    assert {r["task"] for r in recs} == {"passkey", "ppl"}
    assert set(recs[0]) == {"model", "scaling", "task", "length", "depth", "bucket", "metric", "value", "n"}
    assert [r["bucket"] for r in recs if r["task"] == "ppl" and r["bucket"]][-1] == [384, 512]  # last quarter
    t = res["training"]
    assert [h["step"] for h in t["history"]] == [1, 2, 3, 4] and t["summary"]["tokens"] == 4 * 1024
    assert t["summary"]["export_verification"]["passed"]
    assert res["meta"]["config"]["lora"] and res["meta"]["trainable_parameters"] > 0
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["rope_parameters"] == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    assert cfg["rope_scaling"]["type"] == "linear"
    assert cfg["use_cache"] is True  # the source's; training turns it off and wrote that into final/
    assert not any("lora" in k for k in _safetensor_keys(out / "final" / "model.safetensors"))  # merged

    # ctxext eval --model DIR/final: the exported checkpoint, with the rope of its own config, scores what the
    # trained model scored in its last evaluation
    from ctxext.evals import run_eval

    ev = run_eval(str(out / "final"), ["default"], ["ppl"], [512], samples=1, data=list(books(HELD_OUT_BOOK)),
                  out=tmp_path / "eval-final", progress=False, log=lambda m: None)
    overall = [r["value"] for r in ev["records"] if r["bucket"] is None]
    trained = [r["value"] for r in recs if r["model"] == f"{MODEL}@step4" and r["task"] == "ppl" and r["bucket"] is None]
    assert overall == pytest.approx(trained, rel=1e-4)


def _safetensor_keys(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


@pytest.mark.slow
@pytest.mark.parametrize("extra,sig", [({}, signal.SIGINT), ({"lora": True, "mixed_window": True}, signal.SIGTERM)],
                         ids=["full-ctrl-c", "lora-mixed-sigterm"])
def test_interrupt_then_resume_reproduces_the_uninterrupted_loss_curve(tmp_path, extra, sig):
    full = small(tmp_path, out=str(tmp_path / "full"), **extra)
    train(full, progress=False)

    def ctrl_c_at_3(rec):
        if rec["step"] == 3:
            os.kill(os.getpid(), sig)  # a user's Ctrl-C or a scheduler's SIGTERM: finish the step, checkpoint, stop

    part = small(tmp_path, out=str(tmp_path / "part"), **extra)
    with pytest.raises(KeyboardInterrupt):
        train(part, on_step=ctrl_c_at_3, progress=False)
    progress = json.loads((tmp_path / "part" / "checkpoint" / "progress.json").read_text())
    assert progress["step"] == 3 and progress["rows_consumed"] == 6
    assert not (tmp_path / "part" / "final").exists()
    train(small(tmp_path, out=str(tmp_path / "part"), resume=True, **extra), progress=False)
    a, b = history(tmp_path / "full"), history(tmp_path / "part")
    assert len(a) == len(b) == 6
    assert b == pytest.approx(a, rel=1e-6, abs=0)


def test_refusals_before_any_weights(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(CtxextError, match="exists and is not empty"):
        train(small(tmp_path, out=str(tmp_path / "busy")), progress=False)
    with pytest.raises(CtxextError, match="cannot export 'dynamic-yarn"):
        train(small(tmp_path, scaling="dynamic-yarn"), progress=False)
    with pytest.raises(CtxextError, match="not longer than the original window"):
        train(small(tmp_path, mixed_window=True, seq_len=256, batch_tokens=512), progress=False)
    with pytest.raises(CtxextError, match="data path not found"):
        train(small(tmp_path, data=(str(tmp_path / "missing.txt"),)), progress=False)
    assert main(["train", "--model", MODEL, "--scaling", "yarn:factor=2", "--data", "x", "--seq-len", "512",
                 "--steps", "2", "--batch-tokens", "700", "--out", str(tmp_path / "o")]) == 2


def test_resume_refuses_other_settings(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    cfg = small(tmp_path)
    (out / "checkpoint" / "progress.json").write_text(json.dumps({"step": 1, "config": {**cfg.to_dict(),
                                                                                       "lr": 5e-4}}))
    with pytest.raises(CtxextError, match=r"other settings \(lr 0.0005 -> 0.001\)"):
        train(small(tmp_path, resume=True), progress=False)
    (out / "checkpoint" / "progress.json").write_text(json.dumps({"step": 1, "config": {**cfg.to_dict(),
                                                                                       "grad_clip": 0.5}}))
    with pytest.raises(CtxextError, match=r"other settings \(grad_clip 0.5 -> 1.0\)"):  # was accepted silently
        train(small(tmp_path, resume=True), progress=False)
    with pytest.raises(CtxextError, match="holds a checkpoint; pass --resume"):
        train(cfg, progress=False)


def test_resume_compares_what_the_options_resolve_to(tmp_path):
    """A spec file rewritten between the kill and the resume (trained yarn, then linear, exported as linear) and a
    data folder that gained a book (another row order from the resume on) were accepted: only the options as typed
    were compared. The same run spelled with its defaults (lr, one row per process) was refused."""
    import shutil

    spec, data = tmp_path / "spec.json", tmp_path / "data"
    spec.write_text(json.dumps({"method": "yarn", "params": {"factor": 2}}))
    data.mkdir()
    shutil.copy(books(TRAIN_BOOKS[2])[0], data)
    cfg = dict(scaling=str(spec), data=(str(data),), steps=2, lr=None, batch_tokens=None)
    train(small(tmp_path, **cfg), progress=False)

    spec.write_text(json.dumps({"method": "linear", "params": {"factor": 2}}))
    with pytest.raises(CtxextError, match=r"other settings \(the scaling spec resolves to "
                                          r'\{"method":"yarn".* -> \{"method":"linear"'):
        train(small(tmp_path, **cfg, resume=True), progress=False)
    spec.write_text(json.dumps({"method": "yarn", "params": {"factor": 2.0}}))  # the same spec, written otherwise
    shutil.copy(books(TRAIN_BOOKS[1])[0], data)
    with pytest.raises(CtxextError, match=r"data files \(names and sizes\) differ: 1 new or changed"):
        train(small(tmp_path, **cfg, resume=True), progress=False)
    (data / Path(books(TRAIN_BOOKS[1])[0]).name).unlink()
    spec.write_text(json.dumps({"method": "yarn", "params": {"factor": 2}, "meta": {"search": {"fitness": 1.5}}}))
    res = train(small(tmp_path, **{**cfg, "lr": 2e-5, "batch_tokens": 512}, resume=True), progress=False)
    assert res["steps_done"] == 2  # the defaults spelled out, a spec file with new provenance: the same run


def test_eval_data_shorter_than_the_sequence_fails_before_any_step(tmp_path, monkeypatch):
    """It failed after the step-0 passkey evaluation, with ppl's message naming --lengths (train has no such flag)."""
    import ctxext.train.loop as loop

    short = tmp_path / "short.txt"
    short.write_text("A few sentences only. Far fewer than the sequence needs. " * 5)
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: pytest.fail("evaluated before the eval data was checked"))
    with pytest.raises(CtxextError, match=r"--eval-data: no document holds --seq-len 512 tokens \(the longest has "
                                          r"\d+\); give longer documents or leave --eval-data out"):
        train(small(tmp_path, evaluate=True, eval_data=(str(short),)), progress=False)


def test_fewer_eval_documents_than_asked_are_said_before_any_step(tmp_path, capsys, monkeypatch):
    """--eval-docs 2 with one book: the ppl evaluation averaged one document and said nothing (its log is muted)."""
    import ctxext.train.loop as loop

    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: [])
    with pytest.raises(KeyboardInterrupt):  # stop at once: only the start's message matters
        train(small(tmp_path, evaluate=True, eval_data=(str(books_dir() / HELD_OUT_BOOK),), eval_docs=2,
                    steps=1), on_step=lambda rec: (_ for _ in ()).throw(KeyboardInterrupt), progress=False)
    assert ("--eval-data: 1 document(s) hold --seq-len 512 tokens, of the --eval-docs 2 asked; the perplexity "
            "evaluation averages those") in capsys.readouterr().err


def test_a_run_that_failed_before_its_first_checkpoint_says_how_to_retry(tmp_path):
    """A run that stopped early (nan loss, a bad --eval-data) leaves spec.json and eval/ behind; the corrected retry
    was told '--out exists and is not empty; choose another folder', though --resume starts it over there."""
    out = tmp_path / "run"
    (out / "eval" / "step-000000").mkdir(parents=True)
    (out / "spec.json").write_text("{}")
    with pytest.raises(CtxextError, match="holds a run that stopped before its first checkpoint; pass --resume to "
                                          r"start it over there \(from step 0\)"):
        train(small(tmp_path), progress=False)


def test_a_run_inside_the_trained_window_is_warned(tmp_path, capsys):
    """yarn:factor=2 trained at 256 tokens on a 256-token model trains no new position, yet exports 512."""
    train(small(tmp_path, seq_len=256, batch_tokens=256, steps=1, warmup=0), progress=False)
    assert ("warning: --seq-len 256 is within the model's trained length 256: no position past it is trained, "
            "though the checkpoint will say 512") in capsys.readouterr().err
    train(small(tmp_path, steps=1, warmup=0, out=str(tmp_path / "b")), progress=False)
    assert "within the model's trained length" not in capsys.readouterr().err
    train(small(tmp_path, scaling="abf:base=40000", seq_len=256, batch_tokens=256, steps=1, warmup=0,
                out=str(tmp_path / "c")), progress=False)  # its checkpoint says 256: nothing overstated
    assert "within the model's trained length" not in capsys.readouterr().err


def test_processes_wait_for_rank_0_longer_than_nccls_ten_minutes(monkeypatch):
    """Rank 0 alone evaluates and exports while the others wait at a barrier; torch's NCCL default (10 min) would
    kill a 64k run during its step-0 evaluation (~100 passkey trials of ~10 s on an H200)."""
    import accelerate

    from ctxext.train import loop

    seen = {}

    class Spy:
        def __init__(self, **kw):
            seen.update(kw)
            raise SystemExit  # the handlers are what this test reads

    monkeypatch.setattr(accelerate, "Accelerator", Spy)
    with pytest.raises(SystemExit):
        loop.make_accelerator()
    assert seen["kwargs_handlers"][0].timeout.total_seconds() == 180 * 60
    monkeypatch.setenv("CTXEXT_DIST_TIMEOUT_MINUTES", "30")
    with pytest.raises(SystemExit):
        loop.make_accelerator()
    assert seen["kwargs_handlers"][0].timeout.total_seconds() == 30 * 60
    monkeypatch.setenv("CTXEXT_DIST_TIMEOUT_MINUTES", "soon")
    with pytest.raises(CtxextError, match="CTXEXT_DIST_TIMEOUT_MINUTES must be a positive number"):
        loop.make_accelerator()


def test_the_evaluations_are_costed_before_training_and_show_a_bar(tmp_path, capsys):
    """They ran silently (no bar, no estimate) and can cost more than the training: at 32k on SmolLM2 one passkey
    evaluation is hours on this CPU. The start-up line states ctxext eval's own estimate for one of them."""
    from ctxext.evals.cost import fmt_seconds
    from ctxext.evals.runner import run_eval
    from ctxext.train.evaluate import PASSKEY_DEPTHS, evaluation_steps

    cfg = small(tmp_path, steps=3, evaluate=True, eval_every=2, passkey_trials=1)
    assert evaluation_steps(cfg) == [0, 2, 3] and evaluation_steps(small(tmp_path, steps=3)) == [0, 3]
    train(cfg, progress=True)
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("evaluation (passkey 5 depths × 1 trials at 512 "))
    assert "each on this machine, 3 of them (steps 0, 2, 3)" in line
    want = run_eval(MODEL, [cfg.scaling], ["passkey"], [512], depths=PASSKEY_DEPTHS, samples=1, out=tmp_path / "x",
                    dry_run=True, progress=False, log=lambda m: None)["estimated_seconds"]
    assert f"≈ {fmt_seconds(want)} each" in line  # the same machine rates (cached for an hour)
    assert "yarn:factor=2 · passkey" in err  # ctxext eval's own bar, per evaluation


def test_resume_with_another_lr_or_batch_is_refused_in_one_line(tmp_path):
    """Both crashed with a TypeError: every message was built, the data-files one from the lr's number."""
    train(small(tmp_path, steps=2), progress=False)
    with pytest.raises(CtxextError, match=r"other settings \(lr \(peak_lr\) 0\.001 -> 0\.002\)"):
        train(small(tmp_path, steps=2, lr=2e-3, resume=True), progress=False)
    with pytest.raises(CtxextError, match=r"other settings \(batch_tokens \(tokens_per_step\) 1024 -> 2048\)"):
        train(small(tmp_path, steps=2, batch_tokens=2048, resume=True), progress=False)


def test_resume_of_a_finished_run_has_nothing_to_do(tmp_path, capsys):
    """Its checkpoint was saved before the final evaluation and export: every --resume dropped the last evaluation as
    one the checkpoint did not hold, ran it again and exported again."""
    out = tmp_path / "run"
    first = train(small(tmp_path, steps=2, evaluate=True, passkey_trials=1), progress=False)
    times = {p: p.stat().st_mtime_ns for p in (out / "eval").rglob("*") if p.is_file()}
    times |= {p: p.stat().st_mtime_ns for p in (out / "final").iterdir()}
    capsys.readouterr()
    again = train(small(tmp_path, steps=2, evaluate=True, passkey_trials=1, resume=True), progress=False)
    err = capsys.readouterr().err
    assert "holds a finished run (step 2 of 2, evaluated, exported to" in err and "dropped" not in err
    assert {p: p.stat().st_mtime_ns for p in times} == times
    assert again["export_verification"] == first["export_verification"] and again["steps_done"] == 2
