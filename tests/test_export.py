"""Export: stock transformers load the checkpoint with the same frequencies and logits as ctxext."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxext.errors import CtxextError
from ctxext.export import export, plan_export

ROOT = Path(__file__).resolve().parents[1]
from ctxext.scaling import parse_spec

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_ROPE_TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


def tiny_checkpoint(path, arch: str, edit=None, **overrides):
    """A tiny random model saved with tiny-rope's tokenizer (vocab 2048); `edit` rewrites its config.json dict."""
    import shutil

    from ctxext.fixtures import __file__ as fixtures_init
    from ctxext.models.tiny import tiny_model

    tiny_model(arch, vocab_size=2048, **overrides).save_pretrained(path)
    for f in TINY_ROPE_TOKENIZER:
        shutil.copy(Path(fixtures_init).parent / "tiny-rope" / f, path / f)
    if edit is not None:
        cfg = json.loads((path / "config.json").read_text())
        edit(cfg)
        (path / "config.json").write_text(json.dumps(cfg))
    return path

# A process that has never imported ctxext: the "stock transformers" side of the contract.
STOCK = textwrap.dedent("""
    import sys, numpy as np, torch
    from transformers import AutoModelForCausalLM
    ids = torch.tensor(np.load(sys.argv[2]))
    want = np.load(sys.argv[3])
    m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, local_files_only=True).eval()
    assert "ctxext" not in sys.modules
    with torch.inference_mode():
        got = m(ids).logits.numpy()
    print(float(np.abs(got - want).max()))
""")


def stock_logit_diff(tmp_path, ckpt, ids, want) -> float:
    np.save(tmp_path / "ids.npy", ids.numpy())
    np.save(tmp_path / "want.npy", want)
    out = subprocess.run([sys.executable, "-c", STOCK, str(ckpt), str(tmp_path / "ids.npy"), str(tmp_path / "want.npy")],
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


def longrope_file(tmp_path, n_pairs=32, s=2.0):
    ramp = np.clip((np.arange(n_pairs) - 8) / 12, 0, 1)
    long = (1 + (s - 1) * ramp).tolist()
    path = tmp_path / "factors.json"
    path.write_text(json.dumps({"method": "longrope", "params": {"factor": s, "long_factor": long},
                                "meta": {"fitness": 12.3, "target": 16384}}))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["yarn:factor=2", "linear:factor=2", "abf:base=1000000", "longrope-file"])
def test_smollm2_export_matches_stock_load(tmp_path, which):
    from ctxext.models import apply_spec, load_model

    spec = longrope_file(tmp_path) if which == "longrope-file" else which
    res = export("smollm2-135m", spec, tmp_path / "ckpt", verify_tokens=50)
    assert res["verification"]["passed"]
    lm = load_model("smollm2-135m")
    apply_spec(lm, parse_spec(spec))
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    text = (books_dir() / HELD_OUT_BOOK).read_text()[:20000]
    ids = torch.tensor([lm.tokenizer(text)["input_ids"][:1000]])
    assert ids.shape[1] == 1000
    with torch.inference_mode():
        want = lm.model(ids).logits.numpy()
    diff = stock_logit_diff(tmp_path, tmp_path / "ckpt", ids, want)
    assert diff < 1e-4, f"{which}: max |logit diff| {diff}"
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    expected_max = {"yarn:factor=2": 16384, "linear:factor=2": 8192, "abf:base=1000000": 8192, "longrope-file": 16384}
    assert cfg["max_position_embeddings"] == expected_max[which]
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"]


