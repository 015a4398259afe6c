"""Exported checkpoints load in transformers 4.x (the last release, 4.57.1, which scripts/setup.sh installs off the
path in .venv/transformers4) with the same logits ctxext measured: export writes the 4.x schema (top-level
rope_theta + rope_scaling, and the original length at the top level) beside 5.x's rope_parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxext.export import export
from ctxext.models import apply_spec, load_model
from ctxext.scaling import parse_spec
from test_export import _legacy_llama3, _yarn_v5, tiny_checkpoint  # tiny models; sources that scale their own RoPE

pytestmark = pytest.mark.usefixtures("one_thread")
T4 = Path(sys.prefix) / "transformers4"
SPECS = ["yarn:factor=4", "yarn:factor=3.3", "linear:factor=4", "llama3:factor=4", "abf:base=500000",
         "ntk-by-parts:factor=4", "dynamic-ntk:factor=4",
         "longrope:factor=4,long_factor=[" + ",".join(f"{1 + 3 * i / 15:.3f}" for i in range(16)) + "]"]
STOCK4 = """
import json, sys, numpy as np, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
assert transformers.__version__.startswith("4."), transformers.__version__
ids = torch.from_numpy(np.load(sys.argv[1]))
out, tokens = {}, {}
for d, lengths in json.loads(sys.argv[2]).items():
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.inference_mode():
        out[d] = {n: float(np.abs(m(ids[:, :n]).logits.numpy() - np.load(f"{d}/ours_{n}.npy")).max()) for n in lengths}
    tokens[d] = AutoTokenizer.from_pretrained(d)(TEXT)["input_ids"]  # the model card loads it so
print(json.dumps({"version": transformers.__version__, "diffs": out, "tokens": tokens}))
"""
TEXT = "It was a dark and stormy night; the 1234567 rain fell in torrents."
STOCK4 = STOCK4.replace("TEXT", repr(TEXT))


def run_stock4(tmp_path, todo: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Load each folder of `todo` with transformers 4.57.1 (a subprocess) -> max |logit diff| to its ours_<n>.npy."""
    env = {**os.environ, "PYTHONPATH": str(T4)}
    run = subprocess.run([sys.executable, "-c", STOCK4, str(tmp_path / "ids.npy"), json.dumps(todo)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert res["version"] == "4.57.1"
    from transformers import AutoTokenizer  # 5.x here: the same ids as the tokenizer 4.x loaded from the export
    for d, got in res["tokens"].items():
        assert got == AutoTokenizer.from_pretrained(d)(TEXT)["input_ids"], d
    return res["diffs"]


def save_ours(lm, d: Path, ids: torch.Tensor, short: int = 200) -> list[int]:
    """ctxext's logits in the window and as far as the exported config admits (longrope's long factors)."""
    max_pos = json.loads((d / "config.json").read_text())["max_position_embeddings"]
    lengths = sorted({min(short, max_pos), max_pos})
    with torch.inference_mode():
        for n in lengths:
            np.save(d / f"ours_{n}.npy", lm.model(ids[:, :n]).logits.numpy())
    return lengths


def test_transformers4_runs_exports_as_ctxext_does(tmp_path):
    assert (T4 / "transformers").is_dir(), f"{T4} is missing: scripts/setup.sh installs transformers 4.57.1 there"
    lm = load_model("tiny-rope")
    ids = torch.randint(3, 2000, (1, 1024), generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "ids.npy", ids.numpy())
    todo = {}
    for i, spec in enumerate(SPECS):
        d = tmp_path / f"m{i}"
        export("tiny-rope", spec, d, verify_tokens=50)
        apply_spec(lm, parse_spec(spec))
        todo[str(d)] = save_ours(lm, d, ids)
    res = run_stock4(tmp_path, todo)
    diffs = {spec: res[str(tmp_path / f"m{i}")] for i, spec in enumerate(SPECS)}
    assert all(v == 0.0 for d in diffs.values() for v in d.values()), diffs


def _phi3(rotary: float):
    return "phi3", None, {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                              "partial_rotary_factor": rotary}}


def _ramp(n: int) -> str:
    return "[" + ",".join(f"{1 + 3 * i / (n - 1):.3f}" for i in range(n)) + "]"


# DeepSeek-V3 as shipped: YaRN whose temperature (mscale_all_dim) the attention folds into its softmax scale
DEEPSEEK_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
                 "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0}
# (source, spec): Phi-3 (full rotary, 8 pairs) and Phi-4-mini style (partial, 4 pairs) with each rope kind a 4.x
# Phi3 config takes; checkpoints whose config already scales RoPE exported as `default`.
SOURCES = {"phi3-full": _phi3(1.0), "phi3-partial": _phi3(0.5), "llama3-legacy": ("llama", _legacy_llama3, {}),
           "yarn-v5": ("llama", _yarn_v5, {}), "neox": ("gpt_neox", None, {}),
           "deepseek-v3-yarn": ("deepseek_v3", None,
                                {"rope_parameters": DEEPSEEK_YARN, "max_position_embeddings": 256}),
           "deepseek-v2": ("deepseek_v2", None, {})}
CASES = [("phi3-full", "longrope:factor=4,long_factor=" + _ramp(8)), ("phi3-full", "linear:factor=4"),
         ("phi3-full", "abf:base=500000"), ("phi3-partial", "longrope:factor=4,long_factor=" + _ramp(4)),
         ("phi3-partial", "linear:factor=2"), ("phi3-partial", "default"),
         ("llama3-legacy", "default"), ("yarn-v5", "default"),
         ("neox", "abf:base=50000"), ("neox", "yarn:factor=4"),
         ("deepseek-v3-yarn", "yarn:factor=16,mscale=1,mscale_all_dim=1"), ("deepseek-v3-yarn", "linear:factor=2"),
         ("deepseek-v3-yarn", "default"), ("deepseek-v2", "yarn:factor=4"), ("deepseek-v2", "abf:base=500")]


def test_transformers4_loads_phi3_and_scaled_default_exports(tmp_path):
    """Before: 4.57.1's Phi3Config refused the 7-key rope_scaling of every Phi3 export that scales RoPE, and ran
    partial-rotary exports with full rotary (it reads partial_rotary_factor only at the top level); `default` on a
    llama3 or yarn checkpoint was written unscaled; a GPT-NeoX export ran at base 10000 with rotary_pct 0.25 (4.x
    reads only rotary_emb_base and rotary_pct, and overwrites rope_theta). DeepSeek-V2/V3 (softmax scale set from
    the rope when built) were refused."""
    ids = torch.randint(3, 2000, (1, 256), generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "ids.npy", ids.numpy())
    todo = {}
    for name, (arch, edit, overrides) in SOURCES.items():
        src = tiny_checkpoint(tmp_path / name, arch, edit, **overrides)
        lm = load_model(str(src))
        for i, spec in enumerate(s for n, s in CASES if n == name):
            d = tmp_path / f"{name}-{i}"
            res = export(str(src), spec, d, verify_tokens=40)
            assert res["verification"]["max_abs_logit_diff"] == 0.0, (name, spec, res["verification"])
            apply_spec(lm, parse_spec(spec))
            todo[str(d)] = save_ours(lm, d, ids, short=40)
    res = run_stock4(tmp_path, todo)
    assert all(v == 0.0 for d in res.values() for v in d.values()), {k: v for k, v in res.items() if any(v.values())}
