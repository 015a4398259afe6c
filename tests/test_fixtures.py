"""The built-in fixtures tiny-rope and tiny-alibi: loadable with plain transformers, small, and really
trained (fits its 256-token window on the held-out book, fails past it, responds to scaling). tiny-rope also
retrieves pass keys inside its window and not at 4x (its copy warm-up, see ctxext.fixtures.build); so does
tiny-alibi (8 heads), where ntk-alibi keeps part of the retrieval at 4x. Bounds are the figures measured at build
time (fixture.json) with a margin."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from ctxext.errors import CtxextError
from ctxext.fixtures import FIXTURES, HELD_OUT_BOOK, WINDOW, books_dir, fixture_path
from ctxext.fixtures.build import clean_gutenberg

MAX_BYTES = 5 * 1024 * 1024
# In-window perplexity on the first 16 windows of 256 tokens of the held-out book (measured 63.75 for tiny-rope,
# 80.46 for tiny-alibi; bound = measured + ~10 %).
PPL_BOUND = {"tiny-rope": 70.0, "tiny-alibi": 88.0}


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    path = fixture_path(request.param)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return request.param, model, tok


@pytest.fixture(scope="module")
def held_out_text():
    return clean_gutenberg((books_dir() / HELD_OUT_BOOK).read_text(encoding="utf-8"))


def bucket_ppl(model, ids: list[int], length: int, n_windows: int) -> list[float]:
    """Perplexity of each 256-token bucket over non-overlapping `length`-token windows."""
    nll = np.zeros(length // WINDOW)
    with torch.no_grad():
        for w in range(n_windows):
            x = torch.tensor(ids[w * length:(w + 1) * length + 1])[None]
            logits = model(input_ids=x[:, :-1]).logits[0].double()
            lp = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none").numpy()
            nll += lp.reshape(-1, WINDOW).sum(1)
    return list(np.exp(nll / (n_windows * WINDOW)))


def test_names_and_errors():
    assert FIXTURES == ("tiny-rope", "tiny-alibi")
    with pytest.raises(CtxextError, match="unknown fixture 'tiny-rop'.*did you mean 'tiny-rope'"):
        fixture_path("tiny-rop")
    with pytest.raises(CtxextError, match="accepted: tiny-rope, tiny-alibi"):
        fixture_path("nope")


def test_books_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXEXT_BOOKS", str(tmp_path))
    assert books_dir() == tmp_path
    monkeypatch.setenv("CTXEXT_BOOKS", str(tmp_path / "missing"))
    with pytest.raises(CtxextError, match="CTXEXT_BOOKS"):
        books_dir()


@pytest.mark.parametrize("name", FIXTURES)
def test_files_small_and_described(name):
    path = fixture_path(name)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "fixture.json"):
        assert (path / f).is_file(), f
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    assert size <= MAX_BYTES, f"{name} is {size / 2**20:.2f} MiB"
    meta = json.loads((path / "fixture.json").read_text())
    assert meta["name"] == name and meta["held_out_book"] == HELD_OUT_BOOK == "pg84.txt"
    assert HELD_OUT_BOOK not in meta["train_books"] and meta["trained_window"] == WINDOW
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["max_position_embeddings"] == WINDOW  # the trained window, for RoPE and ALiBi alike


def test_tokenizer(fixture):
    _, model, tok = fixture
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0 == model.config.eos_token_id
    ids = tok(" 90210").input_ids
    assert [tok.decode([i]) for i in ids] == [" ", "9", "0", "2", "1", "0"]  # digits split one by one
    assert tok.decode(tok("The pass key is 12345.").input_ids) == "The pass key is 12345."


def test_in_window_perplexity(fixture, held_out_text):
    name, model, tok = fixture
    ids = tok(held_out_text).input_ids
    ppl = bucket_ppl(model, ids, WINDOW, 16)[0]
    assert ppl < PPL_BOUND[name], f"{name}: in-window perplexity {ppl:.2f}"


def test_rope_fails_past_window_and_yarn_helps(held_out_text):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ctxext.scaling import parse_spec, resolve_rope, rope_shape_from_config

    path = fixture_path("tiny-rope")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = AutoTokenizer.from_pretrained(path)(held_out_text).input_ids
    in_window = bucket_ppl(model, ids, WINDOW, 16)[0]
    default = bucket_ppl(model, ids, 4 * WINDOW, 4)

    rot = model.model.rotary_emb
    freqs = resolve_rope(parse_spec("yarn:factor=4"), rope_shape_from_config(model.config.to_dict()))
    rot.inv_freq.copy_(torch.as_tensor(freqs.inv_freq, dtype=torch.float32))
    rot.attention_scaling = freqs.attention_factor
    yarn = bucket_ppl(model, ids, 4 * WINDOW, 4)

    assert default[0] < 1.5 * in_window  # the first bucket is still inside the trained window
    assert default[-1] >= 2 * in_window, f"default at 768-1023: {default[-1]:.1f} vs {in_window:.1f} in window"
    assert yarn[-1] <= 0.55 * default[-1]  # measured 70.9 vs 147.3, f"yarn {yarn[-1]:.1f} vs default {default[-1]:.1f} at 768-1023"



def test_rope_fixture_retrieves_in_window_only():
    """Greedy passkey, 12 depths from 0 to 1: 12/12 at 256 tokens and 0/12 at 1024 when built; bounds 10/12, 2/12."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ctxext.fixtures.build import passkey_accuracy

    path = fixture_path("tiny-rope")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert passkey_accuracy(model, tok, 256, 12) >= 10 / 12
    assert passkey_accuracy(model, tok, 1024, 12) <= 2 / 12


def test_alibi_fixture_retrieves_in_window_and_ntk_alibi_keeps_part_at_4x():
    """Greedy passkey, 12 depths: measured 11/12 at 256; at 1024 default 3/12, ntk-alibi:factor=4 7/12,
    alibi-interp:factor=4 0/12 (interpolated slopes blur the nearby positions the copy heads rely on)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ctxext.fixtures.build import alibi_scaled, passkey_accuracy

    path = fixture_path("tiny-alibi")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert passkey_accuracy(model, tok, 256, 12) >= 10 / 12
    default = passkey_accuracy(model, tok, 1024, 12)
    with alibi_scaled(model, "ntk-alibi:factor=4"):
        ntk = passkey_accuracy(model, tok, 1024, 12)
    with alibi_scaled(model, "alibi-interp:factor=4"):
        interp = passkey_accuracy(model, tok, 1024, 12)
    assert default <= 5 / 12 and interp <= 1 / 12
    assert ntk >= default + 3 / 12, f"ntk-alibi {ntk:.2f} vs default {default:.2f}"


def test_an_experimental_build_never_replaces_the_shipped_fixtures(capsys):
    """`--steps` without --out wrote into the package folder, replacing the fixtures every test is calibrated on."""
    from ctxext.fixtures.build import main as build

    with pytest.raises(SystemExit) as e:
        build(["--steps", "5"])
    assert e.value.code == 2 and "--steps builds an experimental fixture: give --out" in capsys.readouterr().err
