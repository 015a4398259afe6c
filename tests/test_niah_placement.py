"""NIAH places each needle at its depth: at the nearest sentence start when one is close (2 % of the haystack
+ 32 tokens), else at the depth itself, said in the log; the haystack loses at most that much at its end.
CJK sentence ends count."""

from __future__ import annotations

import numpy as np
import pytest

from ctxext.data import Document, load_documents
from ctxext.evals.cost import ModelCost
from ctxext.evals.needles import sentence_starts
from ctxext.evals.niah import build, snap_tolerance
from ctxext.evals.tasks import Settings, TaskContext
from ctxext.fixtures import HELD_OUT_BOOK, books_dir
from ctxext.models import load_model

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-rope")


def _build(lm, tokens, length, logs):
    ctx = TaskContext(lm=lm, spec=None, settings=Settings(samples=1), docs=[Document("d", tokens)], out=None,
                      cost=ModelCost.of(lm.info, 4), same_freqs=lambda a, b: True, log=logs.append)
    return build(ctx, length, [(length, d) for d in DEPTHS])


def test_book_text_snaps_to_sentence_starts_near_the_depth(tiny):
    ids = load_documents([books_dir() / HELD_OUT_BOOK], tiny.tokenizer)[0].tokens[5000:]
    logs: list[str] = []
    base, probes, _ = _build(tiny, ids, 1024, logs)
    hay = len(base)
    starts = set(sentence_starts(tiny.tokenizer, base).tolist())
    tol = snap_tolerance(1024)
    for p, d in zip(probes, DEPTHS):
        assert abs(p.at - d * hay) <= tol + 1
        assert p.at in starts or p.at in (0, hay)
    n_hay = 1024 - max(p.extra() for p in probes)  # what the prompt leaves for the haystack
    assert n_hay - tol <= hay <= n_hay and not logs


def test_text_without_sentence_ends_keeps_every_depth_and_its_length(tiny):
    words = tiny.tokenizer(" and so on" * 400, add_special_tokens=False)["input_ids"]
    ids = np.asarray(words + tiny.tokenizer(". The end.", add_special_tokens=False)["input_ids"] * 3)
    logs: list[str] = []
    base, probes, _ = _build(tiny, ids, 1024, logs)
    hay = len(base)
    assert hay == 1024 - max(p.extra() for p in probes)  # whole: not cut back to the early sentence ends
    assert [round(p.at / hay, 2) for p in probes] == list(DEPTHS)
    assert len(logs) == 1 and "no sentence end within" in logs[0] and "0.25, 0.5, 0.75" in logs[0]


@pytest.mark.parametrize("name", ["tiny-rope", "smollm2-135m"])
def test_cjk_sentence_ends_are_sentence_starts(name, tiny):
    """。！？ end sentences without a space after them, also where a byte-level vocabulary splits them over tokens
    (every CJK character in the fixtures' 2,048-entry vocabulary; ！ and ？ in SmolLM2's)."""
    tok = tiny.tokenizer if name == "tiny-rope" else load_model(name).tokenizer
    text = "他走了很远的路。天黑了！她问：你在哪里？" * 3
    ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"])
    starts = sentence_starts(tok, ids)
    decoded = [tok.decode(ids[:s].tolist()) for s in starts[1:-1]]
    assert len(decoded) == 8 and all(t.endswith(("。", "！", "？")) for t in decoded)


@pytest.mark.parametrize("name", ["tiny-rope", "smollm2-135m"])
def test_a_cjk_sentence_ends_after_its_closing_quote(name, tiny):
    tok = tiny.tokenizer if name == "tiny-rope" else load_model(name).tokenizer
    ids = np.asarray(tok("他说：「你好。」然后走了。她笑了。", add_special_tokens=False)["input_ids"])
    starts = sentence_starts(tok, ids)
    assert [tok.decode(ids[a:b].tolist()) for a, b in zip(starts[:-1], starts[1:])] == \
        ["他说：「你好。」", "然后走了。", "她笑了。"]


@pytest.mark.parametrize("task", ["passkey", "niah"])
def test_a_resumed_sweep_builds_the_prompts_of_an_uninterrupted_one(tiny, monkeypatch, task):
    """The haystack was sized from the pending cells' keys only: with keys that tokenize to different lengths (BPE
    that merges digits), depth 0.1 resumed alone got a longer haystack than in the full sweep. Here depth 0.9's keys
    are longer; depth 0.1's prompt must be the same either way."""
    import importlib

    mod = importlib.import_module(f"ctxext.evals.{task}")
    real = mod.random_number
    monkeypatch.setattr(mod, "random_number", lambda rng, digits: real(rng, digits) * (4 if flag["long"] else 1))
    flag = {"long": False}
    real_rng = mod.key_rng

    def key_rng(seed, name, length, depth, trial):  # depth 0.9 draws the long keys
        flag["long"] = depth == 0.9
        return real_rng(seed, name, length, depth, trial)

    monkeypatch.setattr(mod, "key_rng", key_rng)
    ids = load_documents([books_dir() / HELD_OUT_BOOK], tiny.tokenizer)[0].tokens[5000:]
    ctx = TaskContext(lm=tiny, spec=None, settings=Settings(samples=2), docs=[Document("d", ids)], out=None,
                      cost=ModelCost.of(tiny.info, 4), same_freqs=lambda a, b: True, log=lambda m: None,
                      depths=[0.1, 0.9])
    full_base, full_probes, owners = mod.build(ctx, 512, [(512, 0.1), (512, 0.9)])
    alone_base, alone_probes, _ = mod.build(ctx, 512, [(512, 0.1)])
    assert np.array_equal(full_base, alone_base)
    first = [p.prompt(full_base).tolist() for p, c in zip(full_probes, owners) if c == (512, 0.1)]
    assert first == [p.prompt(alone_base).tolist() for p in alone_probes]


def test_the_runner_gives_the_tasks_every_depth_of_the_run(tmp_path, monkeypatch):
    """The haystack sizing reads ctx.depths: the runner must pass the run's depths (it once raised NameError)."""
    import ctxext.evals.passkey as passkey
    from ctxext.evals.runner import run_eval

    seen, real = [], passkey.build
    monkeypatch.setattr(passkey, "build", lambda ctx, length, cells: seen.append(list(ctx.depths)) or
                        real(ctx, length, cells))
    run_eval("tiny-rope", ["default"], ["passkey"], [300], depths=[0.9, 0.1], samples=1, out=tmp_path / "o",
             progress=False, log=lambda m: None)
    assert seen == [[0.1, 0.9]]
