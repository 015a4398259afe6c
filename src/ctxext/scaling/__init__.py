"""Scaling methods: pure functions of plain numbers, registered by name.

Importing this package registers every method; `REGISTRY` maps names to `Method` entries.
"""

from . import alibi, attention, basic, dynamic, longrope, yarn  # noqa: F401  (registration side effects)
from .alibi import alibi_slopes
from .base import REGISTRY, Method, RopeFreqs, RopeShape, get_method
from .hf import config_rope_fields, factors_of, hf_rope_fields, legacy_rope_fields, rope_shape_from_config
from .spec import Spec, check_fits, parse_spec, resolve_alibi, resolve_rope

__all__ = [
    "REGISTRY", "Method", "RopeFreqs", "RopeShape", "Spec", "alibi_slopes", "check_fits", "factors_of",
    "config_rope_fields", "get_method", "hf_rope_fields", "legacy_rope_fields", "parse_spec", "resolve_alibi", "resolve_rope",
    "rope_shape_from_config",
]
