"""Plain-number types shared by every scaling method, and the method registry.

A RoPE method is a pure function ``(RopeShape, params, seq_len) -> RopeFreqs``; an ALiBi method is
``(n_heads, params) -> slopes``. Models, files and devices never appear here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import CtxextError, did_you_mean


@dataclass(frozen=True)
class RopeShape:
    """What a RoPE model fixes: rotary dim d (head_dim × partial_rotary_factor), base b, trained length L."""

    rotary_dim: int
    base: float
    original_len: int

    def __post_init__(self) -> None:
        if self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise CtxextError(f"rotary_dim must be a positive even integer, got {self.rotary_dim}")
        if not self.base > 0:
            raise CtxextError(f"rope base must be > 0, got {self.base}")
        if self.original_len <= 0:
            raise CtxextError(f"original length must be > 0, got {self.original_len}")

    @property
    def n_pairs(self) -> int:
        return self.rotary_dim // 2

    def theta(self, base: float | None = None) -> np.ndarray:
        """θ_i = b^(−2i/d), i = 0 … d/2−1, returned as float64.

        Computed exactly as transformers' models compute their default inv_freq (float32 exponent 2i/d, torch's
        float32 pow, float32 reciprocal), so every later step starts from the θ the model really uses. A float64
        pow rounded to float32 lands one ulp off on some pairs for most shapes (39 of 66 (d, b) tried), which
        moved an ntk export's logits by 2e-3 at 16k positions."""
        import torch  # the pow must be torch's own: numpy's float32 pow rounds differently still

        b = float(self.base if base is None else base)
        with torch.no_grad():
            inv = 1.0 / (b ** (torch.arange(0, self.rotary_dim, 2, dtype=torch.int64).float() / self.rotary_dim))
        return inv.double().numpy()


@dataclass(frozen=True)
class RopeFreqs:
    """Per-pair inverse frequencies, the attention factor m (multiplies cos and sin), and n̂ start tokens
    (positions < start_tokens keep the original, unscaled frequencies: LongRoPE)."""

    inv_freq: np.ndarray
    attention_factor: float = 1.0
    start_tokens: int = 0

    def factors(self, shape: RopeShape) -> np.ndarray:
        """Per-pair rescale factors f_i = θ_i / θ'_i (1 extrapolates, s interpolates)."""
        return shape.theta() / self.inv_freq


@dataclass(frozen=True)
class Params:
    """Base for a method's parameters: frozen, validated at construction."""

    def __post_init__(self) -> None:  # subclasses validate, then call super
        pass

    def check_trained_len(self, trained_len: int) -> None:
        """Refuse values that cannot work on a model trained on `trained_len` tokens (known from its config, so
        before any weights); most methods take any."""


def check_factor(name: str, value: float, minimum: float = 1.0) -> None:
    if not value >= minimum:
        raise CtxextError(f"{name} must be >= {minimum:g}, got {value:g}")


@dataclass(frozen=True)
class Method:
    """One registry entry. `encodings` says which position encodings the method fits."""

    name: str
    params: type[Params]
    encodings: frozenset[str]
    rope: Callable[..., RopeFreqs] | None = None
    alibi: Callable[..., np.ndarray] | None = None
    length_dependent: bool = False  # frequencies depend on the current length (dynamic methods, longrope switch)
    hf: Callable[..., dict[str, Any] | str] | None = None  # -> HF rope_parameters, or a reason it can't
    summary: str = ""
    keys: tuple[str, ...] = field(default=())

    def make_params(self, values: dict[str, Any]) -> Params:
        return build_params(self.name, self.params, values)


REGISTRY: dict[str, Method] = {}


def register(name: str, params: type[Params], encodings: tuple[str, ...] = ("rope",), **kw: Any):
    """Decorator: register a RoPE (or ALiBi, with alibi=...) method under `name`."""

    def deco(fn: Callable) -> Callable:
        kind = "alibi" if encodings == ("alibi",) else "rope"
        entry = {kind: fn, **kw}
        keys = tuple(f.name for f in dataclasses.fields(params))
        REGISTRY[name] = Method(name, params, frozenset(encodings), keys=keys, **entry)
        return fn

    return deco


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise CtxextError(
            f"unknown scaling method '{name}'{did_you_mean(name, list(REGISTRY))}; "
            f"accepted: {', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[name]


def _coerce(method: str, key: str, value: Any, typ: Any) -> Any:
    """Turn a CLI string (or JSON value) into the field's declared type."""
    t = str(typ)
    try:
        if isinstance(value, str):
            v = value.strip()
            if "bool" in t:
                if v.lower() in ("1", "true", "yes", "on"):
                    return True
                if v.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(v)
            if "list" in t or "tuple" in t:
                parts = [p for p in v.strip("[]").replace(";", " ").replace(",", " ").split()]
                return tuple(float(p) for p in parts)
            if "int" in t and "float" not in t:
                f = float(v)
                if f != int(f):
                    raise ValueError(v)
                return int(f)
            if v.lower() in ("none", "null") and "None" in t:
                return None
            return float(v)
        if ("list" in t or "tuple" in t) and isinstance(value, (list, tuple)):
            return tuple(float(x) for x in value)
        if "bool" in t:
            return bool(value)
        if value is None:
            return None
        if "int" in t and "float" not in t:
            if float(value) != int(value):
                raise ValueError(value)
            return int(value)
        return float(value)
    except (TypeError, ValueError):
        raise CtxextError(f"{method}: {key}={value!r} is not a valid {t.replace('typing.', '')}") from None


def build_params(method: str, cls: type[Params], values: dict[str, Any]) -> Params:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            accepted = ", ".join(fields) or "no keys"
            raise CtxextError(
                f"{method}: unknown key '{key}'{did_you_mean(key, list(fields))}; accepted: {accepted}"
            )
    typed = {k: _coerce(method, k, v, fields[k].type) for k, v in values.items()}
    try:
        return cls(**typed)
    except CtxextError as e:  # a value check: say which method (with several --scaling, which one)
        msg = str(e)
        raise CtxextError(msg if msg.startswith(f"{method}:") else f"{method}: {msg}") from None
    except TypeError as e:  # a required field is missing
        missing = [n for n, f in fields.items() if n not in typed
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        raise CtxextError(f"{method}: missing required key(s): {', '.join(missing)}") from e