@pytest.mark.parametrize("spec,rope_type,max_pos", [
    ("yarn:factor=4", "yarn", 1024), ("linear:factor=4", "linear", 256), ("dynamic-ntk:factor=4", "dynamic", 256),
    ("llama3:factor=4", "llama3", 1024), ("abf:base=500000", "default", 256), ("ntk-by-parts:factor=4", "longrope", 1024),
    # length-dependent: the long factors (float32-rounded as stock does) run in the far half of the verification
    ("longrope:factor=4,long_factor=[" + ",".join(f"{1 + 3 * i / 15:.3f}" for i in range(16)) + "]", "longrope", 1024),
])
def test_tiny_export_writes_both_schemas(tmp_path, spec, rope_type, max_pos):
    res = export("tiny-rope", spec, tmp_path / "out", verify_tokens=200)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    rp = cfg["rope_parameters"]
    assert rp["rope_type"] == rope_type and cfg["max_position_embeddings"] == max_pos
    assert cfg["rope_theta"] == rp["rope_theta"]
    if rope_type == "default":
        assert cfg["rope_scaling"] is None
    else:
        assert cfg["rope_scaling"]["type"] == rope_type == cfg["rope_scaling"]["rope_type"]
        assert {k: v for k, v in cfg["rope_scaling"].items() if k != "type"} == {k: v for k, v in rp.items() if k != "rope_theta"}
    # ctxext's in-memory model uses transformers' float32 rounding of the frequencies (models.stock_rope):
    # the exported checkpoint computes exactly what ctxext measured
    assert res["verification"]["passed"] and res["verification"]["max_abs_logit_diff"] == 0.0
    for f in ("model.safetensors", "tokenizer.json", "README.md", "results.json"):
        assert (tmp_path / "out" / f).is_file(), f
    assert spec in (tmp_path / "out" / "README.md").read_text()


def test_abf_max_len_writes_the_served_length_and_keeps_the_trained_one(tmp_path):
    """vLLM serves at most max_position_embeddings tokens of a default-rope checkpoint: --max-len writes the length
    an abf base is meant for, and the trained length stays at the top level, where ctxext (and Phi3-style readers)
    find it; the checkpoint still loads with the logits ctxext measured, also placed at the far end."""
    from ctxext.export import model_card
    from ctxext.models import model_info

    plain = export("tiny-rope", "abf:base=40000", tmp_path / "plain", verify_tokens=100)
    assert plain["max_position_embeddings"] == 256
    assert "--max-len" in (tmp_path / "plain" / "README.md").read_text()  # the vLLM cap is said
    res = export("tiny-rope", "abf:base=40000", tmp_path / "out", verify_tokens=100, max_len=1024)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 1024 and cfg["original_max_position_embeddings"] == 256
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 40000.0}
    assert res["verification"]["passed"] and res["verification"]["positions_from"] == [0, 924]
    assert model_info(str(tmp_path / "out")).trained_len == 256
    assert "--max-len" not in (tmp_path / "out" / "README.md").read_text()
    assert "--max-len" not in model_card(plan_export("tiny-rope", "yarn:factor=4"), res)  # yarn derives its own


@pytest.mark.parametrize("model,spec,max_len,needle", [
    ("tiny-rope", "yarn:factor=4", 2048, "exports a yarn rope, whose stock form sets its length from its own factor"),
    ("tiny-rope", "linear:factor=4", 1024, "exports a linear rope"),
    ("tiny-rope", "abf:base=40000", 255, "--max-len must be from the trained length 256"),
    ("tiny-alibi", "default", 1024, "--max-len applies to RoPE models"),
])
def test_max_len_refusals(model, spec, max_len, needle):
    with pytest.raises(CtxextError) as e:
        plan_export(model, spec, max_len=max_len)
    assert needle in str(e.value)


@pytest.fixture
def no_weights(monkeypatch):
    import ctxext.models as models

    def boom(*a, **k):
        raise AssertionError("weights were loaded before the input was validated")

    monkeypatch.setattr(models, "load_model", boom)


