"""Apply a scaling spec to a loaded model, in place; the previous spec is undone first.

RoPE, static methods: the model's rotary-embedding module is replaced by a `ScaledRotary` with the spec's
inv_freq and attention factor (the state dict stays the stock one). DeepSeek-style attention, which sets its
softmax scale from the config's rope when built, also gets the scale a stock model of the exported config holds.
RoPE, length-dependent methods (dynamic-ntk, dynamic-yarn, longrope): the same module swap, plus every attention
module's forward replaced by ctxext's pre-RoPE-cache attention with a position plan (`ctxext.models.attention`).
ALiBi (BLOOM): the model's bias uses the spec's slopes (`ctxext.models.alibi`).

`default` restores the model exactly as loaded (original modules and forwards, kept for undo). For a checkpoint
whose config already scales RoPE (e.g. a LongRoPE model), that is the checkpoint's own RoPE (stock dynamic NTK
is reset before every forward, so no result depends on an earlier, longer forward); other specs are
computed from its RopeShape (base and original length read from the config). Every refusal (a method that does
not fit the encoding, factors of the wrong length, an unsupported architecture) happens before the model changes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from torch import nn

from ..errors import CtxextError
from ..scaling import RopeShape, Spec, check_fits, resolve_alibi, resolve_rope
from ..scaling.attention import POSITION_METHODS
from ..scaling.hf import (SCALE_AT_INIT, SCALE_SET, config_rope_fields, config_rope_type, per_layer_rope,
                          softmax_scale_at_init, takes_default_only)
from ..scaling.spec import effective_shape
from .alibi import alibi_base_model, patch_alibi
from .attention import SUPPORTED_MODEL_TYPES, attention_modules, make_plan, patch_attention, sliding_window
from .info import ModelInfo
from .load import LoadedModel
from .rope import ScaledRotary, table_layout
from .stock_rope import OWN_LENGTH_DEPENDENT, checkpoint_freqs, own_rope_refusal, own_window, stock_freqs

Installer = Callable[[], Callable[[], None]]  # installs a patch, returns its undo


def position_shape(info: ModelInfo) -> RopeShape:
    """The shape a position method (self-extend, streaming) keeps: trained length = the checkpoint's own window when
    its config scales RoPE (Llama 3.1's llama3 bands, a yarn config), else the original length."""
    if config_rope_type(info.config) == "default":
        return info.rope_shape
    return replace(info.rope_shape, original_len=own_window(info.config))


def check_before_weights(spec: Spec, info: ModelInfo) -> None:
    """Everything about `spec` on this model that the config decides: its position encoding and, for position
    methods, its windows against the trained length (these failed mid-run, after earlier specs' cells)."""
    check_fits(spec, info.encoding)
    if info.encoding == "rope" and spec.method != "default":
        check_scale_at_init(spec, info.config.get("model_type"))
        if types := per_layer_rope(info.config):
            raise CtxextError(f"'{info.config.get('model_type')}' gives each layer type its own rope "
                              f"({', '.join(types)}); ctxext scales one rope per model, so '{spec.method}' cannot be "
                              "applied to it (only `default`)")
    if info.encoding == "rope" and info.rope_shape is not None and spec.method != "default":
        resolve_rope(spec, info.rope_shape)  # pure: e.g. a longrope factor list of another model's length
    if spec.method in POSITION_METHODS and info.rope_shape is not None:
        own = config_rope_type(info.config)
        if own in OWN_LENGTH_DEPENDENT:
            raise CtxextError(own_rope_refusal(spec.method, own))
        spec.params.check_trained_len(effective_shape(spec, position_shape(info)).original_len)
    if spec.entry.length_dependent and info.encoding == "rope":  # methods that patch attention
        check_attention_model(spec.method, info.config.get("model_type"))
        window = info.config.get("sliding_window")
        if spec.method == "streaming" and window and info.config.get("use_sliding_window", True):
            check_no_sliding_window([window])


def check_scale_at_init(spec: Spec, model_type: str | None) -> None:
    if takes_default_only(model_type):
        raise CtxextError(f"'{model_type}' attention sets its softmax scale from the config's rope (mscale_all_dim) "
                          f"when the model is built; ctxext redoes that for {', '.join(SCALE_SET)} only, so "
                          f"'{spec.method}' cannot be applied to it (only `default`, the checkpoint as shipped)")


def _softmax_scales(lm: LoadedModel, spec: Spec) -> list[tuple[nn.Module, float]]:
    """(attention module, the softmax scale a stock model built with `spec`'s exported rope holds) for models of
    SCALE_AT_INIT types; [] for the others."""
    if lm.info.config.get("model_type") not in SCALE_AT_INIT:
        return []
    try:
        rope_parameters = config_rope_fields(spec, lm.info.config)[0]
    except CtxextError:  # no stock config says it: what it would say, for the one field the scale reads
        p = spec.params
        rope_parameters = {"rope_type": spec.method, "factor": getattr(p, "factor", 1.0),
                           "mscale_all_dim": getattr(p, "mscale_all_dim", None)}
    found = [m for m in lm.model.modules()
             if hasattr(m, "qk_head_dim") and isinstance(getattr(m, "scaling", None), float)]
    if not found:
        raise CtxextError(f"'{lm.info.config.get('model_type')}' attention should hold its softmax scale (qk_head_dim, "
                          f"scaling), which this transformers version's does not: '{spec.method}' cannot be applied")
    return [(m, softmax_scale_at_init(rope_parameters, m.qk_head_dim)) for m in found]


def check_attention_model(method: str, model_type: str | None, patchable: bool = True) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES or not patchable:
        raise CtxextError(f"'{method}' patches attention, which ctxext supports for "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)} models, not '{model_type}'")


