"""Models: find (HF directory, .gguf file, built-in name), inspect without loading weights, load,
and apply a scaling spec in place.

Public API (other packages import only these names):
    resolve_model_path(name) -> Path          HF directory for a name; converts a GGUF once into the cache
    model_info(name) -> ModelInfo             config-only facts (encoding, RopeShape, heads); no weights
    load_model(name, dtype=..., attn=...) -> LoadedModel
    apply_spec(lm, spec) -> None              in place; `default` restores the model as trained
"""