@pytest.mark.parametrize("model,spec,needle", [
    ("tiny-rope", "dynamic-yarn", "no stock rope_type recomputes YaRN"),
    ("tiny-rope", "longrope:factor=4,start_tokens=4,long_factor=[" + ",".join(["2"] * 16) + "]", "start_tokens=4"),
    ("tiny-rope", "longrope:factor=4,long_factor=[1,2,3]", "has 3 values; this model has 16 rotary pairs"),
    ("tiny-rope", "ntk-alibi:factor=2", "does not fit"),
    ("tiny-alibi", "yarn:factor=2", "does not fit"),
    ("tiny-alibi", "alibi-interp:factor=4", "no field for ALiBi slopes"),
    ("tiny-rope", "yarm:factor=2", "did you mean 'yarn'"),
    ("/nonexistent/model-dir", "yarn:factor=2", "/nonexistent/model-dir"),
    # before: accepted, then OverflowError or an absurd max_position_embeddings after the weights had loaded
    ("tiny-rope", "ntk:factor=1e30", "factor must be <= 2147483647"),
    ("tiny-rope", "ntk:factor=1e9", "implies max_position_embeddings 2.56e+11, over the 2147483647"),
    ("tiny-rope", "ntk-by-parts:factor=1e9", "implies max_position_embeddings 2.56e+11"),
    ("tiny-rope", "yarn:factor=1e400", "not a finite number"),
])
def test_refusals_come_before_weights(tmp_path, no_weights, model, spec, needle):
    with pytest.raises(CtxextError, match=None) as e:
        export(model, spec, tmp_path / "out")
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(CtxextError, match="not empty"):
        export("tiny-rope", "yarn:factor=2", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


def test_plan_keeps_original_length_from_an_extended_model():
    p = plan_export("tiny-rope", "yarn:factor=4")
    assert p.original_len == 256 and p.max_position_embeddings == 1024


@pytest.mark.parametrize("spec", ["yarn:factor=4,beta_fast=16", "llama3:factor=4", "ntk-by-parts:factor=4"])
def test_in_memory_frequencies_are_the_stock_ones(spec):
    """apply_spec installs the inv_freq and attention factor transformers computes from the exported config, bit for
    bit, and they agree with ctxext's own math to rtol 1e-6 (they differ by an ulp for these methods)."""
    from transformers import AutoModelForCausalLM

    from ctxext.models import apply_spec, load_model
    from ctxext.models.apply import find_rotary
    from ctxext.scaling import resolve_rope

    lm = load_model("tiny-rope")
    parsed = parse_spec(spec)
    apply_spec(lm, parsed)
    rot = find_rotary(lm.model)[2]
    plan = plan_export("tiny-rope", parsed)
    cfg = lm.model.config.__class__.from_dict({**lm.model.config.to_dict(), "rope_parameters": plan.rope_parameters,
                                               "max_position_embeddings": plan.max_position_embeddings})
    stock = AutoModelForCausalLM.from_config(cfg).model.rotary_emb
    assert torch.equal(rot.inv_freq, stock.inv_freq) and rot.attention_scaling == stock.attention_scaling
    ours = resolve_rope(parsed, lm.info.rope_shape)
    np.testing.assert_allclose(rot.inv_freq.double().numpy(), ours.inv_freq, rtol=1e-6)


def test_stock_frequencies_that_disagree_are_not_used(monkeypatch):
    """A stock vector that is not ctxext's math (here scaled by 1.01) is never installed: ctxext's own stays."""
    from transformers import modeling_rope_utils

    from ctxext.models import load_model
    from ctxext.models.stock_rope import stock_freqs
    from ctxext.scaling import resolve_rope

    lm = load_model("tiny-rope")
    spec = parse_spec("yarn:factor=4")
    ours = resolve_rope(spec, lm.info.rope_shape)
    assert not np.array_equal(stock_freqs(lm.model.config, spec, ours).inv_freq, ours.inv_freq)  # an ulp apart
    real = modeling_rope_utils.ROPE_INIT_FUNCTIONS["yarn"]
    monkeypatch.setitem(modeling_rope_utils.ROPE_INIT_FUNCTIONS, "yarn",
                        lambda cfg, dev, *a: (real(cfg, dev, *a)[0] * 1.01, real(cfg, dev, *a)[1]))
    assert stock_freqs(lm.model.config, spec, ours) is ours
    assert stock_freqs(lm.model.config, parse_spec("dynamic-ntk:factor=4"), ours) is ours  # length-dependent


def phi3_gap(tmp_path, spec_text: str, lengths: tuple[int, ...]) -> tuple[dict, list[float]]:
    """Export `spec_text` for a tiny saved Phi3 (config only, no tokenizer); -> (the exported config, max |logit
    diff| between ctxext's in-memory model and a stock Phi3 built from that config, per length)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ctxext.export import export_config
    from ctxext.models import apply_spec, wrap_model
    from ctxext.models.tiny import tiny_model

    model = tiny_model("phi3")
    model.save_pretrained(tmp_path / "m")
    spec = parse_spec(spec_text)
    plan = plan_export(str(tmp_path / "m"), spec)
    cfg = export_config(json.loads((tmp_path / "m" / "config.json").read_text()), plan)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps(cfg))
    stock = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path / "x"), dtype=torch.float32).eval()
    stock.load_state_dict(model.state_dict())
    apply_spec(wrap_model(model), spec)
    ids = torch.randint(3, 96, (1, max(lengths)), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return cfg, [float((model(ids[:, :n]).logits - stock(ids[:, :n]).logits).abs().max()) for n in lengths]


def test_an_original_length_override_survives_export_on_phi3(tmp_path):
    """Phi3 configs carry original_max_position_embeddings at the top level, which transformers 5.x prefers over
    rope_parameters (and 4.5x reads longrope's switch only there): export writes the spec's override there too,
    so stock longrope switches where ctxext does (before: at the source's 64 instead of 32, so lengths 33-64
    ran the short factors in the stock model)."""
    cfg, gaps = phi3_gap(tmp_path, "longrope:factor=4,long_factor=[1,2,3,4],original_max_position_embeddings=32",
                         (20, 48, 128))  # short factors, the band between the two lengths, long factors
    assert cfg["original_max_position_embeddings"] == 32 == cfg["rope_parameters"]["original_max_position_embeddings"]
    assert cfg["max_position_embeddings"] == 128 and max(gaps) < 1e-5, gaps


def test_phi3_exports_static_methods_as_explicit_longrope_factors(tmp_path):
    """transformers 5's Phi3Config takes only default and longrope ropes: a static method is written as its
    per-pair factors (short = long) with its attention factor, and the stock model runs what ctxext runs (before:
    the weights were written with rope_type linear and the stock load failed). linear keeps its own
    max_position_embeddings, the original length, so 4.x's derived attention factor is its 1."""
    cfg, gaps = phi3_gap(tmp_path, "linear:factor=2", (40, 128))
    rp = cfg["rope_parameters"]
    assert rp["rope_type"] == "longrope" and rp["short_factor"] == rp["long_factor"] and max(gaps) < 1e-5, gaps
    assert cfg["max_position_embeddings"] == 64 == cfg["original_max_position_embeddings"]


@pytest.mark.parametrize("spec,rotary", [("longrope:factor=4,long_factor=[1,2,3,4]", 0.5),
                                         ("linear:factor=2", 0.5), ("abf:base=500000", 1.0)])
def test_phi3_writes_the_legacy_rope_scaling_transformers4_accepts(tmp_path, spec, rotary):
    """transformers 4.x's Phi3Config takes rope_scaling with exactly type, short_factor and long_factor, and reads
    partial_rotary_factor and original_max_position_embeddings only at the top level (before: rope_scaling had 7
    keys, including partial_rotary_factor, and 4.57.1 refused to load the export)."""
    from ctxext.export import export_config

    m = tiny_checkpoint(tmp_path / "m", "phi3", rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                  "partial_rotary_factor": rotary})
    plan = plan_export(str(m), spec)
    cfg = export_config(json.loads((m / "config.json").read_text()), plan)
    assert cfg["partial_rotary_factor"] == rotary == cfg["rope_parameters"]["partial_rotary_factor"]
    assert cfg["original_max_position_embeddings"] == 64
    if spec.startswith("abf"):
        assert cfg["rope_scaling"] is None and cfg["rope_theta"] == 500000
    else:
        rp = cfg["rope_parameters"]
        assert cfg["rope_scaling"] == {"type": "longrope", "short_factor": rp["short_factor"],
                                       "long_factor": rp["long_factor"]}


@pytest.mark.parametrize("spec,derived,own", [
    ("yarn:factor=2", "128/64 -> 1.08012", "1.06931"),
    ("llama3:factor=2", "128/64 -> 1.08012", "is 1;"),
    ("longrope:factor=3.3,long_factor=[1,2,3,4]", "211/64 -> 1.13439", "1.13449"),
])
def test_phi3_refuses_an_attention_factor_transformers4_cannot_derive(tmp_path, no_weights, spec, derived, own):
    """4.x's Phi3 takes no attention factor: it derives sqrt(1 + ln s / ln L) from s = max_position_embeddings / L.
    A spec whose own factor differs would load into a different model there: refused before weights."""
    m = tiny_checkpoint(tmp_path / "m", "phi3")
    with pytest.raises(CtxextError) as e:
        export(str(m), spec, tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and f"cannot export '{spec}' for phi3" in msg and derived in msg and own in msg, msg


def _legacy_llama3(cfg):
    cfg.pop("rope_parameters")
    cfg.update(rope_theta=500000.0, max_position_embeddings=256, rope_scaling={
        "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})


def _legacy_linear(cfg):
    cfg.pop("rope_parameters")
    cfg.update(rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 4.0})


def _yarn_v5(cfg):
    cfg.update(max_position_embeddings=256, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64})


SCALED_SOURCES = {"llama3-legacy": (_legacy_llama3, "llama3", 256), "linear-legacy": (_legacy_linear, "linear", 64),
                  "yarn-v5": (_yarn_v5, "yarn", 256)}


@pytest.mark.parametrize("source", list(SCALED_SOURCES))
def test_default_keeps_a_checkpoints_own_scaled_rope(tmp_path, source):
    """`default` is the model as loaded: a checkpoint whose config already scales RoPE (llama3, linear, yarn; either
    schema) is written with its own rope and max_position_embeddings (before: rope_type default and the original
    length, a different model; the check reported a logit difference of 1.9-2.8 after writing)."""
    edit, rope_type, max_pos = SCALED_SOURCES[source]
    m = tiny_checkpoint(tmp_path / "m", "llama", edit)
    res = export(str(m), "default", tmp_path / "out", verify_tokens=40)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_type"] == rope_type == cfg["rope_scaling"]["type"]
    assert cfg["rope_parameters"]["factor"] == 4.0 and cfg["max_position_embeddings"] == max_pos
    assert res["verification"]["passed"] and res["verification"]["max_abs_logit_diff"] == 0.0, res["verification"]


def test_out_in_a_missing_folder_is_created_and_staged_beside_it(tmp_path, monkeypatch):
    """Before: the staging folder fell back to the system temp dir and os.replace into the missing parent failed
    after the weights had loaded (or crossed file systems)."""
    import tempfile

    made = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(k.get("dir")) or real(*a, **k))
    out = tmp_path / "new" / "deeper" / "out"
    res = export("tiny-rope", "yarn:factor=2", out, verify_tokens=20)
    assert res["verification"]["passed"] and (out / "model.safetensors").is_file()
    assert made == [out.parent] and [p.name for p in out.parent.iterdir()] == ["out"]


def test_refuses_an_out_under_a_file(tmp_path, no_weights):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CtxextError, match="cannot create its parent folder"):
        export("tiny-rope", "yarn:factor=2", tmp_path / "file" / "out")


