"""StreamingLLM: the model itself inside the window; past it, each token's logits equal the stock model run on
just the sinks + its window (1 layer: an independent reference); token by token, in chunks and without a cache
the same logits; the cache stays bounded; stream_nll scores a stream exactly; refusals are one line."""

import re

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.evals.cost import fmt_seconds
from ctxext.evals.scoring import token_nll
from ctxext.evals.stream_ppl import stream_nll
from ctxext.models import apply_spec, wrap_model
from ctxext.models.attention import POSITIONS_ATTR
from ctxext.models.tiny import WINDOW, tiny_model
from ctxext.scaling import parse_spec
from tiny_ids import ids_for

S, W, N = 4, 24, 3 * WINDOW  # tiny models: trained length 64
SPEC = f"streaming:sinks={S},window={W}"


pytestmark = pytest.mark.usefixtures("one_thread")


def streamed(model, ids, chunk):
    """Logits of every position, fed `chunk` tokens per call through one cache; and the largest cache seen."""
    cache = DynamicCache(config=model.config)
    outs, most = [], 0
    with torch.inference_mode():
        for s in range(0, ids.shape[1], chunk):
            outs.append(model(ids[:, s:s + chunk], past_key_values=cache, use_cache=True).logits)
            most = max(most, cache.get_seq_length())
            assert cache.__dict__[POSITIONS_ATTR][0].shape[1] == cache.get_seq_length()
    return torch.cat(outs, 1), most


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_inside_the_window_it_is_the_model(arch):
    model = tiny_model(arch)
    lm = wrap_model(model)
    ids = ids_for(S + W, batch=2)
    with torch.inference_mode():
        before = model(ids).logits
        apply_spec(lm, parse_spec(SPEC))
        assert torch.equal(model(ids).logits, before)


@pytest.mark.parametrize("sinks", [S, 0])
def test_each_token_sees_sinks_plus_window_at_slot_positions(sinks):
    """One layer: the logits at token i are the stock model's on [first `sinks` tokens, last W tokens up to i]
    with positions 0 … n−1 — StreamingLLM's cache by construction, computed without ctxext."""
    model = tiny_model("llama", num_hidden_layers=1)
    lm = wrap_model(model)
    ids = ids_for(N)
    with torch.inference_mode():
        refs = {i: model(torch.cat([ids[:, :sinks], ids[:, i - W + 1:i + 1]], 1)).logits[:, -1]
                for i in (sinks + W, sinks + W + 1, 100, N - 1)}
        apply_spec(lm, parse_spec(f"streaming:sinks={sinks},window={W}"))
        got = model(ids).logits
    for i, ref in refs.items():
        assert (got[:, i] - ref).abs().max().item() < 1e-5, i
    with torch.inference_mode():
        apply_spec(lm, parse_spec("default"))
        assert (model(ids).logits[:, N - 1] - refs[N - 1]).abs().max().item() > 1e-2  # full attention differs


@pytest.mark.parametrize("arch", ["llama", "qwen3", "phi3"])
def test_token_by_token_chunks_and_no_cache_agree_with_a_bounded_cache(arch):
    model = tiny_model(arch)
    apply_spec(wrap_model(model), parse_spec(SPEC))
    ids = ids_for(N)
    with torch.inference_mode():
        full = model(ids).logits
    for chunk in (1, 7, 40):
        got, most = streamed(model, ids, chunk)
        assert (got - full).abs().max().item() < 1e-4, chunk
        assert most <= S + W - 1 + chunk, (chunk, most)  # constant memory: sinks + window + one chunk


