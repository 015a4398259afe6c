"""Scaling specs: `name:key=value,…` or a JSON file written by ctxext, parsed and validated before any
model is loaded, then resolved against a model's RoPE shape or ALiBi head count."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CtxextError
from .base import Method, Params, RopeFreqs, RopeShape, get_method

# Keys every RoPE method accepts besides its own: override the trained length read from the model.
COMMON_KEYS = ("original_max_position_embeddings",)
# The most positions a spec may reach (factor, original length, an exported max_position_embeddings): int32
# position indices, far past any context a model is run at, and far below where float or int64 arithmetic breaks.
MAX_POSITIONS = 2**31 - 1


@dataclass(frozen=True)
class Spec:
    """A validated scaling choice. `text` is the spec as the user wrote it (results are keyed by it)."""

    method: str
    params: Params
    text: str
    original_len: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # e.g. search provenance

    @property
    def entry(self) -> Method:
        return get_method(self.method)

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration saved next to results (and accepted back by parse_spec)."""
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self.params).items()}
        if self.original_len is not None:
            params["original_max_position_embeddings"] = self.original_len
        out: dict[str, Any] = {"method": self.method, "params": params}
        if self.meta:
            out["meta"] = self.meta
        return out


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside [...] (lists may be written inline)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in (x.strip() for x in parts) if p]


def _numbers(value: Any) -> list[float]:
    """The numbers a raw spec value (CLI string, JSON number or list) holds; what does not parse is left to the
    type check."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    out = []
    for tok in str(value).strip().strip("[]").replace(";", " ").replace(",", " ").split():
        try:
            out.append(float(tok))
        except ValueError:
            pass
    return out


def _check_numbers(method: str, values: dict[str, Any]) -> None:
    """Refuse inf/nan (and literals beyond float range, such as 1e400) before any arithmetic sees them."""
    for key, value in values.items():
        bad = next((x for x in _numbers(value) if not math.isfinite(x)), None)
        if bad is not None:
            raise CtxextError(f"{method}: {key}={value!r} is not a finite number")


def _check_positions(method: str, key: str, value: float) -> None:
    if value > MAX_POSITIONS:
        raise CtxextError(f"{method}: {key} must be <= {MAX_POSITIONS} (2**31 - 1, the most positions ctxext "
                          f"accepts), got {value:g}")


def _from_values(method: str, values: dict[str, Any], text: str, meta: dict | None = None) -> Spec:
    entry = get_method(method)
    values = dict(values)
    _check_numbers(method, values)
    original = values.pop("original_max_position_embeddings", None)
    if original is not None:
        if "rope" not in entry.encodings:
            raise CtxextError(f"{method}: unknown key 'original_max_position_embeddings' (ALiBi has no trained rotary length)")
        try:
            number = float(original)
        except ValueError:
            number = math.nan
        if not number.is_integer():  # 4095.9 was cut to 4095, silently moving every frequency computed from it
            raise CtxextError(f"{method}: original_max_position_embeddings={original!r} is not an integer")
        original = int(number)
        if original <= 0:
            raise CtxextError(f"{method}: original_max_position_embeddings must be > 0, got {original}")
        _check_positions(method, "original_max_position_embeddings", original)
    params = entry.make_params(values)
    factor = getattr(params, "factor", None)
    if isinstance(factor, (int, float)):  # a context-extension factor past this reaches no model's length
        _check_positions(method, "factor", factor)
    return Spec(method, params, text, original, meta or {})


def parse_spec(text: str) -> Spec:
    """Parse `name`, `name:key=value,…` or a path to a ctxext JSON spec file."""
    text = text.strip()
    if not text:
        raise CtxextError("empty scaling spec; expected name[:key=value,...] or a .json file")
    if is_file_spec(text):
        return load_spec_file(Path(text), text)
    name, _, rest = text.partition(":")
    values: dict[str, Any] = {}
    for item in _split_top(rest):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise CtxextError(f"bad spec item '{item}' in '{text}'; expected key=value")
        if key.strip() in values:  # last-one-wins would silently drop what the user typed first
            raise CtxextError(f"'{key.strip()}' is given twice in '{text}'; give each key once")
        values[key.strip()] = value.strip()
    return _from_values(name.strip(), values, text)


def is_file_spec(text: str) -> bool:
    """Whether a spec names a JSON file (whose content, not the text, defines it) rather than `name:key=value`."""
    text = text.strip()
    return text.endswith(".json") or (":" not in text and "=" not in text and _is_file(Path(text)))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name longer than the file system allows: not a path
        return False


def load_spec_file(path: Path, text: str | None = None) -> Spec:
    if not path.is_file():
        raise CtxextError(f"scaling spec file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CtxextError(f"scaling spec file {path} is not valid JSON: {e.msg} (line {e.lineno})") from None
    if isinstance(data, dict) and "spec" in data and isinstance(data["spec"], dict):
        data = {**data["spec"], "meta": {**data.get("meta", {}), **data["spec"].get("meta", {})}}
    if not isinstance(data, dict) or "method" not in data:
        raise CtxextError(f"scaling spec file {path} has no 'method'; expected {{\"method\": ..., \"params\": {{...}}}}")
    return _from_values(str(data["method"]), data.get("params") or {}, text or str(path), data.get("meta"))


def check_fits(spec: Spec, encoding: str) -> None:
    """Refuse a method that does not fit the model's position encoding ('rope' or 'alibi')."""
    entry = spec.entry
    if encoding not in entry.encodings:
        from .base import REGISTRY

        fitting = sorted(n for n, m in REGISTRY.items() if encoding in m.encodings)
        kind = "RoPE" if encoding == "rope" else "ALiBi"
        raise CtxextError(f"'{spec.method}' does not fit this model's position encoding ({kind}); "
                          f"accepted for {kind} models: {', '.join(fitting)}")


def effective_shape(spec: Spec, shape: RopeShape) -> RopeShape:
    if spec.original_len is None:
        return shape
    return RopeShape(shape.rotary_dim, shape.base, spec.original_len)


def resolve_rope(spec: Spec, shape: RopeShape, seq_len: int | None = None) -> RopeFreqs:
    """inv_freq and attention factor of `spec` on a model of this shape, at current length seq_len."""
    check_fits(spec, "rope")
    return spec.entry.rope(effective_shape(spec, shape), spec.params, seq_len)


def resolve_alibi(spec: Spec, n_heads: int) -> np.ndarray:
    check_fits(spec, "alibi")
    return spec.entry.alibi(n_heads, spec.params)
