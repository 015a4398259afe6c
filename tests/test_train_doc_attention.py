"""Per-document causal SDPA for packed training rows: the same logits and gradients as transformers' block mask."""

import copy
import json

import numpy as np
import pytest
import torch

from ctxext.train import doc_attention
from ctxext.train.data import model_inputs


def test_document_spans_follow_position_restarts():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13]])
    assert doc_attention.document_spans(pos) == [[(0, 3), (3, 5), (5, 9)], [(0, 9)]]


def _tiny_llama(kv_heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, max_position_embeddings=128, use_cache=False,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).train()


def _run(model, batch):
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_same_logits_and_gradients_as_the_block_mask_and_as_documents_alone(kv_heads):
    ref = _tiny_llama(kv_heads)
    docs = copy.deepcopy(ref)
    docs.set_attn_implementation(doc_attention.register())
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, size=(2, 48))
    starts = np.zeros((2, 48), bool)
    starts[0, [10, 33]] = True  # three documents in row 0, one in row 1
    batch = model_inputs(ids, starts)
    (l_ref, g_ref), (l_docs, g_docs) = _run(ref, batch), _run(docs, batch)
    assert torch.allclose(l_ref, l_docs, atol=1e-5)
    assert max((a - b).abs().max().item() for a, b in zip(g_ref, g_docs)) < 1e-5
    with torch.no_grad():  # and no attention crosses a boundary: each document alone gives the same logits
        for s, e in [(0, 10), (10, 33), (33, 48)]:
            alone = ref(input_ids=batch["input_ids"][:1, s:e]).logits
            assert torch.allclose(alone[0], l_docs[0, s:e], atol=1e-5)


def test_eval_and_cached_generation_take_transformers_sdpa():
    ref = _tiny_llama(2).eval()
    docs = copy.deepcopy(ref)
    docs.set_attn_implementation(doc_attention.register())
    x = torch.randint(1, 64, (1, 12))
    with torch.no_grad():
        assert torch.equal(ref(input_ids=x).logits, docs(input_ids=x).logits)
        a = ref.generate(x, max_new_tokens=6, do_sample=False, use_cache=True)
        b = docs.generate(x, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(a, b)
    with doc_attention.plain_sdpa(docs):
        assert docs.config._attn_implementation == "sdpa"
    assert docs.config._attn_implementation == doc_attention.NAME


def _packed_batch():
    rng = np.random.default_rng(1)
    starts = np.zeros((1, 40), bool)
    starts[0, [15, 28]] = True
    return model_inputs(rng.integers(1, 64, size=(1, 40)), starts)


def _count_builds(monkeypatch):
    built, made = [], []
    build, init = doc_attention.LazyMask.build, doc_attention.LazyMask.__init__
    monkeypatch.setattr(doc_attention.LazyMask, "build", lambda self: built.append(1) or build(self))
    monkeypatch.setattr(doc_attention.LazyMask, "__init__", lambda self, a, kw: made.append(1) or init(self, a, kw))
    return built, made


def test_training_forward_never_builds_the_packed_mask(monkeypatch):
    docs = _tiny_llama(2)
    docs.set_attn_implementation(doc_attention.register())
    built, made = _count_builds(monkeypatch)
    docs(**_packed_batch()).loss.backward()
    assert made == [1] and built == []  # the T×T mask was asked for once and never materialised


def test_fallback_with_gradients_builds_the_mask_once_and_matches_sdpa(monkeypatch):
    ref = _tiny_llama(2).eval()
    docs = copy.deepcopy(ref)
    docs.set_attn_implementation(doc_attention.register())
    built, _ = _count_builds(monkeypatch)
    batch = _packed_batch()
    with torch.enable_grad():  # eval mode with gradients: the fallback path needs the block mask
        l_ref, l_docs = ref(**batch).logits, docs(**batch).logits
    assert built == [1, 1]  # both layers asked; the second reused the first's mask (see LazyMask.built)
    assert torch.equal(l_ref, l_docs)
    with torch.no_grad():  # without gradients the builder returns transformers' own tensor
        assert torch.equal(docs(**batch).logits, l_ref.detach())


def test_dynamic_ntk_trains_past_the_window_on_the_lazy_mask(tmp_path):
    """Past the window the dynamic plan attends block by block with slices of the mask; a training forward hands it
    ctxext's lazy document mask, which it builds (it crashed on it before): the losses equal the eager attention's.
    (dynamic-ntk is the one length-dependent spec training takes: the others cannot be exported.)"""
    spec = "dynamic-ntk:factor=2"
    from ctxext.fixtures import TRAIN_BOOKS, books_dir
    from ctxext.train import TrainConfig, train

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses = {}
        for attn in ("sdpa", "eager"):
            cfg = TrainConfig(model="tiny-rope", scaling=spec, data=(str(books_dir() / TRAIN_BOOKS[2]),), seq_len=512,
                              steps=2, lr=1e-3, warmup=1, evaluate=False, grad_checkpointing=False, attn=attn,
                              out=str(tmp_path / attn), batch_tokens=1024)
            train(cfg, progress=False)
            hist = json.loads((tmp_path / attn / "results.json").read_text())["training"]["history"]
            losses[attn] = [h["loss"] for h in hist]
    finally:
        torch.set_num_threads(n)
    assert len(losses["sdpa"]) == 2
    np.testing.assert_allclose(losses["sdpa"], losses["eager"], rtol=1e-5)