def test_refuses_a_model_folder_without_tokenizer_before_weights(tmp_path, no_weights):
    from ctxext.models.tiny import tiny_model

    tiny_model("llama").save_pretrained(tmp_path / "m")
    with pytest.raises(CtxextError) as e:
        export(str(tmp_path / "m"), "yarn:factor=2", tmp_path / "out")
    assert "has no tokenizer" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("n", ["0", "-5"])
def test_cli_refuses_verify_tokens_below_one(tmp_path, no_weights, capsys, n):
    from ctxext.cli import main

    rc = main(["export", "--model", "tiny-rope", "--scaling", "yarn:factor=2", "--out", str(tmp_path / "out"),
               "--verify-tokens", n])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"ctxext: error: --verify-tokens must be >= 1 (the stock-load check needs tokens), got {n}"
    assert not (tmp_path / "out").exists()


def test_a_config_the_model_class_rejects_is_refused_before_weights(tmp_path, no_weights):
    from ctxext.models.tiny import tiny_model

    tiny_model("phi3").save_pretrained(tmp_path / "m")
    with pytest.raises(CtxextError) as e:
        plan_export(str(tmp_path / "m"), "dynamic-ntk:factor=2")
    assert str(e.value) == ("cannot export 'dynamic-ntk:factor=2': no stock rope config expresses it for this model, "
                            "whose config takes only default and longrope ropes")


