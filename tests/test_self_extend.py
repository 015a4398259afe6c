"""Self-Extend: equal to the model inside the neighbour window, equal to a naive full-matrix reference past it
(blocked or not), the same with the KV cache and HF generate as without, and refused by export in one line."""

import pytest
import torch
from transformers import DynamicCache

import ctxext.models.self_extend as se
from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.export import plan_export
from ctxext.models import apply_spec, check_before_weights, wrap_model
from ctxext.models.attention import PositionPlan, patch_attention
from ctxext.models.rope import cos_sin
from ctxext.models.tiny import WINDOW, tiny_model
from ctxext.scaling import hf_rope_fields, parse_spec
from ctxext.scaling import RopeShape
from ctxext.scaling.attention import SelfExtendParams, self_extend_reach
from tiny_ids import ids_for

G, W, N = 4, 16, 3 * WINDOW  # tiny models: trained length 64; reach (64 − 16)·4 + 16 = 208 ≥ N
SPEC = f"self-extend:group={G},window={W}"


pytestmark = pytest.mark.usefixtures("one_thread")


class NaiveSelfExtend(PositionPlan):
    """The formula written out: full T×K logits for both rotations, pick per pair, causal, one softmax."""

    def bucket(self, t):
        return self.L

    def attend(self, call):
        f = self.freqs(self.L, call.query.device)
        g, w = self.spec.params.group, self.spec.params.window

        def rot(x, pos):  # transformers' formula with its full tables
            cos, sin = (t[:, None] for t in cos_sin(pos, f, x.dtype))
            half = x.shape[-1] // 2
            return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin

        rep = call.query.shape[1] // call.key.shape[1]
        k = call.key.repeat_interleave(rep, 1)
        near = rot(call.query, call.q_pos) @ rot(k, call.k_pos).transpose(-1, -2)
        far = rot(call.query, call.q_pos // g + w - w // g) @ rot(k, call.k_pos // g).transpose(-1, -2)
        rel = call.q_pos[:, :, None] - call.k_pos[:, None, :]
        s = torch.where((rel < w)[:, None], near, far) * call.module.scaling
        s = s.masked_fill((rel < 0)[:, None], float("-inf"))
        out = torch.softmax(s, -1) @ call.value.repeat_interleave(rep, 1)
        return out.transpose(1, 2), None


@pytest.mark.parametrize("arch", ["llama", "qwen3", "phi3"])
def test_inside_the_window_the_logits_are_the_models_own(arch):
    model = tiny_model(arch)
    lm = wrap_model(model)
    ids = ids_for(W, batch=2)
    with torch.inference_mode():
        before = model(ids).logits
        apply_spec(lm, parse_spec(SPEC))
        assert torch.equal(model(ids).logits, before)  # same code path: bit-identical
        apply_spec(lm, parse_spec(f"self-extend:group=1,window={W}"))  # G = 1: grouped positions are the true ones
        long_ids = ids_for(N)
        got = model(long_ids).logits
        apply_spec(lm, parse_spec("default"))
        assert (got - model(long_ids).logits).abs().max().item() < 1e-5


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


@pytest.mark.parametrize("rope", [LLAMA3_ROPE, {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                "original_max_position_embeddings": 128}])
def test_a_checkpoint_that_scales_its_own_rope_keeps_it(rope):
    """Llama 3.1-style checkpoints (llama3 bands) and yarn configs: self-extend and streaming move positions and keep
    the checkpoint's own frequencies and attention factor, so inside their windows the logits are the model's; the
    neighbour window may reach past the original length, up to the length the checkpoint was made for (512)."""
    model = tiny_model("llama", rope_parameters=rope, max_position_embeddings=512)
    lm = wrap_model(model)
    ids = ids_for(190)
    with torch.inference_mode():
        before = model(ids).logits
        for spec in ("self-extend:group=4,window=200", "streaming:sinks=4,window=400"):
            apply_spec(lm, parse_spec(spec))
            assert torch.equal(model(ids).logits, before), spec
        apply_spec(lm, parse_spec("self-extend:group=4,window=100"))
        assert (model(ids).logits - before).abs().max().item() > 1e-3  # past W the grouped positions do change it
    with pytest.raises(CtxextError, match="window=600 must be smaller than the trained length 512"):
        apply_spec(lm, parse_spec("self-extend:group=4,window=600"))
    check_before_weights(parse_spec("self-extend:group=4,window=400"), lm.info)  # the config's window, not 64/128
    with pytest.raises(CtxextError, match="window=600 must be smaller than the trained length 512"):
        check_before_weights(parse_spec("self-extend:group=4,window=600"), lm.info)
    # the eval harness plans with the same window (it planned with 64/128 and refused window=200 mid-run)
    from ctxext.evals.runner import same_freqs_of

    for spec in ("self-extend:group=4,window=200", "streaming:sinks=4,window=400"):
        assert same_freqs_of(parse_spec(spec), lm.info)(1, 300), spec


def test_attention_methods_on_a_model_ctxext_cannot_patch_fail_before_weights():
    """Found at apply time: after the weights loaded and earlier specs' cells ran."""
    from ctxext.models import model_info
    from ctxext.models.info import info_from_config

    cfg = {**model_info("tiny-rope").config, "model_type": "gpt_neox"}
    info = info_from_config(cfg, "m", "m")
    for spec in ("self-extend:group=4,window=64", "streaming:sinks=4,window=64", "dynamic-ntk:factor=2"):
        with pytest.raises(CtxextError, match=f"'{spec.split(':')[0]}' patches attention, which ctxext supports for "
                                              "llama, .* not 'gpt_neox'"):
            check_before_weights(parse_spec(spec), info)
    windowed = info_from_config({**model_info("tiny-rope").config, "model_type": "mistral", "sliding_window": 48},
                                "m", "m")
    with pytest.raises(CtxextError, match=r"sliding-window attention \(sliding_window=48\) is not supported"):
        check_before_weights(parse_spec("streaming:sinks=4,window=64"), windowed)
    check_before_weights(parse_spec("self-extend:group=4,window=64"), windowed)
    qwen = info_from_config({**model_info("tiny-rope").config, "model_type": "qwen2", "sliding_window": 48,
                             "use_sliding_window": False}, "m", "m")
    check_before_weights(parse_spec("streaming:sinks=4,window=64"), qwen)  # the window is off


def test_a_checkpoint_whose_own_rope_changes_with_length_is_refused():
    model = tiny_model("llama", rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
                       max_position_embeddings=256)
    lm = wrap_model(model)
    for spec in ("self-extend:group=4,window=64", "streaming:sinks=4,window=64"):
        with pytest.raises(CtxextError, match="own RoPE, but this checkpoint's \\('dynamic'\\) changes with the length"):
            apply_spec(lm, parse_spec(spec))
    assert lm.spec is None or lm.spec.method == "default"


@pytest.mark.parametrize("block_elements,fused", [(se.BLOCK_ELEMENTS, True), (4 * 32 * N, True), (4 * 32 * N, False)])
def test_matches_the_naive_formula_past_the_window(monkeypatch, block_elements, fused):
    """One block or 32-query blocks; PyTorch's fused CPU kernel or the eager log-sum-exp path."""
    monkeypatch.setattr(se, "BLOCK_ELEMENTS", block_elements)
    if not fused:
        monkeypatch.setattr(se, "_flash_lse", lambda *a: None)
    model = tiny_model("llama")
    lm = wrap_model(model)
    ids = ids_for(N)
    spec = parse_spec(SPEC)
    with torch.inference_mode():
        plain = model(ids).logits
        undo = patch_attention(model, NaiveSelfExtend(spec, lm.info.rope_shape), lm.info.n_layers)
        want = model(ids).logits
        undo()
        apply_spec(lm, spec)
        got = model(ids).logits
    assert (got - want).abs().max().item() < 1e-4
    assert (got[:, :W] - plain[:, :W]).abs().max().item() < 1e-5
    assert (got[:, W + 8:] - plain[:, W + 8:]).abs().max().item() > 1e-2  # past the window it really differs


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "phi3", "llama-eager"])
def test_kv_cache_equals_no_cache(arch):
    arch, _, attn = arch.partition("-")
    model = tiny_model(arch, attn=attn or "sdpa")
    apply_spec(wrap_model(model), parse_spec(SPEC))
    ids = ids_for(N)
    with torch.inference_mode():
        full = model(ids).logits
        cache = DynamicCache(config=model.config)
        steps = [model(ids[:, :10], past_key_values=cache, use_cache=True).logits]
        for t in range(10, 60, 25):  # two chunks, then one token at a time
            steps.append(model(ids[:, t:t + 25], past_key_values=cache, use_cache=True).logits)
        for t in range(60, N):
            steps.append(model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    assert (torch.cat(steps, 1) - full).abs().max().item() < 1e-4


def test_generate_gives_the_no_cache_tokens_with_left_padding():
    model = tiny_model("llama")
    apply_spec(wrap_model(model), parse_spec(SPEC))
    a, b = ids_for(30, seed=5), ids_for(45, seed=6)
    x = torch.cat([torch.cat([torch.zeros(1, 15, dtype=torch.long), a], 1), b])
    mask = torch.ones_like(x)
    mask[0, :15] = 0
    new = 120  # to 165 tokens: far past W and past the trained length 64
    with torch.inference_mode():
        g = model.generate(x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        steps = torch.stack(g.logits, 1)
        for row, pad in ((0, 15), (1, 0)):
            seq = g.sequences[row:row + 1, pad:]
            full = model(seq).logits
            assert (steps[row:row + 1] - full[:, -new - 1:-1]).abs().max().item() < 1e-4
            # greedy without a cache picks the same tokens (EOS, id 2, is barred by min_new_tokens)
            assert torch.equal(full[:, -new - 1:-1].index_fill(-1, torch.tensor([2]), -1e9).argmax(-1), seq[:, -new:])


def test_apply_time_refusals_and_reach():
    lm = wrap_model(tiny_model("llama"))
    with pytest.raises(CtxextError, match="window=64 must be smaller than the trained length 64"):
        apply_spec(lm, parse_spec("self-extend:group=4,window=64"))
    assert lm.spec is None  # refused before the model changed
    with pytest.raises(CtxextError, match="does not fit this model's position encoding"):
        apply_spec(wrap_model(tiny_model("bloom")), parse_spec(SPEC))
    assert self_extend_reach(8192, SelfExtendParams(group=4, window=2048)) == 26624
    assert self_extend_reach(64, SelfExtendParams(group=G, window=W)) == 208
    # a window that G does not divide: the last query's grouped position decides (before: 20 480 claimed)
    plan = se.SelfExtendPlan(parse_spec("self-extend:group=3,window=2048"), RopeShape(64, 1e5, 8192))
    n = self_extend_reach(8192, plan.spec.params)
    assert n == 20478
    assert int(plan.grouped_query_pos(torch.tensor(n - 1))) == 8191 < int(plan.grouped_query_pos(torch.tensor(n)))


def test_export_refuses_in_one_line(tmp_path, capsys):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    capsys.readouterr()
    with pytest.raises(CtxextError) as e:
        hf_rope_fields(parse_spec(SPEC), wrap_model(model).info.rope_shape)
    assert "cannot export 'self-extend:group=4,window=16'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CtxextError, match="no stock config can express"):
        plan_export(str(tmp_path / "m"), SPEC)
    out = tmp_path / "out"
    rc = main(["export", "--model", str(tmp_path / "m"), "--scaling", SPEC, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "silently run plain RoPE" in err
    assert not out.exists()


def test_fixture_generate_equals_no_cache_far_past_the_window():
    """tiny-rope (trained on 256 tokens): greedy generation with the KV cache from a 300-token prompt to 700
    tokens gives the tokens and logits of no-cache forwards."""
    from ctxext.fixtures import WINDOW as FW, fixture_path
    from ctxext.models import load_model

    lm = load_model(str(fixture_path("tiny-rope")))
    apply_spec(lm, parse_spec("self-extend:group=4,window=64"))  # reach (256 − 64)·4 + 64 = 832
    text = " The grass is green. The sky is blue." * 40
    ids = torch.as_tensor([lm.tokenizer(text)["input_ids"][:300]])
    new = 400
    with torch.inference_mode():
        g = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        full = lm.model(g.sequences).logits[:, -new - 1:-1]
    assert g.sequences.shape[1] == 300 + new > 2 * FW
    assert (torch.stack(g.logits, 1) - full).abs().max().item() < 1e-4
    eos = lm.model.generation_config.eos_token_id
    assert torch.equal(full.index_fill(-1, torch.tensor([eos]), -1e9).argmax(-1), g.sequences[:, -new:])


def test_apply_spec_takes_the_specs_text():
    lm = wrap_model(tiny_model("llama"))
    apply_spec(lm, "self-extend:group=4,window=32")
    assert lm.spec.method == "self-extend" and lm.spec.params.group == 4
    apply_spec(lm, "default")
    assert lm.spec.method == "default"
