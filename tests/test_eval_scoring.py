"""Scoring primitives: chunked NLL equals a plain full-logits float64 computation; teacher-forced passkey verdicts
equal greedy `generate` on every trial of a grid (in and past the window, scaled and not); a haystack prefix
shared through the KV cache gives the same results as independent forwards, and longrope falls back to a full
forward where its short/long switch would make a cached prefix wrong."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re

import numpy as np
import pytest
import torch

from ctxext.evals import scoring
from ctxext.evals.attention import causal_attention, fast_attention
from ctxext.evals.passkey import build as passkey_build
from ctxext.evals.runner import same_freqs_of
from ctxext.evals.scoring import Probe, Scorer, first_integer_verdict, token_nll
from ctxext.evals.tasks import Settings, TaskContext
from ctxext.models import apply_spec, load_model
from ctxext.scaling import parse_spec

MAX_NEW = 16


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model("tiny-rope")


@pytest.fixture(scope="module")
def book_ids(tiny):
    from ctxext.data import load_documents
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    return load_documents([books_dir() / HELD_OUT_BOOK], tiny.tokenizer)[0].tokens


def reference_nll(model, ids) -> np.ndarray:
    """The plain computation: full logits, float64 log-softmax."""
    with torch.no_grad():
        lg = model(input_ids=torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]).logits[0, :-1].double()
    lp = torch.log_softmax(lg, -1)
    return -lp.gather(-1, torch.as_tensor(np.asarray(ids[1:], dtype=np.int64))[:, None])[:, 0].numpy()


def test_head_rows_bound_the_logits():
    assert scoring.head_rows(49152) * 49152 * 4 <= scoring.LOGITS_BYTES
    assert scoring.head_rows(2048) == 4096 and scoring.head_rows(10**9) == 64


def test_token_nll_equals_reference_in_chunks(tiny, book_ids, monkeypatch):
    ids = book_ids[:700]
    ref = reference_nll(tiny.model, ids)
    monkeypatch.setattr(scoring, "LOGITS_BYTES", 100 * 2048 * 4)  # 64-row chunks: many, and a partial last one
    ours = token_nll(tiny.model, ids)
    assert ours.shape == ref.shape == (699,)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    assert abs(np.exp(ours.mean()) / np.exp(ref.mean()) - 1) < 1e-5


def test_smollm2_ppl_equals_reference_on_2000_tokens():
    """Acceptance: on SmolLM2, 2 000 tokens of book text, within 1e-4 relative of full logits + float64 log-softmax."""
    from ctxext.data import load_documents
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    lm = load_model("smollm2-135m")  # scripts/setup.sh installs it: a load error is a failure, not a skip
    ids = load_documents([books_dir() / HELD_OUT_BOOK], lm.tokenizer)[0].tokens[:2000]
    torch.set_num_threads(os.cpu_count() or 1)  # a real model: all cores
    try:
        ours, ref = token_nll(lm.model, ids), reference_nll(lm.model, ids)
    finally:
        torch.set_num_threads(1)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-5)
    assert abs(np.exp(ours.mean()) / np.exp(ref.mean()) - 1) < 1e-4


@pytest.mark.parametrize("text, final, expected", [
    (" 12345.", False, True), (" 12345", True, True), (" 12345", False, None), (" 123456", True, False),
    (" 1234", False, None), (" 1239", False, False), (" the", False, None), (" the key", True, False),
    ("\n12345 is", False, True), (" 12 345", False, False), ("", False, None),
])
def test_first_integer_verdict(text, final, expected):
    assert first_integer_verdict(text, "12345", final) is expected


def greedy_text(model, tok, prompt: np.ndarray) -> str:
    with torch.no_grad():
        out = model.generate(torch.as_tensor(prompt)[None], max_new_tokens=MAX_NEW, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, len(prompt):], skip_special_tokens=True)


def greedy_verdict(text: str, target: str) -> bool:
    """The definition: correct when the first integer of the greedy continuation equals the target."""
    m = re.search(r"\d+", text)
    return m is not None and m.group() == target


def passkey_grid(lm, length: int, depths, trials: int = 2):
    ctx = TaskContext(lm=lm, spec=None, settings=Settings(samples=trials, seed=length), docs=None, out=None,
                      cost=None, same_freqs=lambda a, b: True)
    return passkey_build(ctx, length, [(length, d) for d in depths])


@pytest.mark.parametrize("spec", ["default", "ntk:factor=2", "dynamic-ntk:factor=4"])
def test_teacher_forced_verdicts_equal_greedy_generation(tiny, spec):
    """Every trial of a grid (lengths in and past the 256 window × depths), plus variants whose teacher-forced
    answer is wrong (so greedy leaves it and the undecided path decodes on): verdicts equal generate()."""
    apply_spec(tiny, parse_spec(spec))
    try:
        scorer = Scorer(tiny.model, tiny.tokenizer, MAX_NEW)
        seen = {"correct": 0, "wrong": 0, "decoded": 0}
        for length in (160, 256, 512):
            base, probes, _ = passkey_grid(tiny, length, (0.0, 0.33, 0.66, 1.0))
            texts = [greedy_text(tiny.model, tiny.tokenizer, p.prompt(base)) for p in probes]
            cases = list(zip(probes, texts))
            for p, text in list(cases):
                cases.append((dataclasses.replace(p, answer=np.roll(p.answer, -1)), text))  # wrong answer forced
                m = re.search(r"\d+", text)
                if m and m.group() != p.target:  # what the model does say, as the target: a correct verdict
                    ans = tiny.tokenizer(" " + m.group(), add_special_tokens=False)["input_ids"]
                    cases.append((dataclasses.replace(p, target=m.group(), answer=np.asarray(ans)), text))
            results = scorer.score(base, [p for p, _ in cases])
            for (p, text), r in zip(cases, results):
                assert r.correct == greedy_verdict(text, p.target), (spec, length, p.at, p.target, text)
                seen["correct" if r.correct else "wrong"] += 1
                seen["decoded"] += r.generated > 0
        assert seen["correct"] and seen["wrong"] and seen["decoded"], seen  # every path was exercised
    finally:
        apply_spec(tiny, parse_spec("default"))


@pytest.mark.parametrize("q_len, kv_len", [(7, 7), (1, 9), (5, 40), (64, 300)])
def test_mask_free_causal_attention_equals_masked_sdpa(q_len, kv_len):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, n, 16, generator=g) for n in (q_len, kv_len, kv_len))
    mask = torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)  # causal, aligned to the last key
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    torch.testing.assert_close(causal_attention(q, k, v, 0.3), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("spec", ["default", "yarn:factor=4", "dynamic-yarn"])
def test_shared_prefix_gives_the_same_results(tiny, spec, fast):
    """With stock attention and with the mask-free attention the runner uses (`fast_attention`)."""
    apply_spec(tiny, parse_spec(spec))
    try:
        with fast_attention(tiny.model) if fast else contextlib.nullcontext():
            scorer = Scorer(tiny.model, tiny.tokenizer, MAX_NEW)
            base, probes, _ = passkey_grid(tiny, 600, (0.0, 0.25, 0.5, 0.75, 1.0))
            probes = [dataclasses.replace(p, target=None) for p in probes]  # NLL only (verdicts: the test above)
            shared = list(scorer.scores(base, probes, reuse=True))
            alone = list(scorer.scores(base, probes, reuse=False))
        for (i, a, _, _), (j, b, _, _) in zip(shared, alone):
            assert i == j
            np.testing.assert_allclose(a.nll, b.nll, rtol=1e-4, atol=1e-4)
        assert sum(x[2] for x in shared) < 0.65 * sum(x[2] for x in alone)  # the prefix really was shared
    finally:
        apply_spec(tiny, parse_spec("default"))


def test_longrope_prefix_is_not_reused_across_its_switch(tiny):
    """longrope picks short factors for a forward of <= L tokens and long ones past L: a prefix cached while the
    sequence was short is wrong for a longer prompt. The scorer then runs one full forward instead."""
    n = tiny.info.rope_shape.n_pairs
    spec = parse_spec("longrope:factor=16,long_factor=[" + ",".join(f"{1 + 15 * i / (n - 1):.3f}" for i in range(n)) + "]")
    same = same_freqs_of(spec, tiny.info)
    assert same(1, 256) and same(100, 200) and not same(1, 257) and same(300, 600)
    assert same_freqs_of(parse_spec("dynamic-ntk:factor=4"), tiny.info)(1, 1000)  # causal: always reusable
    apply_spec(tiny, spec)
    try:
        with fast_attention(tiny.model):  # as the runner runs it
            base, probes, _ = passkey_grid(tiny, 512, (0.25, 0.5, 1.0), trials=1)
            probes = [dataclasses.replace(p, target=None) for p in probes]
            guarded = Scorer(tiny.model, tiny.tokenizer, MAX_NEW, reusable=lambda p, t: same(1, t))
            res = list(guarded.scores(base, probes, reuse=True))
            assert [new for _, _, new, _ in res] == [len(p.prompt(base)) + len(p.answer) for p in probes]  # full
            plain = guarded.score(base, probes, reuse=False)
            err = max(np.abs(a.nll - b.nll).max() for (_, a, _, _), b in zip(res, plain))
            naive = Scorer(tiny.model, tiny.tokenizer, MAX_NEW)  # reuses regardless: measurably different answers
            wrong = naive.score(base, probes, reuse=True)
            err_naive = max(np.abs(a.nll - b.nll).max() for a, b in zip(wrong, plain))
            assert err < 1e-5 and err_naive > 10 * max(err, 1e-6), (err, err_naive)
            short_base, short_probes, _ = passkey_grid(tiny, 200, (0.25, 1.0), trials=1)  # within L: reused, exact
            short_probes = [dataclasses.replace(p, target=None) for p in short_probes]
            res = list(guarded.scores(short_base, short_probes, reuse=True))
            assert res[-1][2] < len(short_probes[-1].prompt(short_base))
            for (_, a, _, _), b in zip(res, guarded.score(short_base, short_probes, reuse=False)):
                np.testing.assert_allclose(a.nll, b.nll, rtol=1e-4, atol=1e-4)
    finally:
        apply_spec(tiny, parse_spec("default"))


def test_probe_without_target_only_scores(tiny):
    scorer = Scorer(tiny.model, tiny.tokenizer, MAX_NEW)
    base = np.arange(5, 60)
    p = Probe(10, np.array([7, 8]), np.array([9]), np.array([11, 12, 13]))
    (r,) = scorer.score(base, [p])
    assert r.correct is None and r.generated == 0 and r.nll.shape == (3,)
    full = p.prompt(base).tolist() + p.answer.tolist()
    np.testing.assert_allclose(r.nll, reference_nll(tiny.model, full)[-3:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rows, q_len, own, prefix", [(1, 5, 5, 30), (3, 4, 4, 17), (2, 1, 6, 9), (2, 3, 8, 12)])
def test_branch_attention_equals_masked_sdpa_over_prefix_and_own_keys(rows, q_len, own, prefix):
    """The fused branch attention (shared prefix of batch 1 read once for all rows and query heads, GQA, plus each
    row's own keys, causal) equals SDPA over [prefix repeated per row | own keys] with the causal mask."""
    from ctxext.evals.attention import _causal_parts, merge, prefix_part

    g = torch.Generator().manual_seed(rows * 100 + q_len)
    H, Hkv, D = 6, 2, 16
    q = torch.randn(rows, H, q_len, D, generator=g)
    pk, pv = torch.randn(1, Hkv, prefix + 3, D, generator=g)[:, :, :prefix], torch.randn(1, Hkv, prefix, D, generator=g)
    ok, ov = torch.randn(rows, Hkv, own, D, generator=g), torch.randn(rows, Hkv, own, D, generator=g)
    k = torch.cat([pk.expand(rows, -1, -1, -1), ok], 2).repeat_interleave(H // Hkv, 1)
    v = torch.cat([pv.expand(rows, -1, -1, -1), ov], 2).repeat_interleave(H // Hkv, 1)
    kv = prefix + own
    mask = torch.ones(q_len, kv, dtype=torch.bool).tril(kv - q_len)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    parts = [prefix_part(q, pk, pv, 0.3)]
    parts += _causal_parts(q, ok.repeat_interleave(H // Hkv, 1), ov.repeat_interleave(H // Hkv, 1), 0.3)
    torch.testing.assert_close(merge(parts), ref, rtol=1e-5, atol=1e-6)


def test_branch_batches_give_greedy_verdicts_and_plain_results(tiny, monkeypatch):
    """With the mask-free attention the trials of a depth run as one batch of branches over a view of the shared
    haystack cache: NLLs equal independent forwards, verdicts equal generate() on every trial (including the
    undecided ones, decoded on from a single row of the batch), and the prefix is never copied per probe."""
    from ctxext.evals import attention

    rows_seen = []
    real = scoring.Scorer._branches

    def spy(self, shared, at, items):
        rows_seen.append(len(items))
        return real(self, shared, at, items)

    monkeypatch.setattr(scoring.Scorer, "_branches", spy)
    monkeypatch.setattr(scoring, "BATCH_TOKENS", 256)  # several calls per batch, partial last chunk
    with fast_attention(tiny.model):
        assert attention.fused_branches(tiny.model)
        scorer = Scorer(tiny.model, tiny.tokenizer, MAX_NEW)
        seen = {"correct": 0, "wrong": 0, "decoded": 0}
        for length in (256, 512):
            base, probes, _ = passkey_grid(tiny, length, (0.0, 0.5, 1.0), trials=3)
            cases = list(probes)
            cases += [dataclasses.replace(p, answer=np.roll(p.answer, -1)) for p in probes]  # wrong answers forced
            rows_before = len(rows_seen)
            fused = list(scorer.scores(base, cases, reuse=True))
            plain = scorer.score(base, cases, reuse=False)
            assert max(rows_seen[rows_before:]) > 1  # trials really were batched
            for (i, a, _, _) in fused:
                b, p = plain[i], cases[i]
                np.testing.assert_allclose(a.nll, b.nll, rtol=1e-4, atol=1e-4)
                text = greedy_text(tiny.model, tiny.tokenizer, p.prompt(base))
                assert a.correct == b.correct == greedy_verdict(text, p.target), (length, p.at, p.target, text)
                seen["correct" if a.correct else "wrong"] += 1
                seen["decoded"] += a.generated > 0
            assert sum(x[2] for x in fused) < 0.7 * sum(len(c.prompt(base)) + len(c.answer) for c in cases)
    assert seen["wrong"] and seen["decoded"], seen


def test_branch_cache_refuses_an_attention_that_ignores_its_prefix(tiny):
    """Without the mask-free attention a branch cache would silently drop the prefix: the forward fails instead."""
    from ctxext.evals.attention import branch_cache

    shared = scoring.new_cache(tiny.model)
    scoring.extend(tiny.model, shared, np.arange(5, 40))
    cache = branch_cache([(layer.keys, layer.values) for layer in shared.layers])
    with pytest.raises(RuntimeError, match="prefix"):
        scoring.hidden_rows(tiny.model, np.arange(3, 9)[None], cache)  # stock SDPA: not fused


@pytest.mark.parametrize("family,extra", [("Granite", {"logits_scaling": 8.0}), ("Cohere", {"logit_scale": 0.0625})])
def test_token_nll_applies_the_models_own_logit_scaling(family, extra):
    """Granite divides its logits by logits_scaling and Cohere multiplies them by logit_scale after the LM head;
    perplexity must score those logits, not the head's (Granite at 8: mean NLL 4.884 against 4.570 before)."""
    import transformers as tf

    cfg = getattr(tf, f"{family}Config")(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                          eos_token_id=2, **extra)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(0, 96, (40,), generator=torch.Generator().manual_seed(1)).numpy()
    np.testing.assert_allclose(token_nll(model, ids), reference_nll(model, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [None, 4096, 64])
def test_sliding_window_models_score_as_without_prefix_reuse(tiny, window):
    """Mistral v0.1 / Phi-3-mini set a sliding window: the shared-prefix path (no fused branches for them) and the
    greedy fallback crop caches past the window; they give what independent forwards give."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                        max_position_embeddings=4096, attn_implementation="sdpa")
    model = MistralForCausalLM(cfg).eval()
    base = np.arange(100, 500)
    probes = [Probe(at, np.array([5, 6, 7]), np.array([8, 9]), np.array([221, 17, 18]), "12")
              for at in (150, 200, 200, 300)]
    with torch.inference_mode(), fast_attention(model):
        shared = Scorer(model, tiny.tokenizer, MAX_NEW).score(base, probes, reuse=True)
        alone = Scorer(model, tiny.tokenizer, MAX_NEW).score(base, probes, reuse=False)
    for a, b in zip(shared, alone):
        np.testing.assert_allclose(a.nll, b.nll, rtol=1e-4, atol=1e-5)
        assert (a.correct, a.tokens) == (b.correct, b.tokens)


def test_an_attention_that_tests_for_sdpa_itself_keeps_stock_sdpa(tiny):
    """Falcon compares `_attn_implementation == "sdpa"` in its own forward: under ctxext's attention name it took its
    eager branch and added the boolean mask as a bias, so early logits moved when only later tokens changed (3.25
    on a tiny random Falcon) and prefix reuse crashed. Such models keep stock SDPA; interface models are switched."""
    import transformers as tf

    from ctxext.evals.attention import NAME, dispatches

    torch.manual_seed(0)
    cfg = tf.FalconConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                          alibi=False, new_decoder_architecture=True, max_position_embeddings=64)
    cfg._attn_implementation = "sdpa"
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(3, 96, (1, 80), generator=torch.Generator().manual_seed(1))
    later = ids.clone()
    later[0, 40:] = (later[0, 40:] + 7) % 96
    with torch.inference_mode():
        stock = model(ids).logits
        with fast_attention(model):
            assert model.config._attn_implementation == "sdpa"
            got, moved = model(ids).logits, model(later).logits
    assert not dispatches(model) and dispatches(tiny.model)
    assert torch.equal(got, stock) and torch.equal(got[:, :40], moved[:, :40])
    with fast_attention(tiny.model):
        assert tiny.model.config._attn_implementation == NAME
