"""Models: find (HF directory, .gguf file, built-in name), inspect without loading weights, load,
and apply a scaling spec in place.

Public API (other packages import only these names):
    resolve_model_path(name) -> Path          HF directory for a name; converts a GGUF once into the cache
    model_info(name) -> ModelInfo             config-only facts (encoding, RopeShape, heads); no weights
    load_model(name, dtype=..., attn=..., device=...) -> LoadedModel
    resolve_device(device) -> str             "auto" -> cuda when visible, else cpu; checks cuda[:i]
    apply_spec(lm, spec) -> None              in place; `default` restores the model as loaded
    check_before_weights(spec, info) -> None  what the config decides about a spec (encoding, windows)
    wrap_model(model, tokenizer=None, name=None) -> LoadedModel   a model already in memory
    BUILTINS                                  built-in names -> resolver

Modules: names (names, GGUF cache) · info (ModelInfo) · load · apply (dispatch, undo) · rope (ScaledRotary)
· attention (pre-RoPE KV cache, position plans) · alibi (BLOOM slopes) · tiny (random test models).
"""

from .apply import apply_spec, check_before_weights
from .info import ModelInfo, model_info
from .load import LoadedModel, load_model, resolve_device, wrap_model
from .names import BUILTINS, resolve_model_path

__all__ = ["BUILTINS", "LoadedModel", "ModelInfo", "apply_spec", "check_before_weights", "load_model", "model_info",
           "resolve_device", "resolve_model_path", "wrap_model"]
