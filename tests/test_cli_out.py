"""An --out that is a file, or lies under one, is refused when the command line is parsed: plan, eval, search, train
and demo crashed on it with a traceback after loading weights (eval after computing its cells)."""

import pytest

from ctxext.cli import main

COMMANDS = {
    "plan": ["plan", "--model", "tiny-rope", "--target", "1024"],
    "eval": ["eval", "--model", "tiny-rope", "--task", "ppl", "--lengths", "256"],
    "search": ["search", "--model", "tiny-rope", "--target", "512"],
    "train": ["train", "--model", "tiny-rope", "--scaling", "yarn:factor=2", "--steps", "1"],
    "demo": ["demo", "--model", "tiny-rope"],
}


@pytest.fixture
def no_weights(monkeypatch):
    import ctxext.models as models

    def boom(*a, **k):
        raise AssertionError("weights were loaded before --out was checked")

    monkeypatch.setattr(models, "load_model", boom)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("under", [False, True])
def test_an_out_that_is_a_file_is_refused_in_one_line(tmp_path, capsys, no_weights, command, under):
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    out = afile / "run" if under else afile
    with pytest.raises(SystemExit) as e:
        main([*COMMANDS[command], "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2
    want = f"{out} lies under {afile}, which is a file; choose a folder" if under else f"{afile} is a file; choose a folder"
    # one line (argparse printed its whole usage block first: 15 lines for train)
    assert err == [f"ctxext {command}: error: argument --out: {want} (see ctxext {command} --help)"]
    assert afile.read_text() == "keep me\n"


def test_a_new_folder_under_a_missing_one_is_accepted(tmp_path):
    from ctxext.commands import out_folder

    assert out_folder(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert out_folder(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_out_that_cannot_be_written_is_refused_in_one_line(tmp_path, capsys, no_weights, monkeypatch, command):
    """A read-only or immutable folder (permission bits say nothing for root): each command ended in a traceback,
    eval after computing its first cell, which was lost. A real write is tried in the nearest existing folder."""
    import tempfile

    def refuse(*a, dir=None, **k):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(SystemExit) as e:
        main([*COMMANDS[command], "--out", str(tmp_path / "ro" / "run")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ctxext {command}: error: argument --out: {tmp_path / 'ro' / 'run'}: cannot write in {tmp_path} "
        f"(Operation not permitted) (see ctxext {command} --help)"]


def test_synth_qa_out_under_a_file_and_late_file_errors_are_one_line(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SystemExit):
        main(["synth-qa", "--data", str(afile), "--out", str(afile / "qa.jsonl")])
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ctxext synth-qa: error: argument --out: {afile} is a file; choose a folder (see ctxext synth-qa --help)"]
    import ctxext.commands.plan as plan

    monkeypatch.setattr(plan, "run", lambda args: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    from ctxext.cli import build_parser  # noqa: F401  (the parser binds run at build time)

    assert main(["plan", "--model", "tiny-rope", "--target", "1024"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == ["ctxext: error: [Errno 28] No space left on device"]


def test_every_command_summary_is_whole_sentences(capsys):
    """`ctxext --help` cut eval's summary mid-sentence ('... and the loss-law')."""
    import re

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the loss-law fit, for every --scaling spec" in text
    assert not re.search(r"loss-law (plan|export|train|search)", text)