def test_refusals_are_one_line(tmp_path, capsys):
    model = tiny_model("llama")
    lm = wrap_model(model)
    with pytest.raises(CtxextError, match="sinks \\+ window = 68 must fit in the trained length 64"):
        apply_spec(lm, parse_spec("streaming:sinks=4,window=64"))
    apply_spec(lm, parse_spec(SPEC))
    ids = ids_for(60, batch=2)
    with torch.inference_mode(), pytest.raises(CtxextError, match="positions by cache slot"):
        model(ids, position_ids=torch.arange(60)[None] + 5)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.inference_mode(), pytest.raises(CtxextError, match="padded batches"):
        model(ids, attention_mask=mask)
    with torch.inference_mode(), pytest.raises(CtxextError, match="HF generate past the window is not supported"):
        model.generate(ids[:1, :20], max_new_tokens=40, do_sample=False, pad_token_id=0)
    model.save_pretrained(tmp_path / "m")
    capsys.readouterr()
    rc = main(["export", "--model", str(tmp_path / "m"), "--scaling", SPEC, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "cannot export 'streaming:sinks=4,window=24'" in err
    assert not (tmp_path / "out").exists()
    # a model whose own attention slides (Mistral v0.1) evicts keys itself, sinks included: refused at apply
    windowed = wrap_model(tiny_model("mistral", sliding_window=48))
    with pytest.raises(CtxextError, match="sliding-window attention \\(sliding_window=48\\) is not supported"):
        apply_spec(windowed, parse_spec(SPEC))
    assert windowed.spec is None


@pytest.mark.parametrize("text", [SPEC, "default"])
def test_stream_nll_scores_every_token_once(text):
    model = tiny_model("llama")
    apply_spec(wrap_model(model), parse_spec(text))
    tokens = ids_for(N)[0].numpy()
    ticks = []
    nll, most = stream_nll(model, tokens, chunk=32, on_chunk=lambda new, past: ticks.append((new, past)))
    np.testing.assert_allclose(nll, token_nll(model, tokens), atol=1e-4)  # = one no-cache forward
    assert sum(t[0] for t in ticks) == N - 1
    # at most: what the last eviction kept (S + W − 1 + chunk) plus the chunk being appended
    assert most == (S + W - 1 + 2 * 32 if text == SPEC else N - 1)


@pytest.mark.slow
def test_stream_ppl_cli_on_the_fixture(tmp_path):
    """ctxext eval --task stream-ppl on tiny-rope (window 256), 4 096 tokens of the held-out book: streaming holds a
    bounded cache and keeps perplexity near its in-window figure; default RoPE stops at 4× the window (1 024 tokens)
    and is far worse by then."""
    import json

    from ctxext.fixtures import HELD_OUT_BOOK, books_dir, fixture_path

    out = tmp_path / "eval"
    spec = "streaming:sinks=4,window=252"
    rc = main(["eval", "--model", "tiny-rope", "--scaling", spec, "--scaling", "default", "--task", "stream-ppl",
               "--lengths", "4096", "--bucket", "256", "--data", str(books_dir() / HELD_OUT_BOOK), "--out", str(out),
               "--no-progress"])
    assert rc == 0 and (out / "summary.md").is_file()
    recs = json.loads((out / "results.json").read_text())["records"]

    def get(s, metric, bucket=None):
        return next(r["value"] for r in recs if r["scaling"] == s and r["metric"] == metric and r["bucket"] == bucket)

    assert get(spec, "tokens") == 4096 and get("default", "tokens") == 1024
    assert get(spec, "max_cache_tokens") <= 4 + 252 - 1 + 2 * 512
    assert get("default", "max_cache_tokens") == 1023
    segs = [r["value"] for r in recs if r["scaling"] == spec and r["metric"] == "ppl" and r["bucket"]]
    # the reference is the fixture's in-window perplexity on this book (fixture.json); the stream's first segment is the
    # book's contents page, easier than its prose
    in_window = json.loads((fixture_path("tiny-rope") / "fixture.json").read_text())["eval"]["ppl_in_window"]
    assert len(segs) == 16 and max(segs) < 1.5 * in_window
    assert get("default", "ppl", [768, 1024]) > 2 * get(spec, "ppl", [768, 1024])
    assert len(list((out / "curves").glob("stream-ppl-*.npy"))) == 2


def test_stream_cost_stops_where_full_attention_streams_stop():
    # specs without eviction stop at FULL_CAP_FACTOR × the trained length, so longer streams cost no more
    from ctxext.evals.cost import ModelCost
    from ctxext.evals.stream_ppl import FULL_CAP_FACTOR, cost
    from ctxext.models import model_info

    mc = ModelCost.of(model_info("smollm2-135m"))
    assert mc.trained_len == 8192
    cap = FULL_CAP_FACTOR * 8192
    f_cap, m_cap = cost(mc, cap, [], None)
    assert cost(mc, 2 * cap, [], None) == (f_cap, m_cap)
    assert f_cap == mc.flops(cap, scored=cap) and cost(mc, 4096, [], None)[0] < f_cap


def test_streaming_cost_is_what_the_stream_ticks_and_grows_linearly():
    """The estimate of a streaming stream is the sum of the FLOPs its progress bar counts (stream_nll's calls at
    their cache sizes); it grows linearly with the length at constant memory, while a spec that keeps every key
    is costed as full attention."""
    from ctxext.evals.cost import ModelCost
    from ctxext.evals.stream_ppl import STREAM_CHUNK, cost, streaming_flops
    from ctxext.models import model_info

    model = tiny_model("llama")
    apply_spec(wrap_model(model), parse_spec(SPEC))
    mc = ModelCost.of(model_info("smollm2-135m"))
    ticks = []
    stream_nll(model, ids_for(N)[0].numpy(), chunk=32, on_chunk=lambda new, past: ticks.append(
        mc.flops(new, past=past, scored=new)))
    assert streaming_flops(mc, N, S, W, chunk=32) == pytest.approx(sum(ticks), rel=1e-12)

    spec = parse_spec("streaming:sinks=4,window=2044")
    f1, m1 = cost(mc, 2**18, [], None, spec=spec)
    f2, m2 = cost(mc, 2**19, [], None, spec=spec)
    assert m1 == m2 and f2 / f1 == pytest.approx(2.0, rel=0.01)
    assert m1 == mc.peak_cached(4 + 2044 - 1 + 2 * STREAM_CHUNK, plain=False)
    full = cost(mc, 32768, [], None, spec=parse_spec("yarn:factor=4"))
    assert full == cost(mc, 32768, [], None) and full[0] > 2 * cost(mc, 32768, [], None, spec=spec)[0]


def test_the_plan_costs_streaming_on_its_own_row(tmp_path):
    """SmolLM2 over 65 536 tokens: streaming (linear, bounded cache) is stated cheaper in time and memory than
    default RoPE, which keeps every key up to 4× its 8k window."""
    from ctxext.evals import run_eval
    from ctxext.evals.cost import ModelCost, matmul_rate
    from ctxext.evals.stream_ppl import cost
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir
    from ctxext.models import model_info

    lines = []
    spec = "streaming:sinks=4,window=2044"
    res = run_eval("smollm2-135m", ["default", spec], ["stream-ppl"], [65536], data=[books_dir() / HELD_OUT_BOOK],
                   out=tmp_path / "d", dry_run=True, log=lines.append)
    rows = [ln for ln in lines[-1].splitlines() if "stream-ppl" in ln]
    assert len(rows) == 2 and rows[0].endswith(f"({spec})") and rows[1].endswith("(default)")
    unit = {"s": 1, "min": 60, "h": 3600}
    (gb_s, t_s), (gb_d, t_d) = ((float(m[1]), float(m[2]) * unit[m[3]]) for m in
                                (re.search(r"([\d.]+) GB\s+([\d.]+) (s|min|h)\b", r) for r in rows))
    assert gb_s < gb_d and t_s < t_d  # what the docstring claims, read from the two stated rows
    mach = res["meta"]["machine"]
    mc = ModelCost.of(model_info("smollm2-135m"), 4, attn_weight=mach["matmul_flops"] / mach["attention_flops"])
    total = sum(cost(mc, 65536, [], None, spec=parse_spec(s))[0] for s in ("default", spec)) / matmul_rate()
    assert lines[-1].splitlines()[-1] == f"  total ≈ {fmt_seconds(total)}"


def test_prefix_reuse_gives_the_same_answers_at_the_trained_length(tmp_path):
    """At a prompt of exactly the trained length, streaming's bucket equalled the in-window one: the harness reused
    one haystack cache that eviction had thinned, and later probes ran on a prefix with holes (answers differed
    from --no-prefix-reuse)."""
    import json

    from ctxext.evals import run_eval
    from ctxext.evals.runner import same_freqs_of
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir
    from ctxext.models import model_info
    from ctxext.scaling import parse_spec

    spec = "streaming:sinks=4,window=124"
    same = same_freqs_of(parse_spec(spec), model_info("tiny-rope"))
    assert same(1, 128) and not same(1, 256) and not same(1, 257) and same(300, 300)
    answers = []
    for reuse in (True, False):
        out = tmp_path / f"r{reuse}"
        run_eval("tiny-rope", [spec], ["niah"], [256], depths="0.2,0.8", samples=2, out=out, progress=False,
                 reuse_prefix=reuse, log=lambda m: None, data=[str(books_dir() / HELD_OUT_BOOK)])
        rows = [json.loads(x) for f in sorted((out / "answers").glob("*.jsonl")) for x in f.read_text().splitlines()]
        answers.append([(r["depth"], r["trial"], r["answer"], r["correct"]) for r in rows])
    assert answers[0] == answers[1] and len(answers[0]) == 4


def test_eviction_drops_the_cached_contiguous_keys_too():
    """evict cleared an attribute nothing sets ('_key_half'), leaving rotated_keys' cached copy ('_key') with the
    evicted slots: a later rotation in the same call would have used keys eviction dropped."""
    from types import SimpleNamespace

    from ctxext.models.attention import AttnCall
    from ctxext.models.streaming import StreamingPlan

    plan = StreamingPlan.__new__(StreamingPlan)
    plan.sinks, plan.window, plan.memo = 1, 2, {}
    call = AttnCall.__new__(AttnCall)
    call.query, call.value = torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 6, 4)
    call.key = torch.arange(6.0).view(1, 1, 6, 1).expand(1, 1, 6, 4)
    call.k_pos, call.cache, call.module = torch.arange(6)[None], None, SimpleNamespace(layer_idx=0)
    call._key = call.key.contiguous()
    plan.evict(call)
    assert "_key" not in call.__dict__ and call.key.shape[-2] == 3
