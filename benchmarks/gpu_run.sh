#!/usr/bin/env bash
# The GPU speed check, run on a lent GPU machine in one call (prepare here with `python benchmarks/gpu_carry.py
# pack`; then the device tool: run(carry=[".gpu"], command="bash benchmarks/gpu_run.sh", timeout_s=540)).
# SmolLM2-135M's shape with random weights (speed and memory do not depend on the values):
#   1. ctxext train vs the naive transformers loop at 8k / 16k / 32k / 64k (bf16 autocast, SDPA/flash), with MFU,
#      and ctxext without gradient checkpointing at 8k and 32k (does skipping the recomputation pay where it fits?);
#   2. eval ppl vs the naive loop at 64k (benchmarks/eval_speed.py --device cuda);
#   3. ctxext eval --device cuda at 16k / 64k (the eval path on a GPU; random weights: the values mean nothing).
# Everything lands in $OUT (at most 8 files come back). LENGTHS / VARIANTS / EVAL_LENGTHS / DEVICE change the
# run. Back here: train_speed-gpu.json -> benchmarks/results/train_speed-<gpu>.json (e.g. nvidia-h200),
# eval_speed-gpu.json -> eval_speed-<gpu>.json, eval-gpu.json -> benchmarks/results/eval-<gpu>.json, then benchmarks/readme.py.
# A CPU rehearsal: DEVICE=cpu LENGTHS=1024 VARIANTS=naive@1024 EVAL_LENGTHS=1024 STEPS=3 bash benchmarks/gpu_run.sh
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
LENGTHS=${LENGTHS:-8192,16384,32768,65536}
VARIANTS=${VARIANTS:-naive@8192,no-ckpt@8192,naive@16384,naive@32768,naive-ckpt@32768,no-ckpt@32768,naive@65536}
STEPS=${STEPS:-6}  # 2 timed steps (3) let one slow step halve a short row's tokens/s (seen on the H200)
EVAL_LENGTHS=${EVAL_LENGTHS:-16384,65536}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}  # the device image's python3 holds its CUDA torch
log="$OUT/log.txt"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; $PY --version
  source benchmarks/gpu_env.sh || exit 1
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'transformers', transformers.__version__)"
  model=/tmp/smollm2-random
  [ -f "$model/model.safetensors" ] || $PY benchmarks/gpu_carry.py init "$model" || exit 1
  t0=$SECONDS
  $PY benchmarks/train_speed.py --model "$model" --lengths "$LENGTHS" --steps "$STEPS" --variants "$VARIANTS" \
    --out "$OUT/train_speed-gpu.json"
  echo "train_speed: $((SECONDS - t0)) s"
  t0=$SECONDS
  $PY benchmarks/eval_speed.py --model "$model" --device "$DEVICE" --length "${EVAL_LENGTHS##*,}" --repeats 2 --skip reuse \
    --out "$OUT/eval_speed-gpu.json"
  echo "eval_speed: $((SECONDS - t0)) s"
  t0=$SECONDS
  rm -rf /tmp/gpu-eval
  $PY -m ctxext.cli eval --model "$model" --device "$DEVICE" --scaling yarn:factor=8 --task ppl --task passkey \
    --lengths "$EVAL_LENGTHS" --samples 1 --depths 0.5 --data .gpu/books/pg84.txt --out /tmp/gpu-eval --no-progress
  cp /tmp/gpu-eval/results.json "$OUT/eval-gpu.json" 2>/dev/null
  echo "eval: $((SECONDS - t0)) s"
} 2>&1 | tee "$log"
