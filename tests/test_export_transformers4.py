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

pytestmark = pytest.mark.usefixtures("one_thread")
T4 = Path(sys.prefix) / "transformers4"
SPECS = ["yarn:factor=4", "yarn:factor=3.3", "linear:factor=4", "llama3:factor=4", "abf:base=500000",
         "ntk-by-parts:factor=4", "dynamic-ntk:factor=4",
         "longrope:factor=4,long_factor=[" + ",".join(f"{1 + 3 * i / 15:.3f}" for i in range(16)) + "]"]
STOCK4 = """
import json, sys, numpy as np, torch, transformers
from transformers import AutoModelForCausalLM
torch.set_num_threads(1)
assert transformers.__version__.startswith("4."), transformers.__version__
ids = torch.from_numpy(np.load(sys.argv[1]))
out = {}
for d, lengths in json.loads(sys.argv[2]).items():
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.inference_mode():
        out[d] = {n: float(np.abs(m(ids[:, :n]).logits.numpy() - np.load(f"{d}/ours_{n}.npy")).max()) for n in lengths}
print(json.dumps({"version": transformers.__version__, "diffs": out}))
"""


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
        max_pos = json.loads((d / "config.json").read_text())["max_position_embeddings"]
        lengths = [200, max_pos]  # in the window, and as far as the config admits (longrope's long factors)
        with torch.inference_mode():
            for n in lengths:
                np.save(d / f"ours_{n}.npy", lm.model(ids[:, :n]).logits.numpy())
        todo[str(d)] = lengths
    env = {**os.environ, "PYTHONPATH": str(T4)}
    run = subprocess.run([sys.executable, "-c", STOCK4, str(tmp_path / "ids.npy"), json.dumps(todo)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert res["version"] == "4.57.1"
    diffs = {spec: res["diffs"][str(tmp_path / f"m{i}")] for i, spec in enumerate(SPECS)}
    assert all(v == 0.0 for d in diffs.values() for v in d.values()), diffs
