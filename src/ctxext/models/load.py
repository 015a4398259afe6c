"""Load a model by name into a `LoadedModel` (eval mode, on the CPU unless a device is named, no network)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CtxextError
from ..scaling import Spec
from .info import ModelInfo, counted_params, info_from_config, read_config
from .names import convert_gguf, offline, resolve_source

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class LoadedModel:
    """A model ready to use: `spec` is the scaling currently applied (None: as loaded)."""

    name: str
    info: ModelInfo
    model: Any
    tokenizer: Any
    spec: Spec | None = None
    load_seconds: float = field(default=0.0, compare=False)
    _undo: Callable[[], None] | None = field(default=None, repr=False, compare=False)


def load_tokenizer(path: Path) -> Any:
    """The directory's tokenizer, or None when it has no tokenizer files (e.g. a bare test checkpoint)."""
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except ValueError as e:
        if "trust_remote_code" in str(e):  # a tokenizer class of the folder's own code (Yi's first release)
            raise CtxextError(f"{path}: its tokenizer needs the folder's own Python code; ctxext never runs a "
                              "model's code: give it a folder with a standard tokenizer") from None
        raise


def require_tokenizer(name: str, command: str, why: str) -> None:
    """Refuse, before any weights load, a model folder without tokenizer files (a GGUF file always carries one):
    eval, search, train and synth-qa failed only after loading the weights, plan --calibrate with a traceback."""
    src = resolve_source(name)
    if src.kind == "hf" and not any((src.path / f).is_file() for f in TOKENIZER_FILES):
        raise CtxextError(f"cannot {command} {name}: the folder has no tokenizer (none of {', '.join(TOKENIZER_FILES)})"
                          f", which {why}; copy the model's tokenizer files in")


def tokenizer_of(name: str) -> Any:
    """A model name's tokenizer without its weights (a GGUF not converted yet: read from the file), or None."""
    from .names import gguf_cache_dir, is_converted

    src = resolve_source(name)
    if src.kind == "hf":
        return load_tokenizer(src.path)
    converted = gguf_cache_dir(src.path)
    if is_converted(converted):
        return load_tokenizer(converted)
    offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(src.path.parent), gguf_file=src.path.name, local_files_only=True)


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda[:i]" is checked (one-line error without CUDA)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    index = device[5:] if device.startswith("cuda:") else ("0" if device == "cuda" else None)
    if index is not None and index.isdigit():
        if not torch.cuda.is_available():
            raise CtxextError(f"--device {device}: this machine has no CUDA GPU that torch {torch.__version__} can "
                              "use; use --device cpu (or auto)")
        if int(index) >= torch.cuda.device_count():
            raise CtxextError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
        return device
    raise CtxextError(f"unknown device '{device}'; accepted: auto, cpu, cuda, cuda:<index>")


def load_model(name: str, dtype: torch.dtype = torch.float32, attn: str = "sdpa", device: str = "cpu") -> LoadedModel:
    """Load a built-in name, HF directory or .gguf file (converted once, then cached) in eval mode on `device`
    (auto, cpu, cuda or cuda:<i>; see resolve_device)."""
    device = resolve_device(device)  # "auto" loaded the weights, then failed in torch's .to("auto")
    offline()
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    src = resolve_source(name)  # every naming error is raised here, before any weights
    path = src.path if src.kind == "hf" else convert_gguf(src.path)
    info = info_from_config(read_config(path), name, src.path, counted_params(path))
    kw = dict(dtype=dtype, local_files_only=True, trust_remote_code=False, output_loading_info=True)
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=attn, **kw)
    except ValueError as e:  # e.g. BLOOM has no SDPA path: fall back to eager rather than fail
        if attn != "sdpa" or "does not support" not in str(e):
            raise
        model, loading = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager", **kw)
    missing = list(loading.get("missing_keys") or [])
    if missing:  # initialised at random: every figure measured on it would be noise (ppl 2,086 for 41.8)
        raise CtxextError(f"{name}: {len(missing)} weight(s) the model needs are not in its files (e.g. "
                          f"{sorted(missing)[0]}): they would be random; check the checkpoint's tensor names")
    model.eval()
    if device != "cpu":
        model.to(device)
    return LoadedModel(name, info, model, load_tokenizer(path), load_seconds=time.perf_counter() - t0)


def wrap_model(model: Any, tokenizer: Any = None, name: str | None = None) -> LoadedModel:
    """A LoadedModel around a model already in memory (tests, training loops)."""
    cfg = model.config.to_dict()
    where = getattr(model.config, "_name_or_path", "") or "in-memory"
    return LoadedModel(name or where, info_from_config(cfg, name or where, where), model, tokenizer)
