"""Inputs and precisions at the edges: non-finite logits (a float16 overflow) are said, never scored as answers;
a binary or UTF-16 .txt inside a --data folder is refused as it is when named; out-of-range seeds and zero trial
counts fail in one line naming the option; a dataset smaller than one step says it repeats rows."""

from __future__ import annotations

import shutil

import pytest
import torch

from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.evals import run_eval
from ctxext.fixtures import HELD_OUT_BOOK, books_dir
from ctxext.fixtures import __file__ as fixtures_init

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = dict(progress=False, log=lambda m: None)
BOOK = books_dir() / HELD_OUT_BOOK


@pytest.fixture(scope="module")
def hot(tmp_path_factory):
    """A tiny qwen2 whose MLP outputs overflow float16 (finite in float32)."""
    from pathlib import Path

    from ctxext.models.tiny import tiny_model

    path = tmp_path_factory.mktemp("hot") / "qwen2-hot"
    m = tiny_model("qwen2", vocab_size=2048)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.mlp.down_proj.weight.mul_(3e5)
    m.save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(fixtures_init).parent / "tiny-rope" / f, path / f)
    return path


def test_needle_answers_from_non_finite_logits_are_refused(hot, tmp_path):
    """They were greedy-decoded (argmax of NaN: token 0) and recorded as 0 % accuracy."""
    run_eval(str(hot), ["default"], ["passkey"], [160], depths=[0.5], samples=1, out=tmp_path / "f32", **QUIET)
    with pytest.raises(CtxextError, match=r"logits are not finite \(NaN/inf\) after a [\d,]+-token prompt: .*"
                                          r"--dtype bfloat16 or float32"):
        run_eval(str(hot), ["default"], ["passkey"], [160], depths=[0.5], samples=1, out=tmp_path / "f16",
                 dtype="float16", **QUIET)


def test_a_value_that_is_not_finite_is_said(hot, tmp_path):
    lines = []
    res = run_eval(str(hot), ["default"], ["ppl"], [160], samples=1, data=[str(BOOK)], out=tmp_path / "p",
                   dtype="float16", progress=False, log=lines.append)
    assert all(r["value"] is None for r in res["records"])
    assert any("ppl @ 160 (default):" in m and "not finite (NaN/inf) and are recorded as null" in m for m in lines)


def test_a_binary_or_utf16_txt_in_a_data_folder_is_refused(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    shutil.copy(BOOK, folder / "a.txt")
    (folder / "b.txt").write_text(BOOK.read_text()[:20000], encoding="utf-16")
    with pytest.raises(CtxextError, match=r"b\.txt is not a text file \(it holds NUL bytes"):
        run_eval("tiny-rope", ["default"], ["ppl"], [128], samples=2, data=[str(folder)], out=tmp_path / "o",
                 dry_run=True, **QUIET)


@pytest.mark.parametrize("argv,needle", [
    (["--seed", "-1"], "--seed must be in [0, 2^63), got -1"),
    (["--seed", str(2 ** 70)], f"--seed must be in [0, 2^63), got {2 ** 70}"),
    (["--passkey-trials", "0"], "--passkey-trials must be >= 1, got 0"),
    (["--eval-docs", "0"], "--eval-docs must be >= 1, got 0"),
])
def test_train_refuses_bad_counts_in_one_line_before_any_folder(tmp_path, capsys, argv, needle):
    """A negative seed crashed after the weights with a traceback and left a folder a rerun refused; zero trials were
    refused as '--samples', an option train does not have."""
    out = tmp_path / "t"
    rc = main(["train", "--model", "tiny-rope", "--scaling", "yarn:factor=2", "--data", str(BOOK), "--seq-len", "256",
               "--steps", "1", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not out.exists()


def test_synth_qa_refuses_a_negative_seed(tmp_path, capsys):
    rc = main(["synth-qa", "--model", "tiny-rope", "--data", str(BOOK), "--out", str(tmp_path / "q.jsonl"),
               "--per-doc", "1", "--min-len", "256", "--max-len", "512", "--seed", "-1"])
    assert rc == 2 and "--seed must be in [0, 2^63), got -1" in capsys.readouterr().err


def test_a_dataset_smaller_than_one_step_says_it_repeats_rows(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text(" ".join(BOOK.read_text().split()[:300]))
    rc = main(["train", "--model", "tiny-rope", "--scaling", "yarn:factor=2", "--data", str(text), "--seq-len", "64",
               "--batch-tokens", "1024", "--steps", "1", "--no-eval", "--out", str(tmp_path / "t")])
    out = capsys.readouterr()
    assert rc == 0, out.err[-500:]
    assert "fewer than the 16 of one step: each step repeats rows" in out.out + out.err
