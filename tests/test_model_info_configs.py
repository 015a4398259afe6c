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


@pytest.mark.parametrize("make", [
    lambda: transformers.MixtralConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                       num_key_value_heads=2, num_hidden_layers=2, num_local_experts=8, **SMALL),
    lambda: transformers.Qwen2MoeConfig(hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                                        shared_expert_intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                                        num_hidden_layers=2, num_experts=6, **SMALL),
    lambda: transformers.FalconConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, **SMALL),
])
def test_the_estimate_counts_every_expert_and_falcons_shared_kv_head(make):
    """Mixtral was counted with one MLP (7.2B for 46.7B: the memory refusal passed what cannot fit); Falcon's
    multi-query attention was read as 4 key/value heads of 4 (falcon-7b: 71 for 1)."""
    cfg = make()
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    real = sum(p.numel() for p in model.parameters())
    d = cfg.to_dict()
    assert estimate_params(d) == pytest.approx(real, rel=0.03)
    if d["model_type"] == "falcon":
        assert info_from_config(d, "f", "f").n_kv_heads == 1


def test_the_count_comes_from_the_weights_headers(tmp_path):
    """Families the config formula misjudges (Phi-2 +30 %: here 82,240 for 70,944) are counted exactly from the
    files transformers loads; a consolidated.safetensors beside them (Mistral's releases) is not counted again."""
    import shutil

    cfg = transformers.PhiConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_hidden_layers=2,
                                 max_position_embeddings=256, vocab_size=96, bos_token_id=1, eos_token_id=2)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(tmp_path / "m")
    from ctxext.models.info import counted_params

    real = sum(p.numel() for p in model.parameters())
    assert estimate_params(cfg.to_dict()) != real  # the formula alone is off for this family
    shutil.copy(tmp_path / "m" / "model.safetensors", tmp_path / "m" / "consolidated.safetensors")
    assert counted_params(tmp_path / "m") == real and model_info(str(tmp_path / "m")).n_params == real
    assert counted_params(tmp_path) is None  # no weights files
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")  # an index and its shards, each once
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert counted_params(tmp_path / "sharded") == real


def test_missing_weights_and_remote_code_are_refused(tmp_path):
    """A checkpoint whose tensor names do not match loaded with random weights and scored (ppl 2,086 for 41.8); a
    folder that needs its own Python code brought up transformers' prompt (and ran the code on 'y')."""
    import json

    from safetensors.torch import load_file, save_file

    src = Path(model_info("tiny-rope").path)
    m = tmp_path / "renamed"
    m.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            (m / f.name).write_bytes(f.read_bytes())
    w = load_file(src / "model.safetensors")
    save_file({"prefix." + k: v for k, v in w.items()}, m / "model.safetensors")
    with pytest.raises(CtxextError, match=r"weight\(s\) the model needs are not in its files .*they would be random"):
        load_model(str(m))

    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "my_own_arch", "auto_map": {
        "AutoConfig": "configuration_mine.MyConfig"}, "hidden_size": 64}))
    (remote / "configuration_mine.py").write_text('raise SystemExit("the folder\'s code ran")\n')
    with pytest.raises(CtxextError, match="needs the folder's own Python code .* never runs a model's code"):
        model_info(str(remote))


def test_gptj_is_named_a_rope_model_ctxext_cannot_rescale():
    """It was refused as 'uses neither RoPE nor ALiBi', which GPT-J does (rotary_dim, in its own attention code)."""
    cfg = transformers.GPTJConfig(n_embd=64, n_head=4, n_layer=2, rotary_dim=16, **SMALL).to_dict()
    with pytest.raises(CtxextError, match="model type 'gptj' rotates positions in its own attention code"):
        info_from_config(cfg, "gptj", "gptj")


def test_a_tokenizer_that_needs_the_folders_code_is_refused_in_one_line(tmp_path):
    """It ended in transformers' ValueError traceback after the weights had loaded."""
    import json

    from ctxext.models.load import load_tokenizer

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "MyTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_mine.MyTokenizer", None]}}))
    (tmp_path / "tokenization_mine.py").write_text('raise SystemExit("the folder\'s code ran")\n')
    with pytest.raises(CtxextError, match="its tokenizer needs the folder's own Python code; ctxext never runs"):
        load_tokenizer(tmp_path)


def test_a_rope_per_layer_type_is_refused_before_weights(tmp_path, no_weights, capsys):
    """Gemma 3 gives sliding and full layers their own rope: eval refused only after the weights loaded ("found 0
    rotary modules") and export said "stock transformers rejects it: full_attention"."""
    from ctxext.models import check_before_weights
    from ctxext.scaling import parse_spec

    cfg = transformers.Gemma3TextConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                        max_position_embeddings=256)
    cfg.save_pretrained(tmp_path)
    info = model_info(str(tmp_path))
    check_before_weights(parse_spec("default"), info)
    _refused(lambda: check_before_weights(parse_spec("yarn:factor=4"), info), "gives each layer type its own rope")
    out = tmp_path / "export"
    assert main(["export", "--model", str(tmp_path), "--scaling", "yarn:factor=4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert not out.exists() and err.count("\n") == 1 and "gives each layer type its own rope (" in err


def test_an_unscaled_ropes_trained_length_is_not_a_class_default():
    """Phi3Config writes its class default original_max_position_embeddings (4096) into every config, a 256-token
    model's too, and a default rope never reads it: the plan said the window was 4,096. An abf export with --max-len
    keeps the trained length there below the longer max_position_embeddings, and so it stays."""
    from ctxext.scaling import rope_shape_from_config

    cfg = transformers.Phi3Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, max_position_embeddings=256).to_dict()
    assert cfg["original_max_position_embeddings"] == 4096
    assert rope_shape_from_config(cfg).original_len == 256
    abf = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=1024).to_dict()
    abf["original_max_position_embeddings"] = 256
    assert rope_shape_from_config(abf).original_len == 256
