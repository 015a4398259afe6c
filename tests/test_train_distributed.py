"""Two CPU processes (accelerate launch, gloo) with the shipped DDP and FSDP configs take the same steps as one
process with the same global batch: loss curves equal within 1e-5 relative (only the summation order of the
gradient all-reduce differs), and the exported weights agree."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxext.fixtures import TRAIN_BOOKS, books_dir

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # relative, per step
ARGS = ["--model", "tiny-rope", "--scaling", "linear:factor=2", "--seq-len", "512", "--steps", "5",
        "--lr", "1e-3", "--batch-tokens", "1024", "--warmup", "2", "--no-eval", "--no-progress",
        "--no-grad-checkpointing"]


def _run(cmd: list[str], out: Path, cpu_env: bool) -> list[float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if cpu_env:
        env["ACCELERATE_USE_CPU"] = "1"  # gloo process group on CPU (docs/training.md)
    data = str(books_dir() / TRAIN_BOOKS[2])
    proc = subprocess.run(cmd + ARGS + ["--data", data, "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    return res["meta"]["distributed"], res["meta"]["processes"], [h["loss"] for h in res["training"]["history"]]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    return out, _run([sys.executable, "-m", "ctxext.cli", "train"], out, cpu_env=False)


@pytest.mark.slow
@pytest.mark.parametrize("config,kind", [("ddp", "MULTI_CPU"), ("fsdp", "FSDP")])
def test_two_processes_match_one(tmp_path, single, config, kind):
    out = tmp_path / config
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "configs" / "accelerate" / f"{config}.yaml"), "--num_processes", "2",
                "--mixed_precision", "no", "-m", "ctxext.cli", "train"]
    distributed, processes, losses = _run(launcher, out, cpu_env=True)
    assert (distributed, processes) == (kind, 2)
    ref_out, (_, _, ref) = single
    assert len(losses) == len(ref) == 5
    assert losses == pytest.approx(ref, rel=TOLERANCE)

    from safetensors.torch import load_file

    a, b = load_file(str(ref_out / "final" / "model.safetensors")), load_file(str(out / "final" / "model.safetensors"))
    assert set(a) == set(b)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
