"""`ctxext train --instruct`: encoding (the longqa prompt), loss masks (prompt loss on / off, counted), packing
(boundaries, padding, no truncation), and runs on the tiny-rope fixture (LoRA + scaling, exact resume, errors)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.evals.longqa import build_prompt
from ctxext.train import TrainConfig, train
from ctxext.train.data import IGNORE, model_inputs
from ctxext.train.instruct import encode_example, load_instruct, pack_examples


@pytest.fixture(scope="module")
def tok():
    from ctxext.models import load_model

    return load_model("tiny-rope").tokenizer


def ex(n: int, n_prompt: int, base: int = 100) -> tuple[np.ndarray, int]:
    return np.arange(base, base + n, dtype=np.int64), n_prompt


def test_pack_masks_and_boundaries():
    # three examples of 6, 5 and 7 tokens (prompt 4, 3, 5) into rows of 12: [6 + 5 + pad 1], [7 + pad 5]
    exs = [ex(6, 4, 10), ex(5, 3, 20), ex(7, 5, 30)]
    r = pack_examples(exs, 12, pad_id=0, prompt_loss=False)
    assert r.n_rows == 2 and r.n_documents == 3
    assert r.ids[0].tolist() == [10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24, 0]
    assert r.ids[1].tolist() == [30, 31, 32, 33, 34, 35, 36, 0, 0, 0, 0, 0]
    assert np.flatnonzero(r.starts[0]).tolist() == [0, 6, 11] and np.flatnonzero(r.starts[1]).tolist() == [0, 7]
    b = model_inputs(r.ids, r.starts, targets=r.targets)
    lab = b["labels"].numpy()
    # answer only: labels predict 14, 15 (from 13, 14) and 23, 24; nothing across an example or into padding
    assert lab[0].tolist() == [IGNORE] * 3 + [14, 15] + [IGNORE] * 3 + [23, 24] + [IGNORE] * 2
    assert lab[1].tolist() == [IGNORE] * 4 + [35, 36] + [IGNORE] * 6
    assert r.scored_answer_tokens == 2 + 2 + 2 == (lab != IGNORE).sum() and r.scored_prompt_tokens == 0
    assert r.filled.tolist() == [11, 7] and r.padding(np.array([0, 1])) == 1 + 5 and r.padding(np.array([1])) == 5
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 0]

    r = pack_examples(exs, 12, pad_id=0, prompt_loss=True)
    lab = model_inputs(r.ids, r.starts, targets=r.targets)["labels"].numpy()
    assert lab[0].tolist() == [11, 12, 13, 14, 15, IGNORE, 21, 22, 23, 24, IGNORE, IGNORE]
    assert lab[1].tolist() == [31, 32, 33, 34, 35, 36] + [IGNORE] * 6
    assert r.scored_prompt_tokens == 3 + 2 + 4 and r.scored_answer_tokens == 6
    assert (lab != IGNORE).sum() == 15

    # an example exactly seq_len long fills its own row, no padding; a longer one is refused, never cut
    r = pack_examples([ex(12, 8), ex(3, 1)], 12, 0, True)
    assert r.n_rows == 2 and r.starts[0].sum() == 1 and np.flatnonzero(r.starts[1]).tolist() == [0, 3]
    with pytest.raises(CtxextError, match=r"q7 has 13 tokens, more than --seq-len 12; examples are never truncated"):
        pack_examples([ex(5, 2), ex(13, 9)], 12, 0, True, names=["q1", "q7"])
    with pytest.raises(CtxextError, match="no examples"):
        pack_examples([], 12, 0, True)


def test_encoding_is_the_longqa_prompt_plus_answer(tok):
    context = "Anna met Tom at the old market. They bought three red apples."
    ids, n_prompt = encode_example(tok, context, "What did they buy?", "three red apples")
    assert ids[:n_prompt].tolist() == build_prompt(tok, context, "What did they buy?", 10_000).tolist()
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1].tolist()) == " three red apples"


def qa_file(tmp_path: Path, tok, n: int = 6, words: int = 120) -> Path:
    rng = np.random.default_rng(0)
    vocab = "Anna Tom market apples river house garden letter morning evening walked found saw gave".split()
    p = tmp_path / "qa.jsonl"
    with p.open("w") as f:
        for i in range(n):
            ctx = " ".join(rng.choice(vocab, size=words)) + f". The key is {i * 7}."
            f.write(json.dumps({"id": f"q{i}", "context": ctx, "question": "What is the key?",
                                "answers": [str(i * 7)]}) + "\n")
    return p


def test_load_instruct_packs_real_examples(tmp_path, tok):
    p = qa_file(tmp_path, tok)
    r = load_instruct([p], tok, 512, prompt_loss=False)
    lens = [len(encode_example(tok, json.loads(x)["context"], "What is the key?", json.loads(x)["answers"][0])[0])
            for x in p.read_text().splitlines()]
    rows, used = [[]], 0  # first fit in file order, as documented
    for ln in lens:
        if used + ln > 512:
            rows, used = rows + [[]], 0
        rows[-1].append(ln)
        used += ln
    assert len(rows) >= 2 and r.n_rows == len(rows) and r.n_documents == 6
    for row, st, ids in zip(rows, r.starts, r.ids):
        bounds = np.cumsum([0] + row).tolist()
        assert np.flatnonzero(st).tolist() == bounds[:-1] + ([bounds[-1]] if bounds[-1] < 512 else [])
        assert (ids[bounds[-1]:] == (tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)).all()
    lab = model_inputs(r.ids, r.starts, targets=r.targets)["labels"].numpy()
    scored = tok.decode(lab[lab != IGNORE].tolist())
    assert scored.replace(tok.eos_token, "|") == "".join(f" {i * 7}|" for i in range(6))  # answers + EOS only
    with pytest.raises(CtxextError, match="more than --seq-len 64"):
        load_instruct([p], tok, 64, prompt_loss=True)


def cfg(tmp_path: Path, qa: Path, **kw) -> TrainConfig:
    base = dict(model="tiny-rope", scaling="yarn:factor=2", data=(), instruct=(str(qa),), seq_len=512, steps=4,
                lr=1e-3, warmup=1, evaluate=False, grad_checkpointing=False, out=str(tmp_path / "run"))
    return TrainConfig(**{**base, **kw})


def history(out) -> list[float]:
    return [h["loss"] for h in json.loads((Path(out) / "results.json").read_text())["training"]["history"]]


def test_instruct_run_lora_resume_and_answer_loss(tmp_path, tok):
    qa = qa_file(tmp_path, tok, n=8, words=150)
    full = cfg(tmp_path, qa, out=str(tmp_path / "full"), lora=True)
    res = train(full, progress=False)
    assert res["steps_done"] == 4 and res["final"]
    # the rows' padding is computed like any token: the summary says how much, and the rate without it
    t = json.loads((tmp_path / "full" / "results.json").read_text())["training"]
    pads = [h["step_padding"] for h in t["history"]]
    assert all(0 <= p < h["step_tokens"] for p, h in zip(pads, t["history"])) and sum(pads) > 0
    assert res["padding_fraction"] == pytest.approx(sum(pads) / sum(h["step_tokens"] for h in t["history"]), abs=1e-4)
    assert res["tokens_per_second_without_padding"] == pytest.approx(
        res["tokens_per_second"] * (1 - sum(pads[1:]) / sum(h["step_tokens"] for h in t["history"][1:])), rel=1e-6)
    assert "- padding fraction:" in (tmp_path / "full" / "summary.md").read_text()
    meta = json.loads((tmp_path / "full" / "results.json").read_text())["meta"]
    assert meta["rows"]["instruct_examples"] == 8 and meta["rows"]["scored_prompt_tokens"] > 0

    def stop_at_2(rec):
        if rec["step"] == 2:
            os.kill(os.getpid(), 2)

    part = cfg(tmp_path, qa, out=str(tmp_path / "part"), lora=True)
    with pytest.raises(KeyboardInterrupt):
        train(part, on_step=stop_at_2, progress=False)
    with pytest.raises(CtxextError, match=r"prompt_loss True -> False"):
        train(cfg(tmp_path, qa, out=str(tmp_path / "part"), lora=True, resume=True, prompt_loss=False),
              progress=False)
    train(cfg(tmp_path, qa, out=str(tmp_path / "part"), lora=True, resume=True), progress=False)
    assert history(tmp_path / "part") == pytest.approx(history(tmp_path / "full"), rel=1e-6, abs=0)

    # answer-only loss: a different (per-token mean over answer tokens) loss on the same rows
    ans = train(cfg(tmp_path, qa, out=str(tmp_path / "ans"), prompt_loss=False, steps=1), progress=False)
    meta = json.loads((tmp_path / "ans" / "results.json").read_text())["meta"]
    assert meta["rows"]["scored_prompt_tokens"] == 0 and ans["final_loss"] != history(tmp_path / "full")[0]


def test_cli_errors_before_weights(tmp_path, tok, capsys):
    qa = qa_file(tmp_path, tok, n=2)
    common = ["train", "--model", "tiny-rope", "--scaling", "yarn:factor=2", "--seq-len", "512", "--steps", "2",
              "--no-progress", "--no-eval"]
    for args, msg in [
        ([], "give --data"),
        (["--instruct", str(qa), "--data", str(qa)], "exactly one"),
        (["--instruct", str(qa), "--mixed-window"], "--mixed-window cannot be used with --instruct"),
        (["--instruct", str(tmp_path / "none.jsonl")], "not found"),
        # options that act only with another flag were accepted and did nothing
        (["--data", str(qa), "--answer-loss-only"], "--answer-loss-only acts only with --instruct; add --instruct or "
                                                    "drop --answer-loss-only"),
        (["--data", str(qa), "--short-fraction", "0.3"], "--short-fraction acts only with --mixed-window"),
        (["--data", str(qa), "--lora-rank", "4"], "--lora-rank acts only with --lora; add --lora or drop --lora-rank"),
        (["--data", str(qa), "--lora-alpha", "8"], "--lora-alpha acts only with --lora"),
        (["--data", str(qa), "--lora-targets", "q_proj"], "--lora-targets acts only with --lora"),
    ]:
        capsys.readouterr()
        assert main(common + args + ["--out", str(tmp_path / "o")]) == 2, args
        err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ctxext: error:")]
        assert len(err) == 1 and msg in err[0], (args, err)
    capsys.readouterr()
    assert main(common + ["--instruct", str(qa), "--seq-len", "64", "--out", str(tmp_path / "o2")]) == 2
    assert "more than --seq-len 64; examples are never truncated" in capsys.readouterr().err


def test_cli_dependent_options_reach_the_config():
    """--lora-rank, --lora-alpha, --lora-targets and --short-fraction default to None on the command line (so an
    orphan can be told from a default) and reach TrainConfig when given with their flag, its defaults otherwise."""
    from ctxext.cli import build_parser
    from ctxext.commands.train import config_from_args
    from ctxext.train import TrainConfig

    base = ["train", "--model", "tiny-rope", "--scaling", "yarn:factor=2", "--seq-len", "512", "--steps", "2",
            "--data", "x.txt", "--out", "o"]
    parse = build_parser("train").parse_args
    cfg = config_from_args(parse(base + ["--lora", "--lora-rank", "4", "--lora-alpha", "8", "--lora-targets",
                                         "q_proj, v_proj", "--mixed-window", "--short-fraction", "0.3"]))
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.short_fraction) == (4, 8.0, ("q_proj", "v_proj"), 0.3)
    cfg = config_from_args(parse(base + ["--lora"]))
    d = TrainConfig(model="m", scaling="s", data=("x",), seq_len=512, steps=1, out="o")
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.short_fraction) == \
           (d.lora_rank, d.lora_alpha, d.lora_targets, d.short_fraction) == (8, 16.0, ("q_proj", "k_proj", "v_proj", "o_proj"), 0.5)
