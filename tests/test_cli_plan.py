"""`ctxext plan` end to end: JSON keys and the acceptance numbers, the files --out writes, and refusals that
come before any weights are read. Models are config-only directories (no weights exist to load) plus the
built-in smollm2-135m."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxext.cli import main
from ctxext.theory import critical_dim

PLAN_KEYS = {"model", "head_dim", "rotary_dim", "rope_theta", "original_max_position_embeddings", "target",
             "critical_dim", "critical_pair", "extrapolation_limit", "critical_base", "wavelengths",
             "recommendations", "pairs", "recommended"}
REC_KEYS = {"method", "spec", "params", "predicted_reach", "fine_tuning", "rationale", "recommended"}


def _config_dir(root: Path, config) -> Path:
    config.save_pretrained(root)  # config.json only: nothing here could be loaded as weights
    assert sorted(p.name for p in root.iterdir()) == ["config.json"]
    return root


@pytest.fixture(scope="module")
def smol_config(tmp_path_factory) -> str:
    """SmolLM2-135M's shape: head_dim 64, rope_theta 1e5, 8192-token window."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                      rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    return str(_config_dir(tmp_path_factory.mktemp("smol-config"), cfg))


def _ctxext(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ctxext.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _check_acceptance(d: dict) -> None:
    assert PLAN_KEYS <= set(d)
    assert (d["head_dim"], d["rotary_dim"], d["rope_theta"], d["original_max_position_embeddings"]) == (64, 64, 1e5, 8192)
    assert d["critical_dim"] == 40 and d["critical_pair"] == 20
    assert d["extrapolation_limit"] == pytest.approx(8_379, rel=0.005)
    assert d["critical_base"] == pytest.approx(925_387, rel=0.005)
    assert d["recommended"] == {"training-free": "dynamic-ntk:factor=2.4266",
                                "fine-tuning": "abf:base=925387"}
    for r in d["recommendations"]:
        assert REC_KEYS <= set(r)
    assert len(d["wavelengths"]) == 32


def test_plan_json_acceptance_numbers(smol_config, capsys):
    assert main(["plan", "--model", smol_config, "--target", "32768", "--json"]) == 0
    out = capsys.readouterr().out
    _check_acceptance(json.loads(out))


def test_plan_smollm2_builtin_json(capsys):
    """The issue's acceptance command, as a user types it (reads the config only)."""
    res = _ctxext("plan", "--model", "smollm2-135m", "--target", "32768", "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    _check_acceptance(d)
    assert d["model"] == "smollm2-135m"
    assert main(["plan", "--model", "smollm2-135m", "--target", "8192"]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.splitlines() == ["ctxext: error: --target 8192 is not longer than the model's trained window "
                                       "(8192 tokens); give a target > 8192"]


def test_plan_text_output(smol_config, capsys):
    assert main(["plan", "--model", smol_config, "--target", "32768"]) == 0
    out = capsys.readouterr().out
    assert "critical" in out and "d_extra = 40" in out and "8,379" in out and "925,387" in out
    assert "recommended, training-free: dynamic-ntk:factor=2.4266" in out
    assert "recommended, fine-tuning: abf:base=925387" in out
    assert "20 ← critical" in out  # the per-pair table marks the critical pair


def test_plan_out_writes_results_summary_and_png(smol_config, tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / "plan"
    assert main(["plan", "--model", smol_config, "--target", "32768", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plan.png", "results.json", "summary.md"]
    res = json.loads((out / "results.json").read_text())
    assert res["critical_dim"] == 40 and res["target"] == 32768
    meta = res["meta"]
    assert {"ctxext", "torch", "transformers"} <= set(meta["versions"])
    assert meta["command"] == f"ctxext plan --model {smol_config} --target 32768 --out {out}"
    assert meta["config"]["rope_shape"] == {"rotary_dim": 64, "base": 1e5, "original_len": 8192}
    md = (out / "summary.md").read_text()
    assert "| yarn | `yarn:factor=4` |" in md and "![wavelength per pair](plan.png)" in md
    png = out / "plan.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 400 and img.shape[1] > 800 and img.std() > 0.05  # a real picture, not blank


@pytest.mark.parametrize("target", ["8192", "4096"])
def test_target_not_longer_than_window_fails_in_one_line(smol_config, target, capsys):
    assert main(["plan", "--model", smol_config, "--target", target, "--json"]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.splitlines() == [f"ctxext: error: --target {target} is not longer than the model's trained "
                                    f"window (8192 tokens); give a target > 8192"]


def test_target_check_comes_before_weights(smol_config, monkeypatch, capsys):
    import ctxext.models as models

    def boom(*a, **k):
        raise AssertionError("plan must not load weights")

    monkeypatch.setattr(models, "load_model", boom, raising=False)
    assert main(["plan", "--model", smol_config, "--target", "8000"]) == 2
    assert capsys.readouterr().err.startswith("ctxext: error: --target 8000 is not longer")
    assert main(["plan", "--model", smol_config, "--target", "16384", "--json"]) == 0  # and a good plan neither


def test_original_len_and_base_overrides(smol_config, capsys):
    assert main(["plan", "--model", smol_config, "--target", "16384", "--original-len", "4096", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["original_max_position_embeddings"] == 4096 and d["critical_dim"] == critical_dim(64, 1e5, 4096) == 38
    assert main(["plan", "--model", smol_config, "--target", "65536", "--base", "1e6", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["critical_dim"] == 40 and d["planned_base"] == 1e6 and d["rope_theta"] == 1e5
    assert d["extrapolation_limit"] == pytest.approx(2 * 3.141592653589793 * 1e6 ** (40 / 64))


def test_alibi_model_refused(tmp_path, capsys):
    from transformers import BloomConfig

    d = _config_dir(tmp_path / "bloom", BloomConfig(hidden_size=64, n_head=8, n_layer=2, vocab_size=256))
    assert main(["plan", "--model", str(d), "--target", "4096"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RoPE" in err[0] and "alibi" in err[0]


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "--model", "x", "--target", "-5"])
    assert e.value.code == 2 and "must be > 0" in capsys.readouterr().err
    assert main(["plna", "--model", "x"]) == 2
    assert "did you mean 'plan'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("ctxext 0.")


def test_plan_help_imports_nothing_heavy():
    code = ("import sys\nfrom ctxext.cli import main\ntry:\n    main(['plan', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--target" in res.stdout and res.stdout.strip().endswith("[]")


def test_a_checkpoint_that_scales_its_own_rope_is_said_to(tmp_path, capsys):
    """Llama 3.1's config (llama3 bands, factor 8 over 8,192, made for 131,072): the plan printed exactly plain
    Llama 3's, silent about the scaling `default` keeps; now it states the config's own scaling and its reach by
    the same rule (transformers' llama3 frequencies; ctxext's own llama3 spec gives the same figure)."""
    from transformers import LlamaConfig

    from ctxext.scaling import RopeShape, parse_spec
    from ctxext.theory import predicted_reach

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(vocab_size=128, hidden_size=512, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=128, max_position_embeddings=131072,
                      rope_parameters=rope)
    model = str(_config_dir(tmp_path / "llama31", cfg))
    assert main(["plan", "--model", model, "--target", "65536", "--json"]) == 0
    own = json.loads(capsys.readouterr().out)["own_rope"]
    want = predicted_reach(parse_spec("llama3:factor=8"), RopeShape(128, 500000.0, 8192)).tokens
    assert own["rope_type"] == "llama3" and own["window"] == 131072
    assert own["predicted_reach"] == pytest.approx(want, rel=1e-5) and 65_000 < want < 66_500
    assert main(["plan", "--model", model, "--target", "65536"]) == 0
    text = capsys.readouterr().out
    assert ("own rope     this checkpoint's config already scales its RoPE (llama3, made for 131,072 tokens; the "
            f"target is within it): as shipped by the same rule it reaches ≈ {want:,.0f} tokens") in text
    assert main(["plan", "--model", str(_config_dir(tmp_path / "plain", LlamaConfig(
        vocab_size=128, hidden_size=512, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        head_dim=128, max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": 5e5}))),
        "--target", "65536", "--json"]) == 0
    assert "own_rope" not in json.loads(capsys.readouterr().out)


def test_calibration_of_an_own_scaled_checkpoint_predicts_its_own_rope(tmp_path, capsys):
    """--calibrate measures the model as loaded (with its own scaling) and divided that by the plain RoPE's
    prediction, mixing two models in the tolerance."""
    import shutil

    from ctxext.fixtures import fixture_path

    src = tmp_path / "tiny-llama3"
    shutil.copytree(fixture_path("tiny-rope"), src)
    cfg = json.loads((src / "config.json").read_text())
    rope = {"rope_type": "llama3", "rope_theta": cfg.get("rope_theta", 10000.0), "factor": 4.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256}
    cfg.update(rope_parameters=rope, rope_scaling={**rope, "type": "llama3"}, max_position_embeddings=1024)
    (src / "config.json").write_text(json.dumps(cfg))
    assert main(["plan", "--model", str(src), "--target", "1024", "--calibrate", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["calibration"]["predicted"] == d["own_rope"]["predicted_reach"]
    assert d["own_rope"]["predicted_reach"] > 1.5 * d["extrapolation_limit"]  # not the plain RoPE's 353


def test_small_base_text_names_no_missing_pair(tmp_path, capsys):
    """Base 500 at d = 128, L = 4,096: every pair completes a period; the text said 'pair 64 is the first that never
    does' (there are 64 pairs, 0-63) and printed the 16.8M cap as the value of 2π·b^(d_extra/d) (≈ 3,142)."""
    from transformers import LlamaConfig

    model = str(_config_dir(tmp_path / "b500", LlamaConfig(
        vocab_size=10, hidden_size=256, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=128, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0})))
    assert main(["plan", "--model", model, "--target", "8192"]) == 0
    text = capsys.readouterr().out
    assert "critical     dim d_extra = 128: every pair completes a full period within L\n" in text
    assert "reach        as trained, no limit predicted" in text and "pair 64" not in text and "16,777,216 tokens" not in text


def test_the_plans_longrope_row_is_the_searchs_own_seed():
    """plan called its longrope row the search's seed but used the NTK curve s^(2i/(d-2)); the search starts from
    s^(i/c) below the critical pair c."""
    import numpy as np

    from ctxext.models import model_info
    from ctxext.scaling import parse_spec
    from ctxext.search import make_space, seed_candidates
    from ctxext.theory import plan

    info = model_info("tiny-rope")
    p = plan(info.rope_shape, 1024)
    spec = next(r.spec for r in p.recommendations if r.method == "longrope")
    row = np.asarray(parse_spec(spec).params.long_factor, dtype=float)
    space = make_space(info.rope_shape.n_pairs, 4.0, p.critical_dim // 2, 256)
    seed = np.asarray(seed_candidates(space, info.rope_shape)["longrope2"].factors)
    assert np.allclose(row, seed, atol=0.006)  # the search's grid rounds to 0.01


def test_far_targets_get_a_pick_that_reaches_them_and_a_plan():
    """tiny-rope at 4M: the dynamic-ntk search stopped at alpha 1e4 (reach 2.28M) and was still the pick; at 16.8M
    the ntk row's factor (1e10) failed parse_spec and no plan came at all."""
    from ctxext.models import model_info
    from ctxext.theory import plan

    shape = model_info("tiny-rope").rope_shape
    for target in (4194304, 16777216):
        p = plan(shape, target)
        pick = next(r for r in p.recommendations if r.recommended == "training-free")
        assert pick.reaches_target and pick.method == "dynamic-ntk"
    assert "ntk" in p.skipped and "factor must be <=" in p.skipped["ntk"]


def test_the_self_extend_example_reaches_the_target_by_ctxexts_rule():
    from ctxext.models import model_info
    from ctxext.scaling import parse_spec
    from ctxext.scaling.attention import self_extend_reach
    from ctxext.theory import plan

    import re

    for model, target in (("smollm2-135m", 20480), ("tiny-rope", 640)):
        shape = model_info(model).rope_shape
        note = plan(shape, target).skipped["self-extend"]
        spec = re.search(r"(self-extend:group=\d+,window=\d+) reaches ([\d,]+)", note)
        got = self_extend_reach(shape.original_len, parse_spec(spec.group(1)).params)
        assert got >= target and f"{got:,}" == spec.group(2)  # it said 20,480 for a spec that reaches 20,478


def test_the_ntk_rationale_says_whether_the_factor_was_raised():
    from ctxext.models import model_info
    from ctxext.theory import plan

    shape = model_info("smollm2-135m").rope_shape
    why = next(r.rationale for r in plan(shape, 8193).recommendations if r.method == "ntk")
    assert "past the target, so the factor is the smallest that covers it" in why and "raised" not in why


@pytest.mark.parametrize("edit, needle", [
    ({"head_dim": 75}, "cannot read the model config"),  # a huggingface_hub validation error: a traceback before
])
def test_a_config_transformers_rejects_is_one_line(tmp_path, capsys, edit, needle):
    import json as js

    from ctxext.cli import main
    from ctxext.models import model_info

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(js.dumps({**model_info("tiny-rope").config, **edit}))
    assert main(["plan", "--model", str(folder), "--target", "1024"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_a_rotary_dim_of_2_and_an_infinite_base(tmp_path, capsys):
    import json as js

    from ctxext.cli import main
    from ctxext.models import model_info

    folder = tmp_path / "m"
    folder.mkdir()
    cfg = {**model_info("tiny-rope").config, "head_dim": 2}
    (folder / "config.json").write_text(js.dumps(cfg))
    assert main(["plan", "--model", str(folder), "--target", "1024", "--json"]) == 0  # ntk rows skipped
    assert "ntk: needs a rotary dim above 2" in json.loads(capsys.readouterr().out)["skipped"]["ntk"]
    with pytest.raises(SystemExit):
        main(["plan", "--model", "tiny-rope", "--target", "1024", "--base", "inf"])
    assert "rope base must be > 1 and finite" in capsys.readouterr().err


def test_a_static_reach_past_the_search_cap_is_the_formulas_value():
    """linear:factor=2048 on SmolLM2 reaches 2048 x 8,379 = 17.16M; it read '>= 16,777,216 (no limit)'."""
    from ctxext.models import model_info
    from ctxext.scaling import parse_spec
    from ctxext.theory import REACH_CAP, predicted_reach

    shape = model_info("smollm2-135m").rope_shape
    r = predicted_reach(parse_spec("linear:factor=2048"), shape)
    assert not r.capped and r.tokens > REACH_CAP and r.tokens == pytest.approx(
        2048 * predicted_reach(parse_spec("default"), shape).tokens, rel=1e-6)


def test_plan_png_names_a_changed_base_and_no_pair_in_the_small_base_regime(tmp_path, monkeypatch):
    """With --base the curve was labelled 'as trained'; with a base so small that every pair turns within L the
    plot marked 'critical pair 64' (of 0-63), an empty shaded span, and the search cap as the reach."""
    import ctxext.plots as plots
    from ctxext.scaling import RopeShape
    from ctxext.theory import plan

    seen = {}
    real = plots.save

    def spy(fig, path):
        ax = fig.axes[0]
        seen["labels"] = [h.get_label() for h in ax.get_legend().legend_handles]
        seen["texts"] = [t.get_text() for t in ax.texts]
        return real(fig, path)

    monkeypatch.setattr(plots, "save", spy)
    llama2 = RopeShape(128, 1e4, 4096)
    plots.plan_wavelengths(plan(llama2, 8192, base=500.0), tmp_path / "a.png")
    assert any("with base 500" in x and "no limit" in x for x in seen["labels"])
    assert not any("critical pair" in t for t in seen["texts"])
    assert not any("never turn a full period" in x for x in seen["labels"])
    plots.plan_wavelengths(plan(llama2, 131072), tmp_path / "b.png")
    assert any(x.startswith("as trained") for x in seen["labels"]) and any("critical pair" in t for t in seen["texts"])


def test_the_training_free_pick_is_one_the_architecture_runs(tmp_path, capsys):
    """Past 2x the pick is dynamic-ntk, which patches attention: on a Gemma (or Falcon, GPT-NeoX, ...) checkpoint
    `ctxext eval` then refused the plan's own recommendation. There the length-dependent rows are skipped, saying
    why, and the pick is a static method that reaches the target."""
    import transformers

    transformers.GemmaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                             max_position_embeddings=256).save_pretrained(tmp_path)
    assert main(["plan", "--model", str(tmp_path), "--target", "1024", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    pick = next(r for r in d["recommendations"] if r["recommended"] == "training-free")
    assert pick["method"] not in ("dynamic-ntk", "dynamic-yarn", "longrope") and pick["reaches_target"]
    for m in ("dynamic-ntk", "dynamic-yarn", "longrope"):
        assert "does not support for this architecture" in d["skipped"][m]
    assert main(["plan", "--model", "smollm2-135m", "--target", "32768", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert next(r for r in d["recommendations"] if r["recommended"] == "training-free")["method"] == "dynamic-ntk"
