"""benchmarks/profile_train_step.py: the real `ctxext train` command runs with its optimizer steps profiled."""

import importlib.util
import sys
from pathlib import Path

import pytest

from ctxext.fixtures import TRAIN_BOOKS, books_dir

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_profile_train_step", ROOT / "benchmarks" / "profile_train_step.py")
prof = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prof)


def _train_args(out: Path, steps: int) -> list[str]:
    return ["--", "--model", "tiny-rope", "--scaling", "linear:factor=2", "--data", str(books_dir() / TRAIN_BOOKS[2]),
            "--seq-len", "256", "--steps", str(steps), "--warmup", "1", "--no-eval", "--no-progress",
            "--save-every", "1000000", "--out", str(out)]


def test_profiles_the_steps_after_warmup_and_writes_the_tables(tmp_path, monkeypatch):
    report = tmp_path / "profile.txt"
    monkeypatch.setattr(sys, "argv", ["profile_train_step.py", "--warmup", "1", "--steps-profiled", "2",
                                      "--out", str(report), *_train_args(tmp_path / "run", 4)])
    prof.main()
    text = report.read_text()
    assert text.startswith("2 optimizer steps profiled: wall ")
    assert "by self CPU time:" in text and "aten::mm" in text  # the model's matmuls ran under the profiler
    assert (tmp_path / "run" / "final" / "config.json").is_file()  # the command itself ran to its end


def test_refuses_when_no_step_falls_after_the_warmup(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["profile_train_step.py", "--warmup", "3", "--out", str(tmp_path / "p.txt"),
                                      *_train_args(tmp_path / "run", 2)])
    with pytest.raises(SystemExit, match="no step was profiled"):
        prof.main()
