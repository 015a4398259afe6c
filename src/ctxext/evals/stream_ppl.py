"""Streaming perplexity: read one long text once, in chunks, through the cached model; perplexity per segment.

The --data documents are joined into one token stream (blank line between documents; the tokenizer's start
tokens, BOS where it has one, before the first) and its first `length` tokens are fed STREAM_CHUNK tokens per call through one DynamicCache, the way a server streams: each token is
scored once, predicted from everything the cache still holds (the decoder body runs per chunk; the LM head per
chunk of rows, so full-vocabulary logits never exist for the stream). With `streaming:sinks=S,window=W` the cache
holds at most S + W + chunk keys after each call (S + W + 2 chunks while one is appended) whatever the length:
constant memory (StreamingLLM). Every other spec keeps every key (memory and time grow with the stream, and RoPE
positions pass the trained length), so those streams stop after FULL_CAP_FACTOR × the trained length — said in
the log and in the `tokens` record.

Records per (spec, length): metric `ppl` per segment [b, b + bucket) of stream positions and overall;
`ppl_in_window` over the tokens whose whole history fits the window (positions < `in_window_tokens` = S + W for
streaming, the trained length otherwise: the figure streaming should stay close to); `tokens` streamed (the
first is not predicted: one fewer is scored); `max_cache_tokens` (most keys one layer's cache held, counted while
a chunk is appended). The per-position NLL is saved in DIR/curves/.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np

from ..data import lead, special_prefix
from .files import curve_path, save_array
from .needles import check_total, haystack_stream
from .scoring import hidden_states, new_cache, nll_of_hidden
from .tasks import Cell, Settings, Task, TaskContext, register

STREAM_CHUNK = 512  # tokens per cached call
FULL_CAP_FACTOR = 4  # specs without eviction stop after this many trained lengths
COST_CACHE_TOKENS = 32768  # cache size the memory estimate assumes (the cap for an 8k model; streaming holds less)


def stream_nll(model: Any, tokens: Any, chunk: int = STREAM_CHUNK,
               on_chunk: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, int]:
    """NLL of tokens[1:] fed `chunk` tokens per call through one KV cache -> (nll (n−1,), most keys cached).
    `on_chunk(new, cached_before)` after each call (progress)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)
    out = np.empty(max(n - 1, 0))
    cache, most = new_cache(model), 0
    for s in range(0, n - 1, chunk):
        e = min(n - 1, s + chunk)  # inputs [s, e) predict targets [s+1, e+1)
        before = cache.get_seq_length()
        h = hidden_states(model, tokens[s:e], cache)
        out[s:e] = nll_of_hidden(model, h, tokens[s + 1:e + 1])
        most = max(most, before + (e - s), cache.get_seq_length())
        if on_chunk is not None:
            on_chunk(e - s, before)
    return out, most


def in_window(ctx: TaskContext) -> int:
    """Stream positions < this have their whole history inside the window."""
    p = ctx.spec.params
    if ctx.spec.method == "streaming":
        return int(p.sinks + p.window)
    return int(ctx.lm.info.trained_len)


def _ppl(nll: np.ndarray) -> float:
    return math.exp(float(np.mean(nll))) if len(nll) else float("nan")


def run(ctx: TaskContext, cells: list[Cell]) -> Iterator[tuple[Cell, list[dict[str, Any]]]]:
    streaming = ctx.spec.method == "streaming"
    cap = FULL_CAP_FACTOR * int(ctx.lm.info.trained_len)
    for length in sorted({L for L, _ in cells}):
        n = length if streaming else min(length, cap)
        if n < length:
            ctx.log(f"stream-ppl @ {length:,}: '{ctx.spec.text}' keeps every key (no eviction), so its stream stops "
                    f"at {n:,} tokens ({FULL_CAP_FACTOR}× the trained length {ctx.lm.info.trained_len:,})")
        tokens = lead(special_prefix(ctx.tokenizer), haystack_stream(ctx, "stream-ppl", length), n)
        nll, most = stream_nll(ctx.model, tokens,
                               on_chunk=lambda new, past: ctx.tick(ctx.cost.flops(new, past, scored=new)))
        save_array(curve_path(ctx.out, "stream-ppl", ctx.spec.text, length), np.concatenate([[np.nan], nll]))
        # nll[p − 1] scores stream position p
        recs = []
        for b in range(0, n, ctx.bucket):
            seg = nll[max(b, 1) - 1:min(b + ctx.bucket, n) - 1]
            if len(seg):
                recs.append(ctx.record("stream-ppl", length, None, "ppl", _ppl(seg), 1, (b, min(b + ctx.bucket, n))))
        recs.append(ctx.record("stream-ppl", length, None, "ppl", _ppl(nll), 1))
        w = min(in_window(ctx), n)
        recs.append(ctx.record("stream-ppl", length, None, "ppl_in_window", _ppl(nll[:w - 1]), 1))
        recs.append(ctx.record("stream-ppl", length, None, "in_window_tokens", float(w), 1))
        recs.append(ctx.record("stream-ppl", length, None, "tokens", float(n), 1))
        recs.append(ctx.record("stream-ppl", length, None, "max_cache_tokens", float(most), 1))
        yield (length, None), recs


def streaming_flops(mc: Any, length: int, sinks: int, window: int, chunk: int = STREAM_CHUNK) -> float:
    """FLOPs of a `streaming:sinks,window` stream of `length` tokens, call by call as stream_nll ticks them: after
    each call the cache keeps at most sinks + window − 1 + that call's tokens (StreamingPlan.evict)."""
    held, past, total = sinks + window + chunk - 1, 0, 0.0
    for a in range(0, length - 1, chunk):
        new = min(chunk, length - 1 - a)
        total += mc.flops(new, past=past, scored=new)
        past = min(past + new, held)
    return total


def cost(mc: Any, length: int, depths: list[float], s: Settings, spec: Any = None) -> tuple[float, float]:
    """FLOPs and peak bytes of one stream. `streaming:sinks=S,window=W` attends to at most S + W + one chunk
    cached keys per call (time linear in the length, constant memory); any other spec (or none given: the dearest
    case) keeps every key, and its stream stops at FULL_CAP_FACTOR × the trained length."""
    if spec is not None and spec.method == "streaming":
        S, W = int(spec.params.sinks), int(spec.params.window)
        return streaming_flops(mc, length, S, W), mc.peak_cached(S + W - 1 + 2 * STREAM_CHUNK, plain=False)
    n = min(length, FULL_CAP_FACTOR * mc.trained_len) if mc.trained_len else length
    held = min(n, COST_CACHE_TOKENS)
    return mc.flops(n, scored=n), mc.peak_cached(held, plain=False)


TASK = register(Task(
    name="stream-ppl", summary="perplexity per segment of one long text streamed through the KV cache",
    run=run, cost=cost, spec_cost=True, metric="ppl", needs_data=True, default_samples=1,
    check=check_total("stream-ppl"),
    options=("bucket",),
))
