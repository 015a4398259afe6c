"""ALiBi (BLOOM): apply_spec sets the slopes this model uses, per instance, with and without a padding mask."""

import pytest
import torch
import transformers.models.bloom.modeling_bloom as bloom

from ctxext.errors import CtxextError
from ctxext.models import apply_spec, wrap_model
from ctxext.models.tiny import tiny_model
from ctxext.scaling import parse_spec, resolve_alibi


pytestmark = pytest.mark.usefixtures("one_thread")


def run(model, ids, mask=None):
    with torch.inference_mode():
        return model(ids, attention_mask=mask).logits


@pytest.fixture
def setup():
    model = tiny_model("bloom")
    ids = torch.randint(3, 96, (2, 100), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :10] = 0  # left padding on row 0
    return model, wrap_model(model), ids, mask


def test_info_reports_alibi(setup):
    _, lm, _, _ = setup
    assert lm.info.encoding == "alibi" and lm.info.rope_shape is None
    assert lm.info.n_heads == 4 and lm.info.trained_len == 64


def test_default_slopes_reproduce_stock_logits(setup):
    model, lm, ids, mask = setup
    before, before_masked = run(model, ids), run(model, ids, mask)
    apply_spec(lm, parse_spec("alibi-interp:factor=1"))  # ctxext's slopes, equal to the model's own
    assert "forward" in model.transformer.__dict__
    assert (run(model, ids) - before).abs().max().item() < 1e-6
    assert (run(model, ids, mask) - before_masked).abs().max().item() < 1e-6
    apply_spec(lm, parse_spec("default"))
    assert "forward" not in model.transformer.__dict__ and "build_alibi_tensor" not in model.transformer.__dict__
    assert torch.equal(run(model, ids), before) and torch.equal(run(model, ids, mask), before_masked)


@pytest.mark.parametrize("heads", [4, 12, 48])
@pytest.mark.parametrize("text", ["alibi-interp:factor=1", "ntk-alibi:factor=1"])
def test_factor_one_is_the_stock_model_bit_for_bit(heads, text):
    """BLOOM computes its slopes as float32 powers, a few ulps off the exact values for 12 or 48 heads (2.4e-6 in the
    logits before); ctxext's slopes are taken on BLOOM's own, so factor=1 runs the stock model exactly."""
    model = tiny_model("bloom", n_head=heads, hidden_size=8 * heads)
    ids = torch.randint(3, 96, (1, 80), generator=torch.Generator().manual_seed(2))
    before = run(model, ids)
    apply_spec(wrap_model(model), parse_spec(text))
    assert "forward" in model.transformer.__dict__ and torch.equal(run(model, ids), before)


@pytest.mark.parametrize("text", ["alibi-interp:factor=4", "ntk-alibi:factor=4"])
def test_changed_slopes_equal_a_model_built_with_them(setup, monkeypatch, text):
    model, lm, ids, mask = setup
    before = run(model, ids)
    spec = parse_spec(text)
    apply_spec(lm, spec)
    got, got_masked = run(model, ids), run(model, ids, mask)
    assert (got - before).abs().max().item() > 1e-2
    # reference: the stock code path with its slope function returning these slopes (test-only global patch)
    apply_spec(lm, parse_spec("default"))
    slopes = torch.tensor(resolve_alibi(spec, 4), dtype=torch.float32)
    monkeypatch.setattr(bloom, "_get_alibi_slopes", lambda n, device: slopes.to(device))
    assert (run(model, ids) - got).abs().max().item() < 1e-6
    assert (run(model, ids, mask) - got_masked).abs().max().item() < 1e-6


def test_cached_generation_uses_the_slopes(setup):
    model, lm, ids, _ = setup
    apply_spec(lm, parse_spec("ntk-alibi:factor=2"))
    with torch.inference_mode():
        g = model.generate(ids[:1, :20], max_new_tokens=40, min_new_tokens=40, do_sample=False, output_logits=True,
                           return_dict_in_generate=True, pad_token_id=0)
        full = model(g.sequences).logits[:, 19:-1]
    assert (torch.stack(g.logits, 1) - full).abs().max().item() < 1e-4


def test_a_static_cache_takes_the_slopes_too(setup):
    """With a StaticCache the no-mask path made a mask of cache + input keys, narrower than the static cache's
    causal mask: every non-default spec crashed (generate(cache_implementation="static") drops an all-ones mask)."""
    model, lm, ids, _ = setup
    apply_spec(lm, parse_spec("ntk-alibi:factor=2"))
    with torch.inference_mode():
        kw = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
        static = model.generate(ids[:1, :20], cache_implementation="static", **kw)
        dynamic = model.generate(ids[:1, :20], **kw)
    assert torch.equal(static, dynamic)


def test_rope_specs_are_refused(setup):
    _, lm, _, _ = setup
    with pytest.raises(CtxextError, match="does not fit this model's position encoding"):
        apply_spec(lm, parse_spec("yarn:factor=2"))
    assert lm.spec is None
