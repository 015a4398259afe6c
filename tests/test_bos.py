"""Sequences start as the model saw them in training: with a tokenizer that puts BOS before text (Llama-style),
perplexity (window and sliding protocols), streaming perplexity, the search's ppl passages, the planner's
measured break and training rows all put it first; with one that puts nothing (SmolLM2, the fixtures) the tokens
are the document's own."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tokenizers import processors

from ctxext.data import Document, lead, load_documents, special_prefix
from ctxext.evals import run_eval
from ctxext.evals.reach import window_nll
from ctxext.evals.scoring import token_nll
from ctxext.fixtures import HELD_OUT_BOOK, books_dir
from ctxext.models import load_model
from ctxext.search.fitness import passages
from ctxext.train.data import load_rows

pytestmark = pytest.mark.usefixtures("one_thread")

BOS = 0  # the fixtures' <|endoftext|>


@pytest.fixture(scope="module")
def bos_dir(tmp_path_factory):
    """tiny-rope saved with a tokenizer that puts <|endoftext|> before every text."""
    lm = load_model("tiny-rope")
    tok = lm.tokenizer
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", BOS)])
    d = tmp_path_factory.mktemp("bos-model")
    lm.model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bos_lm(bos_dir):
    return load_model(str(bos_dir))


@pytest.fixture(scope="module")
def book_part(tmp_path_factory):
    text = (books_dir() / HELD_OUT_BOOK).read_text(encoding="utf-8")[20000:32000]
    p = tmp_path_factory.mktemp("bos-data") / "part.txt"
    p.write_text(text, encoding="utf-8")
    return p


def test_prefix_is_bos_only_where_the_tokenizer_adds_it(bos_lm):
    assert special_prefix(bos_lm.tokenizer).tolist() == [BOS]
    assert special_prefix(load_model("tiny-rope").tokenizer).tolist() == []
    toks = np.arange(5, dtype=np.int32)
    assert lead(np.zeros(0, np.int64), toks) is toks
    assert lead(np.array([BOS]), toks, 4).tolist() == [BOS, 0, 1, 2]


def test_window_and_sliding_ppl_read_bos_first(bos_lm, bos_dir, book_part, tmp_path):
    ids = load_documents([book_part], bos_lm.tokenizer)[0].tokens
    res = run_eval(str(bos_dir), ["default"], ["ppl"], [256], samples=1, data=[book_part], out=tmp_path / "r",
                   progress=False, protocol="both", stride=128)
    rec = {r["metric"]: r["value"] for r in res["records"] if r["bucket"] is None}
    with torch.inference_mode():
        with_bos = token_nll(bos_lm.model, np.concatenate([[BOS], ids[:255]]))
        without = token_nll(bos_lm.model, ids[:256])
    assert rec["ppl"] == pytest.approx(math.exp(with_bos.mean()), rel=1e-6)
    assert abs(rec["ppl"] - math.exp(without.mean())) > 1e-3 * rec["ppl"]
    # sliding: the first window is the window protocol's; later windows continue the document (BOS only at its start)
    doc = np.concatenate([[BOS], ids]).astype(np.int64)
    with torch.inference_mode():
        later = token_nll(bos_lm.model, doc[128:384])
    nll = np.concatenate([with_bos, later[127:], token_nll(bos_lm.model, doc[256:512])[127:]])
    assert rec["ppl_sliding"] == pytest.approx(math.exp(nll.mean()), rel=1e-6)


def test_stream_ppl_starts_with_bos(bos_lm, bos_dir, book_part, tmp_path):
    from ctxext.evals.stream_ppl import stream_nll

    ids = load_documents([book_part], bos_lm.tokenizer)[0].tokens
    res = run_eval(str(bos_dir), ["default"], ["stream-ppl"], [600], data=[book_part], out=tmp_path / "s",
                   progress=False)
    rec = next(r for r in res["records"] if r["metric"] == "ppl" and r["bucket"] is None)
    nll, _ = stream_nll(bos_lm.model, np.concatenate([[BOS], ids[:599]]))
    assert rec["value"] == pytest.approx(math.exp(nll.mean()), rel=1e-6)


def test_search_passages_and_planner_windows_lead_with_bos(bos_lm):
    toks = np.arange(100, 130, dtype=np.int32)
    ps = passages([Document("a", toks)], 8, np.array([BOS]))
    assert [p.tolist() for p in ps[:2]] == [[BOS, *range(100, 107)], [BOS, *range(107, 114)]]
    assert len(ps) == 4 and all(len(p) == 8 for p in ps)
    assert [p.tolist() for p in passages([Document("a", toks)], 8)][0] == list(range(100, 108))
    ids = np.arange(200, 400, dtype=np.int64)
    with torch.inference_mode():
        got = window_nll(bos_lm.model, ids, 64, 2, [BOS])
        want = (token_nll(bos_lm.model, lead(np.array([BOS]), ids[:63]))
                + token_nll(bos_lm.model, lead(np.array([BOS]), ids[63:126]))) / 2
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_training_rows_put_bos_at_each_document_start(bos_lm, book_part, tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in
                                                ["one short document here.", "and a second one, also short."]))
    rows = load_rows([str(tmp_path / "a.jsonl")], bos_lm.tokenizer, 8)
    flat_ids, flat_starts = rows.ids.ravel(), rows.starts.ravel()
    assert flat_starts.sum() == 2 and (flat_ids[flat_starts] == BOS).all()
    plain = load_rows([str(tmp_path / "a.jsonl")], load_model("tiny-rope").tokenizer, 8)
    assert (plain.ids.ravel()[plain.starts.ravel()] != BOS).all()
