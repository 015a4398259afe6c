"""ALiBi slopes for BLOOM, set per model instance.

transformers 5.x builds BLOOM's bias in ``BloomModel.forward``: with an attention mask through the instance
method ``self.build_alibi_tensor`` (which calls the module-level ``build_alibi_tensor``), without one from the
module-level ``_get_alibi_slopes``. ctxext sets slopes on one model only, with two instance attributes on its
``BloomModel`` and no global monkeypatch:

- ``build_alibi_tensor``: the same bias, ``slopes[h] · (cumsum(mask) − 1) · mask``, with the given slopes;
- ``forward``: when called without an attention mask, passes an all-ones mask over the keys the stock bias
  spans (cache + input; a static cache's whole length), which makes the stock code take the mask path (the
  bias is identical: key index 0 … K−1 times the slope).

Undo deletes both attributes. The slopes are a float32 tensor moved to the mask's device on use.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import CtxextError
from ..scaling.alibi import alibi_slopes

ALIBI_MODEL_TYPES = ("bloom",)  # the model types whose slopes patch_alibi can set

# model type -> whether a config of that type turns ALiBi on (read from the config, not assumed from the name)
ALIBI_IN_CONFIG: dict[str, Callable[[dict[str, Any]], bool]] = {
    "bloom": lambda cfg: True,
    "falcon": lambda cfg: bool(cfg.get("alibi", False)),  # falcon-rw-*: true; falcon-7b/40b: rotary
    "mpt": lambda cfg: bool((cfg.get("attn_config") or {}).get("alibi", True)),  # MptAttentionConfig's default
}


def uses_alibi(cfg: dict[str, Any]) -> bool:
    """Whether a config (as a dict) says its model adds ALiBi biases."""
    check = ALIBI_IN_CONFIG.get(cfg.get("model_type", ""))
    return check is not None and check(cfg)


def alibi_base_model(model: nn.Module) -> nn.Module:
    mods = [m for m in model.modules() if type(m).__name__ == "BloomModel" and hasattr(m, "build_alibi_tensor")]
    if len(mods) != 1:
        model_type = getattr(model.config, "model_type", "?")
        raise CtxextError(f"setting ALiBi slopes is supported for {', '.join(ALIBI_MODEL_TYPES)} models, "
                          f"not '{model_type}'")
    return mods[0]


def key_length(cache: Any, new: int) -> int:
    """Keys the stock no-mask bias spans: cache + input, or a static cache's whole length (transformers 5's
    `get_mask_sizes(query_length, layer_idx)`; a past + new mask was narrower than its causal mask)."""
    if cache is None:
        return new
    sizes = getattr(cache, "get_mask_sizes", None)
    if sizes is not None and "query_length" in inspect.signature(sizes).parameters:
        return int(sizes(new, 0)[0])
    return cache.get_seq_length() + new


def stock_rounded(slopes: np.ndarray, n_heads: int) -> torch.Tensor:
    """`slopes` in float32, taken as their float64 ratio to the paper's slopes times the slopes BLOOM computes
    itself (float32 powers, a few ulps off the exact values for some head counts): a spec whose slopes are the stock
    ones (factor=1) then runs the stock model bit for bit."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    own = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), n_heads, torch.float32)[:, 0, 1].double()
    return (own * torch.from_numpy(np.asarray(slopes, dtype=np.float64) / alibi_slopes(n_heads))).float()


def patch_alibi(model: nn.Module, slopes: np.ndarray) -> Callable[[], None]:
    """Make `model` use `slopes` (one per head) -> an undo function."""
    base = alibi_base_model(model)
    if len(slopes) != base.num_heads:
        raise CtxextError(f"got {len(slopes)} ALiBi slopes for a model with {base.num_heads} heads")
    table = stock_rounded(slopes, base.num_heads)
    stock_forward = base.forward
    sig = inspect.signature(stock_forward)

    def build_alibi_tensor(attention_mask: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
        batch, seq = attention_mask.shape
        s = table.to(attention_mask.device)
        arange = ((attention_mask.cumsum(dim=-1) - 1) * attention_mask)[:, None, :]
        return (s[..., None] * arange).reshape(batch * num_heads, 1, seq).to(dtype)

    def forward(*args: Any, **kwargs: Any):
        bound = sig.bind_partial(*args, **kwargs)
        a = bound.arguments
        if a.get("attention_mask") is None:
            x = a.get("input_ids") if a.get("input_ids") is not None else a.get("inputs_embeds")
            a["attention_mask"] = torch.ones(x.shape[0], key_length(a.get("past_key_values"), x.shape[1]),
                                             dtype=torch.long, device=x.device)
        return stock_forward(*bound.args, **bound.kwargs)

    saved = {k: base.__dict__[k] for k in ("build_alibi_tensor", "forward") if k in base.__dict__}
    base.build_alibi_tensor = build_alibi_tensor
    base.forward = forward

    def undo() -> None:
        for k in ("build_alibi_tensor", "forward"):
            if k in saved:
                setattr(base, k, saved[k])
            else:
                delattr(base, k)

    return undo
