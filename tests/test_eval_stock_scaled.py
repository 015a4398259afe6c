"""`default` on a checkpoint whose own config scales RoPE by length (a longrope or dynamic export, Phi-3-128k):
the runner must not reuse a longer forward's logits or a cached prefix across the point where stock transformers
changes the frequencies."""

from __future__ import annotations

import pytest

from ctxext.evals import run_eval
from ctxext.evals.runner import same_freqs_of
from ctxext.export import export
from ctxext.fixtures import HELD_OUT_BOOK, books_dir
from ctxext.models.info import model_info
from ctxext.scaling import parse_spec

pytestmark = pytest.mark.usefixtures("one_thread")
LONG = "longrope:factor=4,long_factor=[" + ",".join(f"{1 + 3 * i / 15:.3f}" for i in range(16)) + "]"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = {}
    for name, spec in (("longrope", LONG), ("dynamic", "dynamic-ntk:factor=4")):
        out[name] = tmp_path_factory.mktemp(name) / "ckpt"
        export("tiny-rope", spec, out[name], verify_tokens=100)
    return out


def test_default_follows_the_checkpoints_own_switch(exported):
    default = parse_spec("default")
    longrope = same_freqs_of(default, model_info(str(exported["longrope"])))  # trained window 256
    assert longrope(100, 256) and longrope(300, 600) and not longrope(200, 512) and not longrope(1, 257)
    dynamic = same_freqs_of(default, model_info(str(exported["dynamic"])))
    assert dynamic(100, 200) and not dynamic(200, 512) and not dynamic(1, 300)
    assert same_freqs_of(default, model_info("tiny-rope"))(200, 512)  # an unscaled checkpoint: always


def test_short_length_perplexity_is_its_own_forward(exported, tmp_path):
    """A 200-token window of the longrope export is scored with the short factors whether or not a 512-token
    length runs beside it (before: a slice of the 512-token forward, which uses the long ones)."""
    book = str(books_dir() / HELD_OUT_BOOK)

    def ppl_at_200(lengths: list[int], out: str) -> list[float]:
        res = run_eval(str(exported["longrope"]), ["default"], ["ppl"], lengths, samples=2, data=[book], bucket=50,
                       out=tmp_path / out, progress=False, log=lambda m: None)
        return [r["value"] for r in res["records"] if r["task"] == "ppl" and r["length"] == 200]

    alone, beside = ppl_at_200([200], "alone"), ppl_at_200([200, 512], "beside")
    assert alone and alone == pytest.approx(beside, rel=1e-6)


def test_stock_dynamic_runs_each_forward_as_a_fresh_model(exported):
    """transformers' dynamic NTK keeps the frequencies of the longest forward so far: after a 1,024-token forward a
    600-token one ran with the 1,024-token base. Under `default` each forward now runs as in a fresh model."""
    import torch

    from ctxext.models import apply_spec, load_model

    ids = torch.randint(3, 2000, (1, 1024), generator=torch.Generator().manual_seed(0))
    fresh = load_model(str(exported["dynamic"]))
    with torch.inference_mode():
        want = fresh.model(ids[:, :600]).logits
        lm = load_model(str(exported["dynamic"]))
        apply_spec(lm, parse_spec("default"))
        lm.model(ids)
        got = lm.model(ids[:, :600]).logits
        assert torch.equal(got, want)
        apply_spec(lm, parse_spec("yarn:factor=2"))  # the hook goes with the spec
        apply_spec(lm, parse_spec("default"))
        assert torch.equal(lm.model(ids[:, :600]).logits, want)
        fresh.model(ids)
        assert not torch.allclose(fresh.model(ids[:, :600]).logits, want)  # what stock does without the reset


@pytest.mark.parametrize("cfg,window", [
    ({"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 4.0}}, 16384),  # vicuna-16k style
    ({"max_position_embeddings": 256, "rope_parameters": {"rope_type": "linear", "factor": 2.0}}, 512),
    ({"max_position_embeddings": 1024, "rope_parameters": {"rope_type": "yarn", "factor": 4.0,
                                                           "original_max_position_embeddings": 256}}, 1024),
    ({"max_position_embeddings": 256, "rope_parameters": {"rope_type": "yarn", "factor": 4.0,
                                                          "original_max_position_embeddings": 256}}, 1024),
    ({"max_position_embeddings": 131072, "rope_parameters": {"rope_type": "llama3", "factor": 8.0,
                                                             "original_max_position_embeddings": 8192}}, 131072),
])
def test_own_window_of_a_self_scaled_checkpoint(cfg, window):
    """A linear config keeps the pre-scaling length in max_position_embeddings (as vLLM reads it): it was made for
    that × its factor (it read 4,096 for a 16k checkpoint: plan said 'made for 4,096 tokens' beside a 16k reach)."""
    from ctxext.models.stock_rope import own_window

    assert own_window(cfg) == window