def check_no_sliding_window(windows: list[int]) -> None:
    if windows:
        raise CtxextError(f"streaming on a model with sliding-window attention (sliding_window={windows[0]}) is not "
                          "supported: its cache drops old keys itself, sinks included")


def find_rotary(model: nn.Module) -> tuple[nn.Module, str, nn.Module]:
    """(parent, attribute, module) of the model's single rotary-embedding module."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, ScaledRotary) or (type(m).__name__.endswith("RotaryEmbedding") and hasattr(m, "inv_freq"))]
    if len(found) != 1:
        model_type = getattr(model.config, "model_type", "?")
        raise CtxextError(f"expected one rotary-embedding module in this '{model_type}' model, found {len(found)}; "
                          "ctxext cannot apply RoPE scaling to it")
    name, module = found[0]
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name), attr, module


def _stock_dynamic_reset(lm: LoadedModel) -> Installer | None:
    """`default` on a checkpoint whose config asks for stock dynamic NTK: transformers keeps the frequencies of the
    longest forward so far (and resets only below the window), so a forward's logits would depend on the forwards
    before it. The module is reset before each forward: every forward runs as in a freshly loaded model."""
    from ..scaling.hf import config_rope_type

    if config_rope_type(lm.info.config) != "dynamic":
        return None
    try:
        rotary = find_rotary(lm.model)[2]
    except CtxextError:  # not one rotary module: leave the model exactly as loaded
        return None
    if not all(hasattr(rotary, a) for a in ("original_inv_freq", "original_max_seq_len", "max_seq_len_cached")):
        return None

    def reset(module: nn.Module, args: tuple) -> None:
        module.register_buffer("inv_freq", module.original_inv_freq.to(module.inv_freq.device), persistent=False)
        module.max_seq_len_cached = module.original_max_seq_len

    def install() -> Callable[[], None]:
        return rotary.register_forward_pre_hook(reset).remove

    return install


def _rope_installer(lm: LoadedModel, spec: Spec) -> Installer | None:
    if spec.method == "default":
        return _stock_dynamic_reset(lm)
    check_scale_at_init(spec, lm.info.config.get("model_type"))
    shape = lm.info.rope_shape
    freqs = resolve_rope(spec, shape)  # validates the spec against this shape (e.g. longrope factor count)
    parent, attr, current = find_rotary(lm.model)
    if current.inv_freq.numel() != shape.n_pairs:
        raise CtxextError(f"the model's rotary module has {current.inv_freq.numel()} pairs, its config says "
                          f"{shape.n_pairs} (rotary dim {shape.rotary_dim}); cannot apply '{spec.text}'")
    base = effective_shape(spec, shape).theta()
    device = current.inv_freq.device
    plan = None
    if spec.entry.length_dependent:
        if spec.method == "streaming":
            check_no_sliding_window(sorted({w for w in map(sliding_window, attention_modules(lm.model)) if w}))
        if spec.method in POSITION_METHODS:  # the checkpoint's own rope (Llama 3.1's llama3 bands, a yarn config)
            own = checkpoint_freqs(lm.model.config, spec.method)
            plan = make_plan(spec, position_shape(lm.info), None if own is None else lambda t, f: own)
        else:
            plan = make_plan(spec, shape, lambda t, f: stock_freqs(lm.model.config, spec, f, seq_len=t))
        model_type = lm.info.config.get("model_type")
        check_attention_model(spec.method, model_type, len(attention_modules(lm.model)) == lm.info.n_layers)
        freqs = plan.resolved(plan.bucket(plan.L))
    else:  # the float32 rounding stock transformers will use for the exported checkpoint (see stock_rope)
        freqs = stock_freqs(lm.model.config, spec, freqs)
    rotary = ScaledRotary(freqs, base, plan, table_layout(current)).to(device)
    scales = _softmax_scales(lm, spec)

    def install() -> Callable[[], None]:
        original = getattr(parent, attr)
        setattr(parent, attr, rotary)
        undo_attention = patch_attention(lm.model, plan, lm.info.n_layers) if plan is not None else None
        built = [(m, m.scaling) for m, _ in scales]
        for m, scale in scales:
            m.scaling = scale

        def undo() -> None:
            if undo_attention is not None:
                undo_attention()
            setattr(parent, attr, original)
            for m, scale in built:
                m.scaling = scale

        return undo

    return install


def _alibi_installer(lm: LoadedModel, spec: Spec) -> Installer | None:
    if spec.method == "default":
        return None
    slopes = resolve_alibi(spec, lm.info.n_heads)
    alibi_base_model(lm.model)  # refuses non-BLOOM ALiBi models now
    return lambda: patch_alibi(lm.model, slopes)


def restore(lm: LoadedModel) -> None:
    """Undo the current patch: the model as loaded."""
    if lm._undo is not None:
        lm._undo()
        lm._undo = None


def apply_spec(lm: LoadedModel, spec: Spec | str) -> None:
    """Apply `spec` (a Spec, or its text as the CLI takes it: 'yarn:factor=4', a spec file) to `lm` in place,
    replacing any previous spec; `default` restores the model as loaded."""
    if isinstance(spec, str):  # the README's pointer passes the text; it failed with "'str' has no 'entry'"
        from ..scaling import parse_spec

        spec = parse_spec(spec)
    check_fits(spec, lm.info.encoding)
    install = (_rope_installer if lm.info.encoding == "rope" else _alibi_installer)(lm, spec)
    restore(lm)
    if install is not None:
        lm._undo = install()
    lm.spec = spec
