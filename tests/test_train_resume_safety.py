"""Checkpoints survive a process killed mid-save, --resume says what it continues (or refuses), the DeepSpeed
branch keeps the lr schedule, and the data position survives a change in the number of processes."""

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from ctxext.errors import CtxextError
from ctxext.fixtures import TRAIN_BOOKS, books_dir
from ctxext.train import TrainConfig, checkpoint as ckpt, loop
from ctxext.train.optim import make_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")


def small(tmp_path: Path, **kw) -> TrainConfig:
    """test_train_run's tiny-rope run: 2 rows of 512 tokens per step."""
    base = dict(model="tiny-rope", scaling="yarn:factor=2", data=(str(books_dir() / TRAIN_BOOKS[2]),), seq_len=512,
                steps=6, lr=1e-3, batch_tokens=1024, warmup=2, evaluate=False, grad_checkpointing=False,
                out=str(tmp_path / "run"))
    return TrainConfig(**{**base, **kw})


class StubAccelerator:
    """One process; `save_state` / `load_state` stand in for DeepSpeed's engine checkpoint."""

    is_main_process, process_index, num_processes = True, 0, 1

    def __init__(self, kind=DistributedType.NO):
        self.distributed_type = kind
        self.loaded: list[str] = []

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        Path(path).mkdir(parents=True)
        (Path(path) / "engine.txt").write_text("weights and optimizer")

    def load_state(self, path):
        assert (Path(path) / "engine.txt").is_file()
        self.loaded.append(path)


