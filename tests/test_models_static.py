"""Static RoPE methods applied in memory equal stock transformers models whose config carries the same rope;
`default` restores the model exactly; specs replace each other cleanly; refusals happen before any change."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from ctxext.errors import CtxextError
from ctxext.models import apply_spec, wrap_model
from ctxext.models.apply import find_rotary
from ctxext.models.rope import ScaledRotary
from ctxext.models.tiny import tiny_model
from ctxext.scaling import REGISTRY, hf_rope_fields, parse_spec

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "phi3", "cohere"]
STATIC = ["linear:factor=2", "ntk:factor=4", "abf:base=500", "yarn:factor=4", "yarn:factor=8,beta_fast=16",
          "llama3:factor=4", "ntk-by-parts:factor=4"]
SEQ = 150  # > 2 × the window of 64: both interpolated and extrapolated positions


pytestmark = pytest.mark.usefixtures("one_thread")


def logits(model, ids):
    with torch.inference_mode():
        return model(ids, use_cache=False).logits


def stock_twin(model, spec, shape):
    """A stock transformers model with the same weights and the spec's HF rope fields in its config."""
    rope_parameters, max_pos = hf_rope_fields(spec, shape)
    kept = model.config.rope_parameters
    if "partial_rotary_factor" in kept:
        rope_parameters = {**rope_parameters, "partial_rotary_factor": kept["partial_rotary_factor"]}
    cfg = copy.deepcopy(model.config)
    cfg.rope_parameters, cfg.max_position_embeddings = rope_parameters, max_pos
    stock = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
    stock.load_state_dict(model.state_dict())
    return stock


def test_static_list_covers_every_static_rope_method():
    static = {n for n, m in REGISTRY.items() if "rope" in m.encodings and not m.length_dependent and n != "default"}
    assert static == {s.split(":")[0] for s in STATIC}


@pytest.mark.parametrize("arch", ARCHS)
def test_static_methods_match_stock_transformers(arch):
    model = tiny_model(arch)
    lm = wrap_model(model)
    ids = torch.randint(3, 96, (2, SEQ), generator=torch.Generator().manual_seed(1))
    before = logits(model, ids)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for text in STATIC:
        spec = parse_spec(text)
        apply_spec(lm, spec)
        assert lm.spec == spec and isinstance(find_rotary(model)[2], ScaledRotary)
        got = logits(model, ids)
        want = logits(stock_twin(model, spec, lm.info.rope_shape), ids)
        diff = (got - want).abs().max().item()
        assert diff < 1e-5, f"{arch} {text}: max |logit diff| vs stock {diff:.2e}"
        assert (got - before).abs().max().item() > 1e-2, f"{arch} {text} changed nothing"
    assert model.state_dict().keys() == state.keys()  # non-persistent buffers: save_pretrained writes stock weights
    apply_spec(lm, parse_spec("default"))
    assert torch.equal(logits(model, ids), before)
    assert type(find_rotary(model)[2]).__name__.endswith("RotaryEmbedding")


@pytest.mark.parametrize("arch", ARCHS)
def test_the_models_own_base_changes_nothing(arch):
    """abf at the base the model was trained with is the model as loaded, in whichever layout its rotary module
    writes its tables (Cohere interleaves them: ctxext's half-by-half tables moved its logits by 0.36)."""
    model = tiny_model(arch)
    lm = wrap_model(model)
    ids = torch.randint(3, 96, (1, SEQ), generator=torch.Generator().manual_seed(2))
    before = logits(model, ids)
    apply_spec(lm, parse_spec(f"abf:base={model.config.rope_parameters['rope_theta']:g}"))
    assert isinstance(find_rotary(model)[2], ScaledRotary)
    assert torch.equal(logits(model, ids), before)


def test_partial_rotary_leaves_pass_through_channels():
    model = tiny_model("phi3")  # head_dim 16, partial_rotary_factor 0.5
    lm = wrap_model(model)
    assert lm.info.rope_shape.rotary_dim == 8 and lm.info.rope_shape.original_len == 64
    apply_spec(lm, parse_spec("linear:factor=4"))
    x = torch.zeros(1, 1, 5)
    cos, sin = model.model.rotary_emb(x, torch.arange(5)[None])
    assert cos.shape == (1, 5, 8)


def test_specs_replace_each_other():
    model = tiny_model("llama")
    lm = wrap_model(model)
    ids = torch.randint(3, 96, (1, 100), generator=torch.Generator().manual_seed(2))
    apply_spec(lm, parse_spec("linear:factor=4"))
    linear = logits(model, ids)
    for text in ("yarn:factor=2", "dynamic-ntk:factor=2", "longrope:factor=4,long_factor=[" + ",".join(["3"] * 8) + "]"):
        apply_spec(lm, parse_spec(text))
    apply_spec(lm, parse_spec("linear:factor=4"))
    assert torch.equal(logits(model, ids), linear)
    attn = model.model.layers[0].self_attn
    assert "forward" not in attn.__dict__ and not hasattr(attn, "_ctxext_plan")


def test_refusals_leave_the_model_untouched():
    model = tiny_model("llama")
    lm = wrap_model(model)
    apply_spec(lm, parse_spec("yarn:factor=2"))
    ids = torch.randint(3, 96, (1, 80), generator=torch.Generator().manual_seed(3))
    before = logits(model, ids)
    for text, needle in [("ntk-alibi:factor=2", "does not fit"), ("alibi-interp:factor=2", "does not fit"),
                         ("longrope:factor=4,long_factor=[1,2,3]", "has 3 values; this model has 8 rotary pairs")]:
        with pytest.raises(CtxextError, match=needle.replace("[", r"\[")):
            apply_spec(lm, parse_spec(text))
    assert lm.spec.method == "yarn" and torch.equal(logits(model, ids), before)


def test_original_length_override_is_used():
    model = tiny_model("llama")
    lm = wrap_model(model)
    ids = torch.randint(3, 96, (1, 120), generator=torch.Generator().manual_seed(4))
    apply_spec(lm, parse_spec("yarn:factor=4,original_max_position_embeddings=32"))
    got = logits(model, ids)
    want = logits(stock_twin(model, parse_spec("yarn:factor=4,original_max_position_embeddings=32"),
                             lm.info.rope_shape), ids)
    assert (got - want).abs().max().item() < 1e-5
    apply_spec(lm, parse_spec("yarn:factor=4"))
    assert (logits(model, ids) - got).abs().max().item() > 1e-3


def test_tiny_config_overrides_reach_what_they_derive():
    """Overrides were set after the config was built: Qwen2's use_sliding_window / max_window_layers left its layer
    types all full attention, so a 'mixed layers' model built so tested nothing of the kind."""
    from ctxext.models.tiny import tiny_config

    cfg = tiny_config("qwen2", use_sliding_window=True, sliding_window=32, max_window_layers=1)
    assert cfg.layer_types == ["full_attention", "sliding_attention"]
