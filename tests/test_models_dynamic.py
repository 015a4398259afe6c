"""Length-dependent methods: the KV cache gives the same logits as no-cache forwards (the dynamic-NTK cache
bug does not exist here, while stock transformers' "dynamic" rope has it); longrope switches like stock
transformers; LongRoPE start tokens keep the unscaled rotation."""

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from ctxext.models import apply_spec, wrap_model
from ctxext.models.attention import GROUP, POSITIONS_ATTR
from ctxext.models.rope import TorchFreqs, cos_sin
from ctxext.models.tiny import WINDOW, tiny_model
from ctxext.scaling import RopeFreqs, RopeShape, hf_rope_fields, parse_spec
from ctxext.scaling.longrope import longrope_attention_factor
from tiny_ids import ids_for

PROMPT, END = 40, WINDOW + 2 * GROUP + 20  # from inside the window to three frequency buckets past it


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.inference_mode()
def cached_steps(model, ids, prompt):
    """Prefill `prompt` tokens, then one token per step with a DynamicCache: logits predicting each next token
    (positions prompt−1 … n−2)."""
    cache = DynamicCache(config=model.config)
    out = [model(ids[:, :prompt], past_key_values=cache, use_cache=True).logits[:, -1]]
    for t in range(prompt, ids.shape[1] - 1):
        out.append(model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits[:, -1])
    return torch.stack(out, 1)


@torch.inference_mode()
def prefix_forwards(model, ids, prompt, every=1):
    """No-cache forward over each prefix ids[:, :t+1], last logits (positions prompt−1 … n−2, every `every`)."""
    steps = list(range(prompt - 1, ids.shape[1] - 1, every))
    return steps, torch.stack([model(ids[:, :t + 1], use_cache=False).logits[:, -1] for t in steps], 1)


def stock_twin(model, rope_parameters, max_pos, attn="sdpa"):
    cfg = copy.deepcopy(model.config)
    kept = model.config.rope_parameters
    if "partial_rotary_factor" in kept:
        rope_parameters = {**rope_parameters, "partial_rotary_factor": kept["partial_rotary_factor"]}
    cfg.rope_parameters, cfg.max_position_embeddings = rope_parameters, max_pos
    stock = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation=attn).eval()
    stock.load_state_dict(model.state_dict())
    return stock


# ------------------------------------------------------------------------------------------- dynamic


@pytest.mark.parametrize("arch,text", [("llama", "dynamic-ntk:factor=4"), ("llama", "dynamic-yarn"),
                                       ("phi3", "dynamic-ntk:factor=4"), ("phi3", "dynamic-yarn"),
                                       ("mistral", "dynamic-ntk:factor=2"), ("qwen2", "dynamic-yarn"),
                                       ("qwen3", "dynamic-ntk:factor=4"), ("llama-eager", "dynamic-ntk:factor=4")])
def test_dynamic_cache_equals_no_cache_past_the_window(arch, text):
    arch, _, attn = arch.partition("-")
    model = tiny_model(arch, attn=attn or "sdpa")
    lm = wrap_model(model)
    ids = ids_for(END)
    with torch.inference_mode():
        plain = model(ids, use_cache=False).logits
    apply_spec(lm, parse_spec(text))
    with torch.inference_mode():
        full = model(ids, use_cache=False).logits  # causal: position j saw the frequencies of length j+1
    cached = cached_steps(model, ids, PROMPT)
    ours = (cached - full[:, PROMPT - 1:-1]).abs().max().item()
    assert ours < 1e-4, f"{arch} {text}: cached vs no-cache {ours:.2e}"
    steps, prefixes = prefix_forwards(model, ids, PROMPT, every=37)  # a prefix forward is the same forward
    assert (prefixes - full[:, steps]).abs().max().item() < 1e-4
    assert (full[:, :WINDOW] - plain[:, :WINDOW]).abs().max().item() < 1e-5  # inside the window: the model as is
    assert (full[:, WINDOW + 8:] - plain[:, WINDOW + 8:]).abs().max().item() > 1e-2  # past it: scaled

    if text.startswith("dynamic-ntk"):  # stock transformers' "dynamic" on the same weights has the cache bug
        rp, max_pos = hf_rope_fields(parse_spec(text), lm.info.rope_shape)
        stock = stock_twin(model, rp, max_pos, attn or "sdpa")
        stock_cached = cached_steps(stock, ids, PROMPT)
        steps, stock_prefix = prefix_forwards(stock, ids, PROMPT, every=5)
        stock_gap = (stock_cached[:, [s - PROMPT + 1 for s in steps]] - stock_prefix).abs().max().item()
        assert stock_gap > 10 * max(ours, 1e-6), f"stock {stock_gap:.2e} vs ours {ours:.2e}"


