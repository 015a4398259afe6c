"""DeepSeek-V2/V3 (multi-head latent attention): the attention sets its softmax scale from the config's rope when
built (YaRN's mscale_all_dim), and DeepSeek-V2's rotary module hands out complex tables. A spec applied in memory
equals the stock model built from the rope config ctxext exports for it, bit for bit, from a checkpoint without
rope scaling and from one that ships DeepSeek's YaRN; `default` restores the model as loaded."""

import copy
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.export import model_card, plan_export
from ctxext.models import apply_spec, check_before_weights, model_info, wrap_model
from ctxext.models.apply import find_rotary
from ctxext.models.rope import ScaledRotary, table_layout
from ctxext.models.tiny import tiny_model
from ctxext.scaling import config_rope_fields, parse_spec
from ctxext.scaling.hf import softmax_scale_at_init

pytestmark = pytest.mark.usefixtures("one_thread")
SEQ = 150
SHIPPED_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
                "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0}
SPECS = ["linear:factor=2", "ntk:factor=4", "abf:base=500", "yarn:factor=4", "yarn:factor=8,mscale=1,mscale_all_dim=1",
         "llama3:factor=4", "ntk-by-parts:factor=4"]


def build(arch, shipped):
    kw = {"rope_parameters": SHIPPED_YARN, "max_position_embeddings": 256} if shipped else {}
    return tiny_model(arch, **kw)


def logits(model, ids):
    with torch.inference_mode():
        return model(ids, use_cache=False).logits


def scales(model):
    return [m.scaling for m in model.modules() if hasattr(m, "qk_head_dim")]


def stock_twin(model, spec, config):
    rope_parameters, max_pos = config_rope_fields(spec, config)
    cfg = copy.deepcopy(model.config)
    cfg.rope_parameters, cfg.max_position_embeddings = rope_parameters, max_pos
    stock = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
    stock.load_state_dict(model.state_dict())
    return stock


@pytest.mark.parametrize("arch", ["deepseek_v2", "deepseek_v3"])
@pytest.mark.parametrize("shipped", [False, True], ids=["default-rope", "shipped-yarn"])
def test_specs_match_the_stock_model_of_their_exported_config(arch, shipped):
    model = build(arch, shipped)
    lm = wrap_model(model)
    ids = torch.randint(3, 96, (1, SEQ), generator=torch.Generator().manual_seed(1))
    before, built = logits(model, ids), scales(model)
    assert len(built) == 2
    for text in SPECS:
        spec = parse_spec(text)
        apply_spec(lm, spec)
        assert isinstance(find_rotary(model)[2], ScaledRotary)
        twin = stock_twin(model, spec, lm.info.config)
        assert scales(model) == scales(twin), text
        diff = (logits(model, ids) - logits(twin, ids)).abs().max().item()
        assert diff == 0.0, f"{arch} {text}: max |logit diff| vs stock {diff:.2e}"
    apply_spec(lm, parse_spec("default"))
    assert scales(model) == built and torch.equal(logits(model, ids), before)


def test_the_scale_follows_mscale_all_dim_and_goes_back_with_default():
    """Shipped YaRN (factor 4, mscale_all_dim 1) folds mscale(4)^2 = 1.1386^2 into the scale; a spec without
    mscale_all_dim has the plain 1/sqrt(24); a wrong scale moved logits by 0.3-2.3 (measured before the fix)."""
    model = build("deepseek_v3", True)
    lm = wrap_model(model)
    head = model.config.qk_nope_head_dim + model.config.qk_rope_head_dim
    assert scales(model)[0] == pytest.approx(head ** -0.5 * (0.1 * math.log(4) + 1) ** 2)
    apply_spec(lm, "yarn:factor=4")
    assert scales(model) == [head ** -0.5] * 2
    apply_spec(lm, "yarn:factor=16,mscale=0.707,mscale_all_dim=0.707")
    assert scales(model)[0] == softmax_scale_at_init({"rope_type": "yarn", "factor": 16, "mscale_all_dim": 0.707}, head)
    assert softmax_scale_at_init({"rope_type": "default", "factor": 16, "mscale_all_dim": 1.0}, head) == head ** -0.5
    apply_spec(lm, "default")
    assert scales(model)[0] == pytest.approx(head ** -0.5 * (0.1 * math.log(4) + 1) ** 2)


