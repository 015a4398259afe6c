"""The eval runner's progress bar, in estimated seconds, that also moves during one long forward.

Tasks report work when a cell (or a window, a probe) is done; a 64k-token perplexity window on a CPU is one forward
of half an hour, so the bar would sit still through it. Hooks on the attention layers report each layer as it
starts: that work is shown provisionally and replaced by the task's own figure when it reports.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from .cost import ModelCost


def bar_step(done: float, total: float, seconds: float) -> float:
    """How far to move a progress bar counting estimated seconds: cells that cost more than their estimate
    must not push it past its total (tqdm then shows a negative time left)."""
    return min(seconds, max(0.0, total - done))


class WorkBar:
    """`done(flops)`: a task's finished work, committed. `layer(rows, tokens, attended)`: one attention layer of a
    forward in progress, shown on top of the committed work until the next commit replaces it."""

    def __init__(self, bar: Any, rate: float, cost: ModelCost | None = None, n_layers: int = 1):
        self.bar, self.rate = bar, rate
        self.cost, self.n_layers = cost, max(1, n_layers)
        self.committed = 0.0
        self.pending = 0.0

    def _show(self) -> None:
        target = self.committed + bar_step(self.committed, self.bar.total, self.pending)
        self.bar.update(target - self.bar.n)  # tqdm throttles redraws itself

    def done(self, flops: float) -> None:
        self.committed += bar_step(self.committed, self.bar.total, flops / self.rate)
        self.pending = 0.0
        self._show()

    def layer(self, rows: int, tokens: int, attended: int) -> None:
        if self.cost is not None:
            self.pending += rows * self.cost.flops(tokens, attended) / self.n_layers / self.rate
            self._show()


@contextlib.contextmanager
def layer_hooks(model: Any, on_layer: Callable[[int, int, int], None]) -> Iterator[int]:
    """Call `on_layer(rows, tokens, attended)` as each attention layer of `model` starts (rows of `tokens` queries
    after `attended` cached keys); -> the number of layers hooked (0 for architectures whose attention modules
    ctxext does not know: no provisional progress there)."""
    from ..models.attention import attention_modules

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        h = kwargs.get("hidden_states", args[0] if args else None)
        if h is None or h.dim() < 2:
            return
        cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
        try:
            past = int(cache.get_seq_length(module.layer_idx)) if cache is not None else 0
        except (AttributeError, TypeError, IndexError):  # a cache without per-layer lengths: count no past
            past = 0
        rows, tokens = (int(h.shape[0]), int(h.shape[1])) if h.dim() > 2 else (1, int(h.shape[0]))
        on_layer(rows, tokens, past)

    mods = attention_modules(model)
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in mods]
    try:
        yield len(mods)
    finally:
        for handle in handles:
            handle.remove()