def test_dynamic_generate_with_left_padding():
    """HF generate (its own cache and position ids) on a left-padded batch gives, per row, the logits of an
    unpadded no-cache forward — key positions, not cache slots, drive the rotation."""
    model = tiny_model("llama")
    lm = wrap_model(model)
    apply_spec(lm, parse_spec("dynamic-ntk:factor=4"))
    a, b = ids_for(30, seed=5), ids_for(45, seed=6)
    x = torch.cat([torch.cat([torch.zeros(1, 15, dtype=torch.long), a], 1), b])
    mask = torch.ones_like(x)
    mask[0, :15] = 0
    new = 130
    with torch.inference_mode():
        g = model.generate(x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        steps = torch.stack(g.logits, 1)
        for row, pad in ((0, 15), (1, 0)):
            full = model(g.sequences[row:row + 1, pad:], use_cache=False).logits[:, -new - 1:-1]
            assert (steps[row:row + 1] - full).abs().max().item() < 1e-4
        # a padded no-cache forward (several rows, several buckets in one block loop) agrees too
        m2 = torch.cat([mask, torch.ones(2, new, dtype=torch.long)], 1)
        padded = model(g.sequences, attention_mask=m2, position_ids=(m2.cumsum(-1) - 1).clamp(min=0)).logits
        alone = model(g.sequences[:1, 15:], use_cache=False).logits
        assert (padded[0, 15:] - alone[0]).abs().max().item() < 1e-4


def test_dynamic_sliding_window_and_cache_crop():
    model = tiny_model("mistral", sliding_window=24)
    lm = wrap_model(model)
    apply_spec(lm, parse_spec("dynamic-ntk:factor=4"))
    ids = ids_for(END)
    with torch.inference_mode():
        full = model(ids, use_cache=False).logits
    assert (cached_steps(model, ids, 30) - full[:, 29:-1]).abs().max().item() < 1e-4

    model = tiny_model("llama")
    lm = wrap_model(model)
    apply_spec(lm, parse_spec("dynamic-yarn"))
    with torch.inference_mode():
        full = model(ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        model(ids[:, :150], past_key_values=cache, use_cache=True)
        cache.crop(-50)  # drop the last 50 tokens, then re-feed them
        out = model(ids[:, 100:160], past_key_values=cache, use_cache=True).logits
        assert cache.__dict__[POSITIONS_ATTR][0].tolist() == [list(range(160))]
    assert (out - full[:, 100:160]).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------------ longrope


def longrope_spec(n_pairs, start_tokens=0, short=False):
    long = np.round(np.linspace(1.0, 6.0, n_pairs), 2)
    text = "longrope:factor=4,long_factor=[" + ",".join(map(str, long)) + "]"
    if short:
        text += ",short_factor=[" + ",".join(map(str, np.round(np.linspace(1.0, 1.5, n_pairs), 2))) + "]"
    return parse_spec(text + (f",start_tokens={start_tokens}" if start_tokens else ""))


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_longrope_switches_like_stock_and_caches_exactly(arch):
    model = tiny_model(arch)
    lm = wrap_model(model)
    spec = longrope_spec(lm.info.rope_shape.n_pairs, short=True)
    apply_spec(lm, spec)
    stock = stock_twin(model, *hf_rope_fields(spec, lm.info.rope_shape))
    ids = ids_for(120)
    with torch.inference_mode():
        for n in (50, WINDOW, WINDOW + 1, 120):  # short factors up to L, long past it
            diff = (model(ids[:, :n]).logits - stock(ids[:, :n]).logits).abs().max().item()
            assert diff < 1e-5, f"{arch} length {n}: {diff:.2e}"
        short = model(ids[:, :WINDOW + 1]).logits[:, WINDOW - 1]
        assert (short - model(ids[:, :WINDOW]).logits[:, -1]).abs().max().item() > 1e-3  # the switch happened
    # prompt already past L: every forward uses the long factors, cache == no cache
    steps, prefixes = prefix_forwards(model, ids, 80)
    assert (cached_steps(model, ids, 80) - prefixes).abs().max().item() < 1e-4


def test_longrope_rerotates_cached_keys_when_crossing_the_window():
    """Crossing L during decoding switches every cached key to the long factors. In a 1-layer model that makes
    the cache exact; deeper, the cached values of layers ≥ 1 were computed under the short factors (no cache
    can fix that without re-encoding), yet the gap stays well below stock transformers'."""
    gaps = {}
    for layers in (1, 2):
        model = tiny_model("llama", num_hidden_layers=layers)
        lm = wrap_model(model)
        spec = longrope_spec(lm.info.rope_shape.n_pairs)
        apply_spec(lm, spec)
        stock = stock_twin(model, *hf_rope_fields(spec, lm.info.rope_shape))
        ids = ids_for(110)
        _, ours_ref = prefix_forwards(model, ids, PROMPT)
        _, stock_ref = prefix_forwards(stock, ids, PROMPT)
        gaps[layers] = ((cached_steps(model, ids, PROMPT) - ours_ref).abs().max().item(),
                        (cached_steps(stock, ids, PROMPT) - stock_ref).abs().max().item())
    assert gaps[1][0] < 1e-4 < 0.1 < gaps[1][1], gaps
    assert gaps[2][0] < gaps[2][1] / 2, gaps


def test_start_tokens_keep_unscaled_rotation():
    shape = RopeShape(16, 10000.0, 64)
    theta = shape.theta()
    f = np.linspace(1, 6, 8)
    tf = TorchFreqs.of(RopeFreqs(theta / f, 1.2, 4), theta)
    pos = torch.arange(10)[None]
    cos, sin = cos_sin(pos, tf, torch.float32)
    p = np.arange(10)[:, None]
    angle = np.where(p < 4, p * theta, p * theta / f)
    angle = np.concatenate([angle, angle], -1)
    assert np.allclose(cos[0].numpy(), 1.2 * np.cos(angle), atol=1e-6)
    assert np.allclose(sin[0].numpy(), 1.2 * np.sin(angle), atol=1e-6)

    # end to end: a stock model fed the same per-position table gives the same logits (short and long)
    model = tiny_model("llama")
    lm = wrap_model(model)
    spec = longrope_spec(8, start_tokens=4, short=True)
    apply_spec(lm, spec)
    ref = copy.deepcopy(model)
    apply_spec(wrap_model(ref), parse_spec("default"))

    class Table(torch.nn.Module):
        def __init__(self, factors, m):
            super().__init__()
            self.factors, self.m = factors, m

        def forward(self, x, position_ids):
            p = position_ids[0, :, None].double().numpy()
            a = np.where(p < 4, p * theta, p * theta / self.factors)
            a = torch.tensor(np.concatenate([a, a], -1), dtype=torch.float32)[None]
            return (a.cos() * self.m).to(x.dtype), (a.sin() * self.m).to(x.dtype)

    m = longrope_attention_factor(4.0, WINDOW)
    ids = ids_for(100)
    for n, factors in ((50, np.asarray(spec.params.short_factor)), (100, np.asarray(spec.params.long_factor))):
        ref.model.rotary_emb = Table(factors, m)
        with torch.inference_mode():
            diff = (model(ids[:, :n]).logits - ref(ids[:, :n]).logits).abs().max().item()
        assert diff < 1e-5, f"length {n}: {diff:.2e}"
