"""Files in --out: atomic writes (a crash never leaves a half-written file) and where curves live."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write to a temporary file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C or a full disk: no stray temporary (its pid-named file is never reused)
        tmp.unlink(missing_ok=True)
        raise


def resume_jsonl(path: Path) -> list[Any]:
    """The records of a JSONL file a run appends to, read for --resume: a last line that a kill cut short is dropped
    and the file rewritten without it (the next append would continue it); a bad line elsewhere is an error."""
    from ..data import jsonl_lines
    from ..errors import CtxextError

    lines = [(i, x) for i, x in enumerate(jsonl_lines(path), 1) if x.strip()] if path.is_file() else []
    records = []
    for k, (i, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if k < len(lines) - 1:
                raise CtxextError(f"cannot resume from {path}: line {i} is not JSON ({e.msg}); it was not written "
                                  "by an interrupted run (only a last line can be cut short)") from None
            atomic_write(path, "".join(x + "\n" for _, x in lines[:-1]))
    return records


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def slug(text: str) -> str:
    """A file-name-safe, unique name for a spec as the user wrote it."""
    short = re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")[:48]
    return f"{short}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def curve_path(out: Path, metric: str, spec_text: str, length: int) -> Path:
    return Path(out) / "curves" / f"{metric}-{slug(spec_text)}-{length}.npy"


def save_array(path: Path, a: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(a, dtype=np.float32))
    atomic_write(path, buf.getvalue())


def load_array(path: Path) -> np.ndarray | None:
    try:
        return np.load(path).astype(np.float64)
    except (OSError, ValueError):
        return None
