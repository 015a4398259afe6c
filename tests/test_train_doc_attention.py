"""Per-document causal SDPA for packed training rows: the same logits and gradients as transformers' block mask."""

import copy

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