def test_float32_rounding_far_out_still_takes_the_stock_vector():
    """YaRN with truncate=false at s = 32 (d = 128, b = 1e4, L = 4096): transformers' float32 ramp differs from
    ctxext's float64 one by up to 1.9e-6 relative, which AGREE_RTOL must accept (at 1e-6 ctxext kept its own
    vector and the export was not bit for bit); a different formula (yarn's factor changed) is still refused."""
    import dataclasses

    import transformers as tf

    from ctxext.models.stock_rope import stock_freqs
    from ctxext.scaling import RopeShape, resolve_rope

    cfg = tf.LlamaConfig(hidden_size=512, num_attention_heads=4, num_key_value_heads=4, head_dim=128, vocab_size=10,
                         intermediate_size=8, num_hidden_layers=1, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    spec = parse_spec("yarn:factor=32,truncate=false")
    ours = resolve_rope(spec, RopeShape(128, 1e4, 4096))
    got = stock_freqs(cfg, spec, ours)
    assert got is not ours and 1e-6 < np.max(np.abs(got.inv_freq / ours.inv_freq - 1)) < 1e-5
    other = dataclasses.replace(ours, inv_freq=ours.inv_freq * 1.001)
    assert stock_freqs(cfg, spec, other) is other


@pytest.mark.parametrize("spec", ["ntk:factor=4", "abf:base=40890.7"])
def test_default_type_exports_are_bit_for_bit_at_head_dim_128(tmp_path, spec):
    """ntk and abf export as rope_type default with a new rope_theta, which stock models compute with torch's
    float32 pow; ctxext's θ was a float64 pow rounded to float32, an ulp off on 9 of 64 pairs at d = 128, and the
    export's own check failed (2.3e-3 logits at 16k positions for ntk:factor=4)."""
    src = tiny_checkpoint(tmp_path / "m", "llama", head_dim=128, max_position_embeddings=4096)
    res = export(str(src), spec, tmp_path / "out", verify_tokens=200)
    assert res["rope_parameters"]["rope_type"] == "default"
    assert res["verification"]["max_abs_logit_diff"] == 0.0 and res["verification"]["passed"]


def test_a_dynamic_export_reports_where_stock_parts_from_ctxext(tmp_path, capsys):
    """Stock 'dynamic' rescales a whole forward by its longest position, ctxext's dynamic-ntk each query by its own:
    identical inside the window, apart past it. The export said only 'passed' (it checked the window alone); now it
    measures a sample placed past the window and says so in results.json, the model card and the CLI."""
    from ctxext.cli import main

    rc = main(["export", "--model", "tiny-rope", "--scaling", "dynamic-ntk:factor=4", "--out", str(tmp_path / "d"),
               "--verify-tokens", "120"])
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "d" / "results.json").read_text())
    v = res["verification"]
    assert rc == 0 and v["passed"] and v["max_abs_logit_diff"] == 0.0 and v["positions_from"] == [0, 136]
    past = v["past_window"]
    assert past["positions_from"] == 256 and past["tokens"] == 120 and not past["same"]
    assert past["max_abs_logit_diff"] > 0.1
    assert f"past the window the checkpoint differs from what ctxext measured: max |logit diff| " \
           f"{past['max_abs_logit_diff']:.3g} from position 256" in out
    card = (tmp_path / "d" / "README.md").read_text()
    assert "Past the trained length it does not compute what ctxext measured" in card and "from position 256" in card

    res = export("tiny-rope", "yarn:factor=4", tmp_path / "y", verify_tokens=120)  # static: nothing to part
    assert "past_window" not in res["verification"]
    assert "Past the trained length" not in (tmp_path / "y" / "README.md").read_text()


