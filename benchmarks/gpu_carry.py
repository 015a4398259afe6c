"""Pack what a GPU run needs into `.gpu/` (here), and build the speed model from it (there).

The GPU machine a session may be lent has no network and gets only the working tree (64 MiB): no SmolLM2 weights
(93 MB), no books (they live beside the repository), and other versions of transformers / peft than
constraints.txt. For speed a randomly initialised model of SmolLM2-135M's exact shape serves (throughput and
memory do not depend on the weights' values), so only its config and tokenizer travel.

    python benchmarks/gpu_carry.py pack            # here: writes .gpu/ (ignored by git; ~20 MB)
    python3 benchmarks/gpu_carry.py init DIR       # there: .gpu/smollm2-shape + random weights -> DIR
    # then, with the device tool:  run(carry=[".gpu"], command="bash benchmarks/gpu_run.sh")

.gpu/ holds: wheels/ (transformers, tokenizers, peft at the pinned versions, for CPython 3.12 on x86-64),
smollm2-shape/ (config.json + tokenizer files of the converted SmolLM2-135M-Instruct), books/ (the benchmark
books). See benchmarks/gpu_run.sh for what runs there.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".gpu"
WHEELS = ("transformers", "tokenizers", "peft")  # the device image has the rest (its huggingface_hub, accelerate)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.strip()
    raise SystemExit(f"{name} is not pinned in constraints.txt")


def pack() -> None:
    from train_speed import BOOKS  # what the speed run reads, plus the held-out book for the eval

    from ctxext.fixtures import HELD_OUT_BOOK, book_path
    from ctxext.models import resolve_model_path
    from ctxext.models.names import SOURCE_FILE

    if CARRY.exists():
        shutil.rmtree(CARRY)
    (CARRY / "wheels").mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[x for p in PLATFORMS for x in ("--platform", p)],
           "-d", str(CARRY / "wheels"), *[pinned(w) for w in WHEELS]]
    subprocess.run(cmd, check=True)
    src = resolve_model_path("smollm2-135m")
    shape = CARRY / "smollm2-shape"
    shape.mkdir()
    for f in src.iterdir():  # everything but the weights (and the cache's own record)
        if f.is_file() and f.suffix != ".safetensors" and f.name != SOURCE_FILE:
            shutil.copy2(f, shape / f.name)
    (CARRY / "books").mkdir()
    for b in (*BOOKS, HELD_OUT_BOOK):
        shutil.copy2(book_path(b), CARRY / "books" / b)
    size = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file())
    print(f"wrote {CARRY} ({size / 2**20:.1f} MiB): carry it with the device tool's carry=['.gpu']")


def init(shape: Path, out: Path) -> None:
    """Random weights (seed 0, the architecture's own initialisation) for the config in `shape`, saved with its
    tokenizer files into `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(shape, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for f in shape.iterdir():  # the tokenizer files (what save_pretrained wrote stays)
        if f.is_file() and not (out / f.name).exists():
            shutil.copy2(f, out / f.name)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {config.model_type}, {n:,} parameters, random weights (speed runs only)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pack", help="write .gpu/ here")
    i = sub.add_parser("init", help="random-weight model of SmolLM2's shape into DIR")
    i.add_argument("out", type=Path)
    i.add_argument("--shape", type=Path, default=CARRY / "smollm2-shape")
    args = ap.parse_args()
    if args.cmd == "pack":
        pack()
    else:
        init(args.shape, args.out)


if __name__ == "__main__":
    main()