def test_deepseek_v2_tables_are_complex_and_stay_so():
    model = build("deepseek_v2", False)
    lm = wrap_model(model)
    assert table_layout(find_rotary(model)[2]) == "complex"
    apply_spec(lm, "yarn:factor=4")
    rotary = find_rotary(model)[2]
    assert rotary.layout == "complex"
    out = rotary(torch.zeros(1, 1, 1), torch.arange(4)[None])
    assert out.dtype == torch.complex64 and out.shape == (1, 4, model.config.qk_rope_head_dim // 2)


def test_methods_that_patch_attention_are_refused_before_weights(tmp_path):
    build("deepseek_v3", False).save_pretrained(tmp_path)
    info = model_info(str(tmp_path))
    check_before_weights(parse_spec("yarn:factor=4"), info)
    for text in ("dynamic-ntk:factor=4", "self-extend:group=4,window=16"):
        with pytest.raises(CtxextError, match="patches attention, which ctxext supports for"):
            check_before_weights(parse_spec(text), info)


def test_search_is_refused_before_weights(tmp_path, capsys, monkeypatch):
    """The search evaluates longrope, which patches attention: it refused only after loading the weights."""
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    src = _checkpoint(tmp_path, "deepseek_v3", False)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("weights were loaded"))
    rc = main(["search", "--model", str(src), "--target", "256", "--data", str(books_dir() / HELD_OUT_BOOK),
               "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "'longrope' patches attention, which ctxext supports for" in err and "not 'deepseek_v3'" in err
    assert not (tmp_path / "s").exists()


def _checkpoint(tmp_path, arch, shipped):
    import shutil
    from pathlib import Path

    from ctxext.fixtures import __file__ as fixtures_init

    path = tmp_path / f"{arch}-{'yarn' if shipped else 'plain'}"
    kw = {"rope_parameters": SHIPPED_YARN, "max_position_embeddings": 256} if shipped else {}
    tiny_model(arch, vocab_size=2048, **kw).save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(fixtures_init).parent / "tiny-rope" / f, path / f)
    return path


def test_export_loads_in_stock_transformers_as_verified(tmp_path, capsys):
    src = _checkpoint(tmp_path, "deepseek_v3", True)
    out = tmp_path / "out"
    assert main(["export", "--model", str(src), "--scaling", "yarn:factor=16,mscale=1,mscale_all_dim=1",
                 "--out", str(out)]) == 0
    assert "stock transformers load: max |logit diff| 0 over" in capsys.readouterr().out
    rope = json.loads((out / "config.json").read_text())["rope_parameters"]
    assert rope["factor"] == 16 and rope["mscale_all_dim"] == 1


def test_the_card_says_what_vllm_and_transformers_4_read_otherwise(tmp_path):
    v3, v2 = _checkpoint(tmp_path, "deepseek_v3", False), _checkpoint(tmp_path, "deepseek_v2", False)
    results = {"verification": {"max_abs_logit_diff": 0.0, "tokens": 10, "positions_from": [0], "passed": True},
               "meta": {"ctxext": "x"}}
    card = model_card(plan_export(str(v3), "linear:factor=2"), results)
    assert "vLLM's deepseek_v3 reads any rope_scaling as DeepSeek's YaRN" in card and "factor 2" in card
    assert "vLLM" not in model_card(plan_export(str(v3), "yarn:factor=4,mscale=1,mscale_all_dim=1"), results)
    card = model_card(plan_export(str(v2), "yarn:factor=4,mscale=1,mscale_all_dim=1"), results)
    assert "transformers 4.x's DeepSeek-V2 leaves `mscale_all_dim` out of its softmax scale" in card
    assert "DeepSeek-V2 leaves" not in model_card(plan_export(str(v2), "yarn:factor=4"), results)


def test_eval_ppl_is_the_stock_twins(tmp_path):
    """`ctxext eval` runs its own mask-free attention kernel: it must take the module's softmax scale and the value
    width (16) that differs from the query-key width (24)."""
    from ctxext.data import load_documents
    from ctxext.evals import run_eval
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir
    from ctxext.models import load_model

    src, book = _checkpoint(tmp_path, "deepseek_v3", True), str(books_dir() / HELD_OUT_BOOK)
    text = "yarn:factor=8,mscale=1,mscale_all_dim=1"
    res = run_eval(str(src), [text], ["ppl"], [256], samples=1, data=[book], out=tmp_path / "ev", progress=False,
                   log=lambda m: None)
    got = next(r["value"] for r in res["records"] if r["bucket"] is None)
    lm = load_model(str(src))
    twin = stock_twin(lm.model, parse_spec(text), lm.info.config)
    ids = torch.tensor(load_documents([book], lm.tokenizer)[0].tokens[:256])[None]
    with torch.inference_mode():
        logp = twin(ids).logits[0, :-1].log_softmax(-1)
    want = float(torch.exp(-logp.gather(1, ids[0, 1:, None]).mean()))
    assert got == pytest.approx(want, rel=1e-5)


def test_other_types_that_set_their_scale_when_built_take_default_only(tmp_path):
    """MiniCPM3 builds its attention like DeepSeek's, but its rotary module and config were not checked against
    stock: refused in one line, from the config before weights and by apply_spec (the model untouched)."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model("minicpm3", vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=24,
                               qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, max_position_embeddings=256)
    cfg.save_pretrained(tmp_path)
    info = model_info(str(tmp_path))
    check_before_weights(parse_spec("default"), info)
    with pytest.raises(CtxextError, match="'minicpm3' attention sets its softmax scale .*only `default`"):
        check_before_weights(parse_spec("yarn:factor=4"), info)
    torch.manual_seed(0)
    lm = wrap_model(AutoModelForCausalLM.from_config(cfg).eval())
    with pytest.raises(CtxextError, match="deepseek_v2, deepseek_v3 only"):
        apply_spec(lm, "linear:factor=2")
    assert lm.spec is None and lm._undo is None


def test_the_plan_picks_nothing_for_a_type_that_takes_default_only(tmp_path, capsys):
    """It recommended yarn / dynamic-ntk / abf for MiniCPM3, which eval and export then refused."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model("minicpm3", vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=24,
                               qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, max_position_embeddings=256)
    cfg.save_pretrained(tmp_path / "m")
    assert main(["plan", "--model", str(tmp_path / "m"), "--target", "1024", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in data["recommendations"]] == ["default"]
    assert not any(r["recommended"] for r in data["recommendations"])
    assert data["skipped"]["yarn"] == ("ctxext applies only `default` to 'minicpm3' (its attention sets its softmax "
                                       "scale from the rope when built)")
    build("deepseek_v3", False).save_pretrained(tmp_path / "d")
    assert main(["plan", "--model", str(tmp_path / "d"), "--target", "1024", "--json"]) == 0
    picks = {r["method"]: r["recommended"] for r in json.loads(capsys.readouterr().out)["recommendations"]}
    assert "yarn" in picks and "training-free" in picks.values()


def test_flash_parts_take_values_narrower_or_wider_than_keys():
    from ctxext.evals.attention import _flash, merge, prefix_part

    g = torch.Generator().manual_seed(0)
    for dq, dv in ((24, 16), (16, 24)):
        q, k, v = (torch.randn(1, 2, n, d, generator=g) for n, d in ((5, dq), (9, dq), (9, dv)))
        out, lse = _flash(q, k, v, None, False)
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        assert out.shape == (1, 2, 5, dv) and torch.allclose(out, want, atol=1e-6)
        assert torch.allclose(lse, torch.logsumexp(q @ k.transpose(-1, -2) * dq ** -0.5, -1), atol=1e-5)
        parts = [prefix_part(q, k[:, :, :4], v[:, :, :4], None), _flash(q, k[:, :, 4:], v[:, :, 4:], None, False)]
        assert torch.allclose(merge(parts), want, atol=1e-6)


@pytest.mark.parametrize("arch", ["deepseek_v2", "deepseek_v3"])
def test_needle_tasks_with_the_shared_prefix_answer_as_without(tmp_path, arch):
    """passkey and niah encode the haystack once and read it through CPU flash attention, which takes one head width:
    DeepSeek's 16-wide values against 24-wide keys crashed every passkey and niah cell (and `ctxext train`'s evals)."""
    from ctxext.evals import run_eval
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    src = _checkpoint(tmp_path, arch, True)
    rows = {}
    for reuse in (True, False):
        out = tmp_path / f"r{reuse}"
        run_eval(str(src), ["default", "yarn:factor=8,mscale=1,mscale_all_dim=1"], ["passkey", "niah"], [256],
                 depths=[0.2, 0.8], samples=2, data=[str(books_dir() / HELD_OUT_BOOK)], out=out, reuse_prefix=reuse,
                 progress=False, log=lambda m: None)
        rows[reuse] = {p.name: [(r["answer"], r["correct"]) for r in map(json.loads, p.read_text().splitlines())]
                       for p in sorted((out / "answers").glob("*.jsonl"))}
    assert len(rows[True]) == 4 and all(len(v) == 4 for v in rows[True].values())
    assert rows[True] == rows[False]


def test_lora_on_deepseek_names_its_attention_layers(tmp_path, capsys):
    """The default targets (q_proj, k_proj, v_proj, o_proj) do not all exist in latent attention: the refusal named
    what was missing only."""
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    src = _checkpoint(tmp_path, "deepseek_v3", False)
    rc = main(["train", "--model", str(src), "--scaling", "yarn:factor=2", "--data", str(books_dir() / HELD_OUT_BOOK),
               "--seq-len", "128", "--steps", "1", "--no-eval", "--lora", "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and "no module named q_proj, k_proj, v_proj in this model; its attention's linear layers are " \
                       "kv_a_proj_with_mqa, kv_b_proj, o_proj, q_a_proj, q_b_proj" in err