def test_out_never_replaces_what_is_not_an_earlier_export(tmp_path, monkeypatch, no_weights):
    """'--out .' deleted the folder the command ran in (and crashed); '--overwrite' deleted the source model, or a
    folder above it with unrelated files."""
    src = tiny_checkpoint(tmp_path / "models" / "src", "llama")
    (tmp_path / "models" / "notes.txt").write_text("keep")
    work = tmp_path / "work"
    work.mkdir()
    (work / "file.txt").write_text("keep")
    monkeypatch.chdir(work)
    for out, needle in ((".", "is the folder the command runs in"), (str(tmp_path), "is the folder the command runs"),
                        (str(src), "is the source model's folder"), (str(tmp_path / "models"), "source model's")):
        with pytest.raises(CtxextError, match=needle):
            export(str(src), "yarn:factor=2", out, overwrite=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text("{}")  # an eval's folder, not an export
    with pytest.raises(CtxextError, match="holds files that are not a ctxext export; --overwrite replaces only"):
        export(str(src), "yarn:factor=2", other, overwrite=True)
    assert (work / "file.txt").read_text() == "keep" and (tmp_path / "models" / "notes.txt").is_file()
    assert (src / "config.json").is_file() and (other / "results.json").read_text() == "{}"


def test_overwrite_replaces_an_export_only_with_one_that_passes(tmp_path, monkeypatch):
    import ctxext.export as ex

    out = tmp_path / "out"
    export("tiny-rope", "yarn:factor=2", out, verify_tokens=20)
    first = (out / "results.json").read_text()
    export("tiny-rope", "yarn:factor=4", out, verify_tokens=20, overwrite=True)  # an export: replaced
    assert json.loads((out / "results.json").read_text())["meta"]["spec"] == "yarn:factor=4"
    monkeypatch.setattr(ex, "max_logit_diff", lambda *a, **k: 1.0)
    with pytest.raises(CtxextError, match="FAILED its stock-load check .* the earlier export in .* is kept"):
        export("tiny-rope", "yarn:factor=2", out, verify_tokens=20, overwrite=True)
    assert json.loads((out / "results.json").read_text())["meta"]["spec"] == "yarn:factor=4" and first
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind


def test_an_interrupted_overwrite_keeps_one_whole_export_and_stale_staging_goes(tmp_path, monkeypatch):
    """--overwrite deleted the earlier export before renaming the new one in: a kill there left a half-deleted folder
    (refused later as not an export), a Ctrl-C lost both. Staging folders a killed export left (a full checkpoint
    each) are swept when a day old."""
    import os
    import time

    import ctxext.export as ex

    out = tmp_path / "out"
    export("tiny-rope", "yarn:factor=2", out, verify_tokens=20)
    stale, fresh = tmp_path / ".export-killed", tmp_path / ".export-running"
    for d in (stale, fresh):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
    old = time.time() - 25 * 3600
    os.utime(stale, (old, old))
    real = os.replace

    def interrupted(src, dst):
        if Path(dst) == out and Path(src).name.startswith(".export-") and not Path(src).name.endswith("-old"):
            raise KeyboardInterrupt  # after the earlier export was set aside, before the new one took its name
        real(src, dst)

    monkeypatch.setattr(ex.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export("tiny-rope", "yarn:factor=4", out, verify_tokens=20, overwrite=True)
    monkeypatch.setattr(ex.os, "replace", real)
    assert json.loads((out / "results.json").read_text())["meta"]["spec"] == "yarn:factor=2"
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export-running", "out"]
    export("tiny-rope", "yarn:factor=4", out, verify_tokens=20, overwrite=True)
    assert json.loads((out / "results.json").read_text())["meta"]["spec"] == "yarn:factor=4"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export-running", "out"]


def test_an_out_that_is_a_symlink_is_written_through(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    res = export("tiny-rope", "yarn:factor=2", tmp_path / "link", verify_tokens=20)  # a traceback after the work
    assert res["verification"]["passed"] and (tmp_path / "real" / "config.json").is_file()


def test_the_card_of_a_searched_spec_states_its_search_and_the_short_factors_are_checked(tmp_path):
    best = ROOT / "benchmarks" / "results" / "search_tiny_rope" / "search" / "best.json"
    res = export("tiny-rope", str(best), tmp_path / "lr", verify_tokens=300)
    card = (tmp_path / "lr" / "README.md").read_text()
    assert "no search or training metadata" not in card and "- search.target: 1024" in card
    assert res["verification"]["short_tokens"] == 256 and res["verification"]["passed"]  # never reached before
    assert "vLLM derives the longrope attention factor itself" in card  # the guard lowered m below the default


def test_a_spec_made_for_another_trained_length_is_named(tmp_path, capsys):
    from ctxext.cli import main

    src = tiny_checkpoint(tmp_path / "m64", "llama", max_position_embeddings=64, head_dim=32)
    best = ROOT / "benchmarks" / "results" / "search_tiny_rope" / "search" / "best.json"
    assert main(["export", "--model", str(src), "--scaling", str(best), "--out", str(tmp_path / "x"),
                 "--verify-tokens", "100"]) == 0
    assert "note: the spec sets the trained length to 256; the model's config says 64" in capsys.readouterr().out
    assert "(set by the spec; the model's own config says 64" in (tmp_path / "x" / "README.md").read_text()


def test_a_dynamic_probe_that_lands_in_one_bucket_is_not_called_the_same(tmp_path):
    """With --verify-tokens 64 the placed sample fell in one 64-position bucket whose base equals stock's: diff 0,
    'same: true', while a sequence from 0 past the window differs by ~5 logits."""
    res = export("tiny-rope", "dynamic-ntk:factor=4", tmp_path / "d", verify_tokens=64)
    past = res["verification"]["past_window"]
    assert not past["same"] and past["max_abs_logit_diff"] > 0.1 and past["from_zero_tokens"] == 256 + 192
    assert "vLLM's `dynamic` rope is one static NTK base" in (tmp_path / "d" / "README.md").read_text()


def test_the_checkpoint_takes_the_users_umask(tmp_path):
    """mkdtemp made the folder 0700 and transformers writes the weights 0600: a server under another user could not
    read DIR/final or an export. Now the modes a plain save gets under the umask."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        export("tiny-rope", "yarn:factor=2", tmp_path / "out", verify_tokens=20)
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "out") == 0o755
    assert {f.name: mode(f) for f in (tmp_path / "out").iterdir()} == {f.name: 0o644 for f in (tmp_path / "out").iterdir()}


@pytest.mark.parametrize("argv", [
    ["eval", "--task", "ppl", "--lengths", "128", "--samples", "1"],
    ["search", "--target", "512"],
    ["train", "--scaling", "yarn:factor=2", "--seq-len", "128", "--steps", "1", "--no-eval"],
    ["synth-qa", "--out", "OUT/qa.jsonl"],
    ["plan", "--target", "1024", "--calibrate"],
])
def test_every_command_refuses_a_folder_without_tokenizer_before_weights(tmp_path, no_weights, capsys, argv):
    """Export refused it first; eval, search, train and synth-qa failed after loading the weights, and plan
    --calibrate ended in a TypeError traceback."""
    from ctxext.cli import main
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir
    from ctxext.models.tiny import tiny_model

    tiny_model("llama").save_pretrained(tmp_path / "m")
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    extra = [] if argv[0] == "plan" else ["--data", str(books_dir() / HELD_OUT_BOOK)]
    extra += [] if argv[0] == "synth-qa" else ["--out", str(tmp_path / "o")]
    capsys.readouterr()
    assert main([argv[0], "--model", str(tmp_path / "m"), *argv[1:], *extra]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "error" in ln]
    assert len(err) == 1 and err[0].startswith("ctxext: error: cannot") and "the folder has no tokenizer" in err[0]
