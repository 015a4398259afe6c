# Sourced by the GPU scripts (benchmarks/gpu_run.sh, benchmarks/gpu_methods.sh) on the lent machine: the pinned
# transformers / tokenizers / peft / gguf from .gpu/wheels into /tmp/site unless its python has them already (the
# install stays on a warm machine between calls), and the offline environment ctxext runs in there.
PY=${PY:-python3}  # the device image's python3 holds its CUDA torch
pin() { grep "^$1==" constraints.txt | cut -d= -f3; }
if ! $PY -c "import transformers, tokenizers, peft, gguf; assert (transformers.__version__, tokenizers.__version__,
peft.__version__) == ('$(pin transformers)', '$(pin tokenizers)', '$(pin peft)')" 2>/dev/null \
   && ! PYTHONPATH=/tmp/site $PY -c "import transformers, gguf; assert transformers.__version__ == '$(pin transformers)'" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/wheels/*.whl || return 1
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CTXEXT_CACHE=/tmp/ctxext-cache
[ -d .gpu/books ] && export CTXEXT_BOOKS=$PWD/.gpu/books
[ -d /tmp/ctxext-books ] && export CTXEXT_BOOKS=/tmp/ctxext-books
return 0