def _parts(steps_taken=0):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = make_scheduler(opt, 10, 2, "cosine", 0.1)
    for _ in range(steps_taken):
        model(torch.ones(1, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return model, opt, sched


class Killed(Exception):
    """The process dying at this point."""


def _save_killed_at(monkeypatch, n, *args):
    """Run `ckpt.save`, dying just before its n-th rename or delete; -> whether it died."""
    calls = {"n": 0}
    real_replace, real_rmtree = os.replace, ckpt.shutil.rmtree

    def counted(real):
        def f(*a, **kw):
            calls["n"] += 1
            if calls["n"] == n:
                raise Killed
            return real(*a, **kw)
        return f

    monkeypatch.setattr(ckpt.os, "replace", counted(real_replace))
    monkeypatch.setattr(ckpt.shutil, "rmtree", counted(real_rmtree))
    try:
        ckpt.save(*args)
        died = False
    except Killed:
        died = True
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    return died


def test_a_save_killed_anywhere_leaves_a_complete_checkpoint(tmp_path, monkeypatch):
    acc = StubAccelerator()
    model, opt, sched = _parts(1)
    weights = {1: model.weight.detach().clone()}
    n = 0
    while True:
        n += 1
        out = tmp_path / f"kill-{n}"
        ckpt.save(out, acc, model, opt, sched, {"step": 1})
        model.weight.data += 1  # what step 2 would have changed
        weights[2] = model.weight.detach().clone()
        died = _save_killed_at(monkeypatch, n, out, acc, model, opt, sched, {"step": 2})
        found = ckpt.find(out)
        assert found is not None, f"no complete checkpoint after a kill at operation {n}"
        step = ckpt.read_progress(out)["step"]
        fresh, fresh_opt, fresh_sched = _parts()
        assert ckpt.load(out, acc, fresh, fresh_opt, fresh_sched)["step"] == step
        torch.testing.assert_close(fresh.weight, weights[step], rtol=0, atol=0)
        assert fresh_sched.last_epoch == 1  # the schedule is restored too (both saves are at scheduler step 1)
        ckpt.save(out, acc, model, opt, sched, {"step": 3})  # the next save tidies up what the killed one left
        assert sorted(p.name for p in out.iterdir()) == ["checkpoint"]
        assert ckpt.read_progress(out)["step"] == 3
        model.weight.data.copy_(weights[1])
        if not died:
            break
    assert n >= 4  # the kill points covered: before / after each rename and delete of the save


def test_progress_json_is_written_last(tmp_path, monkeypatch):
    """A finished .checkpoint.tmp is recognised by its progress.json: nothing may be written after it."""
    acc = StubAccelerator()
    model, opt, sched = _parts(1)
    written = []
    real_save = torch.save

    def spy(obj, f, *a, **kw):
        written.append(Path(f).name)
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", spy)
    real_replace = os.replace
    monkeypatch.setattr(ckpt.os, "replace", lambda a, b: (written.append(Path(b).name), real_replace(a, b)))
    ckpt.save(tmp_path, acc, model, opt, sched, {"step": 1})
    assert written[:3] == ["state.pt", "rng-0.pt", "progress.json"]


def test_deepspeed_branch_saves_and_restores_the_scheduler(tmp_path):
    acc = StubAccelerator(DistributedType.DEEPSPEED)
    model, opt, sched = _parts(5)
    where = ckpt.save(tmp_path, acc, model, opt, sched, {"step": 5})
    assert (where / "scheduler.pt").is_file() and (where / "deepspeed" / "engine.txt").is_file()
    _, opt2, sched2 = _parts()
    assert ckpt.load(tmp_path, acc, model, opt2, sched2)["step"] == 5
    assert acc.loaded == [str(where / "deepspeed")]
    assert sched2.last_epoch == 5 and sched2.get_last_lr() == pytest.approx(sched.get_last_lr(), rel=1e-12)
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr(), rel=1e-12)

    (where / "scheduler.pt").unlink()  # a DeepSpeed checkpoint from before scheduler.pt: advanced to its step
    _, opt3, sched3 = _parts()
    ckpt.load(tmp_path, acc, model, opt3, sched3)
    assert sched3.last_epoch == 5


def test_plain_checkpoint_layout_is_unchanged(tmp_path):
    model, opt, sched = _parts(1)
    where = ckpt.save(tmp_path, StubAccelerator(), model, opt, sched, {"step": 1})
    assert sorted(p.name for p in where.iterdir()) == ["progress.json", "rng-0.pt", "state.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


@pytest.fixture
def no_weights(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(loop, "build_model", refuse)
    monkeypatch.setattr(loop, "load_rows", refuse)


def test_resume_without_a_complete_checkpoint_starts_at_step_0_and_says_so(tmp_path, no_weights, capsys):
    """One command serves every restart: a run killed before (or during) its first save resumes from step 0."""
    out = tmp_path / "run"
    (out / ".checkpoint.tmp").mkdir(parents=True)  # the first save, killed before its progress.json
    (out / ".checkpoint.tmp" / "state.pt").write_bytes(b"")
    (out / "spec.json").write_text("{}")
    with pytest.raises(AssertionError, match="weights were loaded"):
        loop.train(small(tmp_path, resume=True), progress=False)
    assert f"--resume: no complete checkpoint in {out} (unfinished: .checkpoint.tmp), starting from step 0" \
        in capsys.readouterr().err


def test_mixed_window_length_refused_before_weights(tmp_path, no_weights):
    with pytest.raises(CtxextError, match="--seq-len 640 must be a multiple of 256"):
        loop.train(small(tmp_path, mixed_window=True, seq_len=640, batch_tokens=1280), progress=False)


def test_warmup_covering_the_run_is_said_before_weights(tmp_path, no_weights, capsys):
    with pytest.raises(AssertionError, match="weights were loaded"):  # a warning, not a refusal
        loop.train(small(tmp_path, steps=4, warmup=6), progress=False)
    assert "warning: --warmup 6 is not below --steps 4: the lr rises to 0.000667 (--lr 0.001) at the last step " \
           "and never decays" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_a_kill_between_the_renames(tmp_path, monkeypatch, capsys):
    cfg = dict(steps=6, save_every=2)
    real_replace, renames = os.replace, {"n": 0}

    def dying(a, b):
        if Path(b).name == "checkpoint":
            renames["n"] += 1
            if renames["n"] == 2:  # the save at step 4, with the new checkpoint finished and the old moved aside
                raise Killed
        return real_replace(a, b)

    monkeypatch.setattr(ckpt.os, "replace", dying)
    with pytest.raises(Killed):
        loop.train(small(tmp_path, **cfg), progress=False)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    out = tmp_path / "run"
    assert not (out / "checkpoint").exists() and ckpt.read_progress(out)["step"] == 4
    capsys.readouterr()
    ran = []
    loop.train(small(tmp_path, resume=True, **cfg), on_step=lambda r: ran.append(r["step"]), progress=False)
    assert ran == [5, 6]
    assert f"resumed from step 4, row 8 of the data order, from {out / '.checkpoint.tmp'}" in capsys.readouterr().err
    assert [h["step"] for h in json.loads((out / "results.json").read_text())["training"]["history"]] == \
        [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint"]


@pytest.mark.slow
def test_resume_continues_the_data_order_where_the_other_world_left_it(tmp_path, monkeypatch):
    """Without --batch-tokens a step takes one row per process: 2 steps on 2 processes consume 4 rows. Resumed on
    one process, the next rows are 4 and 5 (not 2 and 3), and the tokens count the rows really consumed."""
    cfg = dict(batch_tokens=None, steps=4)

    def stop_at_2(rec):
        if rec["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        loop.train(small(tmp_path, **cfg), on_step=stop_at_2, progress=False)
    f = tmp_path / "run" / "checkpoint" / "progress.json"
    progress = json.loads(f.read_text())
    assert progress["rows_consumed"] == 2
    f.write_text(json.dumps({**progress, "rows_consumed": 4}))  # as a run on 2 processes would have written

    starts = []

    class Recording(loop.RowOrder):
        def rows(self, start, n):
            starts.append((start, n))
            return super().rows(start, n)

    monkeypatch.setattr(loop, "RowOrder", Recording)
    res = loop.train(small(tmp_path, resume=True, **cfg), progress=False)
    assert starts == [(4, 1), (5, 1)]
    assert res["tokens"] == 6 * 512
    t = json.loads((tmp_path / "run" / "results.json").read_text())["training"]
    assert [h["tokens"] for h in t["history"]] == [512, 1024, 5 * 512, 6 * 512]
    assert json.loads(f.read_text())["rows_consumed"] == 6


@pytest.mark.slow
def test_resume_on_two_processes_continues_the_rows_of_one(tmp_path):
    """The real case behind the test above: 3 steps on one process (rows 0-2), resumed under accelerate launch on
    two (DDP on CPU), which take rows 3-8 in their 3 steps."""
    import subprocess
    import sys

    cfg = small(tmp_path, scaling="linear:factor=2", batch_tokens=None)

    def stop_at_3(rec):
        if rec["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, on_step=stop_at_3, progress=False)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(root / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
         "-m", "ctxext.cli", "train", "--model", cfg.model, "--scaling", cfg.scaling, "--data", cfg.data[0],
         "--seq-len", "512", "--steps", "6", "--lr", "1e-3", "--warmup", "2", "--no-eval", "--no-progress",
         "--no-grad-checkpointing", "--out", cfg.out, "--resume"],
        env=env, capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from step 3, row 3 of the data order" in proc.stderr
    progress = json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())
    assert progress["step"] == 6 and progress["rows_consumed"] == 3 + 3 * 2
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["meta"]["processes"] == 2 and res["training"]["summary"]["tokens"] == 9 * 512
    assert [h["tokens"] for h in res["training"]["history"]] == [512 * r for r in (1, 2, 3, 5, 7, 9)]


def test_length_dependent_specs_refuse_flash_attention_before_weights(tmp_path, no_weights, monkeypatch):
    """Their attention plans run SDPA without the layer's mask under flash: packed documents would see each other."""
    import ctxext.train.config as config

    monkeypatch.setattr(config, "_has_flash_attn", lambda: True)
    with pytest.raises(CtxextError, match="'dynamic-ntk' trains with --attn sdpa or eager, not flash_attention_2"):
        loop.train(small(tmp_path, scaling="dynamic-ntk:factor=4", attn="flash_attention_2"), progress=False)


def test_an_evaluation_due_at_a_saved_step_runs_after_resume(tmp_path, monkeypatch):
    """With --eval-every and --save-every on the same step the checkpoint is written first: a kill during that
    evaluation resumed past it, and the evaluation at that step was never run (results listed steps 0, 4 of 0, 2,
    4)."""
    real, seen = loop.evaluate, []

    def evaluate(lm, spec_arg, cfg, out, step, **kw):
        seen.append(step)
        if step == 2 and seen.count(2) == 1:
            raise KeyboardInterrupt  # killed while evaluating step 2, after its checkpoint
        return real(lm, spec_arg, cfg, out, step, **kw)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    cfg = small(tmp_path, steps=4, evaluate=True, eval_every=2, save_every=2, passkey_trials=1)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, progress=False)
    assert ckpt.read_progress(Path(cfg.out))["step"] == 2
    loop.train(small(tmp_path, steps=4, evaluate=True, eval_every=2, save_every=2, passkey_trials=1, resume=True),
               progress=False)
    res = json.loads((Path(cfg.out) / "results.json").read_text())
    assert sorted({int(r["model"].rsplit("@step", 1)[1]) for r in res["records"]}) == [0, 2, 4]
    assert seen == [0, 2, 2, 4]


def test_resuming_a_finished_run_keeps_its_measured_peak(tmp_path):
    """--resume on a run that had finished ran no step, and its summary's peak_memory_gib became the idle process's
    (0.412 -> 0.366 GiB in the review); the checkpoint now carries the peak of the steps."""
    cfg = small(tmp_path, steps=2)
    first = loop.train(cfg, progress=False)["peak_memory_gib"]
    assert ckpt.read_progress(Path(cfg.out))["peak_bytes"] > 0
    again = loop.train(small(tmp_path, steps=2, resume=True), progress=False)["peak_memory_gib"]
    assert again >= first


def test_the_training_peak_leaves_the_evaluations_out(tmp_path, monkeypatch):
    """An evaluation between steps (here a stand-in that peaks at 10 GiB) raised the reported training peak: the
    steps' peak is taken before it and measured anew after it."""
    gib = 2**30
    now = {"peak": 0}
    monkeypatch.setattr(loop, "reset_peak_memory", lambda device: now.update(peak=0))
    monkeypatch.setattr(loop, "peak_memory", lambda device: now["peak"])

    def evaluate(self, spec_arg, out, step):
        now["peak"] = max(now["peak"], 10 * gib)
        return []

    monkeypatch.setattr(loop._Host, "evaluate", evaluate)
    res = loop.train(small(tmp_path, evaluate=True, eval_every=2),
                     on_step=lambda rec: now.update(peak=max(now["peak"], rec["step"] * gib)), progress=False)
    assert res["peak_memory_gib"] == 6.0  # the sixth step's stand-in peak, not an evaluation's


def test_a_stop_asked_during_an_evaluation_saves_before_another_step(tmp_path, monkeypatch):
    """A scheduler's SIGTERM during the evaluation at step 2: the checkpoint is step 2's (the loop ran one more
    whole step first, minutes at long lengths, past a preemption grace period)."""
    real, steps = loop.evaluate, []

    def evaluate(lm, spec_arg, cfg, out, step, **kw):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-evaluation; the evaluation itself completes
        return real(lm, spec_arg, cfg, out, step, **kw)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    cfg = small(tmp_path, steps=4, evaluate=True, eval_every=2, save_every=10, passkey_trials=1)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, on_step=lambda r: steps.append(r["step"]), progress=False)
    assert steps == [1, 2] and ckpt.read_progress(Path(cfg.out))["step"] == 2


def test_resume_without_a_checkpoint_does_not_reuse_the_killed_runs_evaluations(tmp_path, monkeypatch, capsys):
    """Killed before its first checkpoint, then restarted with --resume (what the refusal asks) and another spec: the
    killed run's step-0 passkey cells (eval resumes per cell) were merged into the new run's figures."""
    real = loop.evaluate

    def evaluate(lm, spec_arg, cfg, out, step, **kw):
        if step == 2:
            raise KeyboardInterrupt  # after step 0's evaluation, before any checkpoint
        return real(lm, spec_arg, cfg, out, step, **kw)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    cfg = small(tmp_path, steps=4, eval_every=2, evaluate=True, passkey_trials=1)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, progress=False)
    assert ckpt.read_progress(Path(cfg.out)) is None and (Path(cfg.out) / "eval" / "step-000000").is_dir()
    monkeypatch.setattr(loop, "evaluate", real)
    loop.train(small(tmp_path, steps=4, eval_every=2, evaluate=True, passkey_trials=1, scaling="linear:factor=2",
                     resume=True), progress=False)
    assert "dropped the evaluation(s) of step(s) 0" in capsys.readouterr().err
    res = json.loads((Path(cfg.out) / "results.json").read_text())
    specs = {r.get("spec", r.get("scaling")) for r in res["records"]}
    assert specs == {"linear:factor=2"}, specs
