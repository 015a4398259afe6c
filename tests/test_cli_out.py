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
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2
    want = f"{out} lies under {afile}, which is a file; choose a folder" if under else f"{afile} is a file; choose a folder"
    assert err == f"ctxext {command}: error: argument --out: {want}"
    assert afile.read_text() == "keep me\n"


def test_a_new_folder_under_a_missing_one_is_accepted(tmp_path):
    from ctxext.commands import out_folder

    assert out_folder(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert out_folder(str(tmp_path)) == str(tmp_path)
