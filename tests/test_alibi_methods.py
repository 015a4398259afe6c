"""The ALiBi family on BLOOM (a tiny config and the trained tiny-alibi fixture): the slopes of METHODS.md's
reference lists reach the model's bias, and generation with the KV cache gives the same tokens and logits as
no-cache forwards for default, alibi-interp and ntk-alibi (also with left padding)."""

import numpy as np
import pytest
import torch

from ctxext.models import apply_spec, load_model, wrap_model
from ctxext.models.tiny import tiny_model
from ctxext.scaling import parse_spec, resolve_alibi

SPECS = ("default", "alibi-interp:factor=4", "ntk-alibi:factor=4")
# METHODS.md: H = 8 → 2^-1 … 2^-8; H = 12 → the 8-head list, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5;
# NTK-ALiBi H = 8, a = 2 → 0.5, 0.226431, 0.102542, 0.046437, 0.021030, 0.009524, 0.004313, 0.001953.
REFERENCE = {
    ("default", 8): [2.0 ** -k for k in range(1, 9)],
    ("default", 12): [2.0 ** -k for k in range(1, 9)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5],
    ("ntk-alibi:factor=2", 8): [0.5, 0.226431, 0.102542, 0.046437, 0.021030, 0.009524, 0.004313, 0.001953],
    ("alibi-interp:factor=2", 8): [2.0 ** -k / 2 for k in range(1, 9)],
}


pytestmark = pytest.mark.usefixtures("one_thread")


def bias_slopes(model, heads):
    """The per-head slopes the patched model really adds: its ALiBi tensor at key index 1."""
    base = model.transformer
    mask = torch.ones(1, 3, dtype=torch.long)
    return base.build_alibi_tensor(mask, heads, torch.float32)[:, 0, 1].double().numpy()


@pytest.mark.parametrize("spec,heads", list(REFERENCE))
def test_reference_slopes_reach_the_model(spec, heads):
    model = tiny_model("bloom", n_head=heads, hidden_size=8 * heads)
    lm = wrap_model(model)
    apply_spec(lm, parse_spec(spec))
    want = resolve_alibi(parse_spec(spec), heads)
    np.testing.assert_allclose(want, REFERENCE[(spec, heads)], atol=1e-6)  # the list has 6 decimals
    np.testing.assert_allclose(bias_slopes(model, heads), want, rtol=1e-6)  # float32 in the model


def generate_matches_no_cache(model, ids, mask, new):
    with torch.inference_mode():
        g = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        steps = torch.stack(g.logits, 1)
        eos = model.generation_config.eos_token_id
        for row in range(ids.shape[0]):
            pad = int((mask[row] == 0).sum())
            seq = g.sequences[row:row + 1, pad:]
            full = model(seq).logits[:, -new - 1:-1]
            assert (steps[row:row + 1] - full).abs().max().item() < 1e-4
            # greedy over no-cache logits picks the generated tokens (EOS is barred by min_new_tokens)
            assert torch.equal(full.index_fill(-1, torch.tensor([eos]), -1e9).argmax(-1), seq[:, -new:])


@pytest.mark.parametrize("spec", SPECS)
def test_tiny_bloom_cache_equals_no_cache_with_padding(spec):
    model = tiny_model("bloom")  # window 64: 20-token prompts + 100 new tokens reach ~2× past it
    apply_spec(wrap_model(model), parse_spec(spec))
    ids = torch.randint(3, 96, (2, 30), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    ids[0, :10], mask[0, :10] = 0, 0  # left padding on row 0
    generate_matches_no_cache(model, ids, mask, 100)


@pytest.mark.parametrize("spec", SPECS)
def test_fixture_cache_equals_no_cache_past_the_window(spec):
    from ctxext.fixtures import WINDOW, fixture_path

    lm = load_model(str(fixture_path("tiny-alibi")))
    apply_spec(lm, parse_spec(spec))
    ids = torch.as_tensor([lm.tokenizer("The sky is blue. The pass key is 12345.")["input_ids"]])
    generate_matches_no_cache(lm.model, ids, torch.ones_like(ids), WINDOW + 64)
