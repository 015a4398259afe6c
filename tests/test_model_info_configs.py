"""The position encoding comes from the config, not only the type name: Falcon with `alibi: true` and MPT
(ALiBi by default) are ALiBi models, which ctxext cannot scale, so every entry point refuses them in one line
before any weights; MPT's differently named size keys are read; unreadable sizes are one-line errors."""

from pathlib import Path

import pytest
import torch
import transformers

from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.models import load_model, model_info
from ctxext.models.alibi import uses_alibi
from ctxext.models.info import estimate_params, info_from_config

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(vocab_size=96)


def falcon(alibi: bool) -> dict:
    return transformers.FalconConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, alibi=alibi,
                                     max_position_embeddings=256, **SMALL).to_dict()


def mpt(**attn) -> dict:
    return transformers.MptConfig(d_model=64, n_heads=4, n_layers=2, max_seq_len=256, attn_config=attn or None,
                                  **SMALL).to_dict()


@pytest.fixture
def no_weights(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


def _refused(fn, needle: str) -> str:
    with pytest.raises(CtxextError, match=needle) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_encoding_is_read_from_the_config():
    assert uses_alibi(falcon(alibi=True)) and not uses_alibi(falcon(alibi=False))
    assert uses_alibi(mpt()) and uses_alibi(mpt(alibi=True)) and not uses_alibi(mpt(alibi=False))
    assert uses_alibi({"model_type": "bloom"}) and not uses_alibi({"model_type": "llama", "alibi": True})


@pytest.mark.parametrize("cfg,model_type", [(falcon(alibi=True), "falcon"), (mpt(), "mpt")])
def test_alibi_models_ctxext_cannot_scale_are_refused(cfg, model_type):
    # Falcon-ALiBi also carries rope_parameters: before the fix it was read as a RoPE model
    msg = _refused(lambda: info_from_config(cfg, "m", "m"), f"model type '{model_type}' uses ALiBi")
    assert "'bloom'" in msg and "not supported" in msg


def test_falcon_with_rotary_is_still_rope():
    info = info_from_config(falcon(alibi=False), "m", "m")
    assert info.encoding == "rope" and info.rope_shape.rotary_dim == 16 and info.trained_len == 256


def test_mpt_without_alibi_is_a_one_line_refusal():
    _refused(lambda: info_from_config(mpt(alibi=False), "m", "m"), "uses neither RoPE nor ALiBi")


def test_mpt_sizes_are_read_from_its_keys():
    torch.manual_seed(0)
    cfg = transformers.MptConfig(d_model=64, n_heads=4, n_layers=2, max_seq_len=256, **SMALL)
    n_real = sum(p.numel() for p in transformers.MptForCausalLM(cfg).parameters())
    n_est = estimate_params(cfg.to_dict())
    assert abs(n_est - n_real) / n_real < 0.05, (n_est, n_real)


@pytest.mark.parametrize("drop,key", [("num_attention_heads", "num_attention_heads"),
                                      ("num_hidden_layers", "num_hidden_layers"),
                                      ("hidden_size", "hidden_size"), ("vocab_size", "vocab_size")])
def test_unreadable_sizes_are_one_line_errors(drop, key):
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, head_dim=16,
                                   max_position_embeddings=64, **SMALL).to_dict()
    cfg[drop] = None
    _refused(lambda: info_from_config(cfg, "m", "m"), f"m: .*{key}")


@pytest.mark.parametrize("make,model_type", [
    (lambda: transformers.FalconConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, alibi=True,
                                       **SMALL), "falcon"),
    (lambda: transformers.MptConfig(d_model=64, n_heads=4, n_layers=2, max_seq_len=256, **SMALL), "mpt"),
])
def test_commands_refuse_before_weights(tmp_path, no_weights, capsys, make, model_type):
    make().save_pretrained(tmp_path)  # config.json only
    for fn in (model_info, load_model):
        _refused(lambda: fn(str(tmp_path)), f"model type '{model_type}' uses ALiBi")
    assert main(["plan", "--model", str(tmp_path), "--target", "1024"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"'{model_type}' uses ALiBi" in err
    out_dir = Path(tmp_path) / "export"
    assert main(["export", "--model", str(tmp_path), "--scaling", "yarn:factor=4", "--out", str(out_dir)]) == 2
    assert not out_dir.exists() and f"'{model_type}' uses ALiBi" in capsys.readouterr().err
