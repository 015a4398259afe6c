"""Scoring primitives shared by every task.

- `token_nll`: per-token negative log-likelihood of a sequence. The decoder body runs once; the LM head and
  log-softmax run over chunks of positions, so full-vocabulary logits never exist for the whole sequence
  (16k tokens × 49k vocab in fp32 would be 3.2 GB).
- `score_probes`: passkey / needle prompts scored teacher-forced. The answer tokens are appended to the
  prompt and one forward gives, at every answer position, the token greedy decoding would pick. When the
  greedy tokens follow the answer and then stop the integer, greedy decoding provably outputs the answer
  (verdict: correct); when they leave it in a way that already fixes the first integer, the verdict is
  wrong; only an undecided case (e.g. greedy starts with a newline instead of the number) continues with
  real greedy decoding from the cache. Verdicts therefore equal `generate(do_sample=False)` exactly.
- Prompts that share a haystack prefix (several needle depths and trials at one length) encode the prefix
  once: one KV cache of the haystack is extended depth by depth. With the mask-free attention
  (`attention.fast_attention`, CPU) the trials of one depth then run as one batch of branches over a read-only
  view of that cache (`attention.BranchCache`: no copy of the prefix, no per-row or per-head repeat, one
  forward per depth); otherwise each probe extends the shared cache and crops it back.
"""

from __future__ import annotations

import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import CtxextError
from .attention import branch, branch_cache, fused_branches

LOGITS_BYTES = 128 * 2**20  # at most this much fp32 logits at once
PREFILL_CHUNK = 2048  # queries per cached forward call (bounds the attention mask: chunk × total)
BATCH_TOKENS = 4096  # queries per forward call of a batch of branches (rows × tokens)
BRANCH_BYTES = 512 * 2**20  # the rows of one branch batch keep at most this much own KV (or one prompt's worth)


# ------------------------------------------------------------------------------------------ model parts


def body_and_head(model: Any) -> tuple[Any, Any]:
    """(decoder body returning final-normed hidden states, LM head) of a *ForCausalLM model."""
    return getattr(model, model.base_model_prefix), model.get_output_embeddings()


def head_rows(vocab_size: int) -> int:
    """Positions per LM-head chunk so that one chunk's logits stay under LOGITS_BYTES."""
    rows = LOGITS_BYTES // (4 * max(vocab_size, 1))
    return int(max(64, min(4096, 2 ** int(np.log2(max(rows, 1))))))


def logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 logits for a few positions (hidden: (n, H)), with what the model's own forward applies after its LM
    head: Granite's division by logits_scaling, Cohere's multiplication by logit_scale, Gemma2's soft-capping."""
    cfg = model.config
    out = model.get_output_embeddings()(hidden)
    if getattr(cfg, "logits_scaling", None):
        out = out / cfg.logits_scaling
    if getattr(cfg, "logit_scale", None):
        out = out * cfg.logit_scale
    out = out.float()
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        out = torch.tanh(out / cap) * cap
    return out


def _ids(x: Any, device: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.int64), device=device)


def device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def hidden_rows(model: Any, ids: Any, cache: Any = None) -> torch.Tensor:
    """Final hidden states (B, T, H) of B equally long sequences (ids (B, T)); appends to `cache` when given
    (a BranchCache runs with its prefix made visible to the attention)."""
    body, _ = body_and_head(model)
    x = _ids(ids, device_of(model))
    fused = hasattr(cache, "take_prefix")
    if fused and not fused_branches(model):
        raise RuntimeError("a branch cache needs the mask-free attention (inside fast_attention, CPU, unpatched "
                           "layers); any other attention would ignore its prefix")
    with branch(cache) if fused else nullcontext():
        out = body(input_ids=x, past_key_values=cache, use_cache=cache is not None)
    return out.last_hidden_state


def hidden_states(model: Any, ids: Any, cache: Any = None) -> torch.Tensor:
    """Final hidden states (T, H) of one sequence; appends to `cache` when given."""
    return hidden_rows(model, np.asarray(ids)[None], cache)[0]


@torch.inference_mode()
def nll_of_hidden(model: Any, hidden: torch.Tensor, targets: Any) -> np.ndarray:
    """-log p(targets[i] | hidden[i]) for every row, computed in LM-head chunks (float64 result)."""
    tgt = _ids(targets, hidden.device)
    rows = head_rows(model.get_output_embeddings().weight.shape[0])
    out = torch.empty(len(tgt), dtype=torch.float32)
    for s in range(0, len(tgt), rows):
        lg = logits(model, hidden[s:s + rows])
        out[s:s + rows] = torch.nn.functional.cross_entropy(lg, tgt[s:s + rows], reduction="none").cpu()
        del lg
    return out.double().numpy()


@torch.inference_mode()
def token_nll(model: Any, ids: Any) -> np.ndarray:
    """NLL of ids[1:] given their prefixes, shape (T-1,); never more than one chunk of logits in memory."""
    ids = np.asarray(ids)
    h = hidden_states(model, ids)
    return nll_of_hidden(model, h[:-1], ids[1:])


def new_cache(model: Any) -> Any:
    """A DynamicCache for `model`. Models with sliding-window layers (Mistral v0.1, Phi-3-mini) get full layers
    instead of transformers' sliding ones, which cannot be cropped once the window is reached (the prefix reuse
    and the greedy fallback crop); the layers' masks still apply the window, so the logits are the same."""
    from transformers import DynamicCache

    return DynamicCache() if has_sliding_window(model) else DynamicCache(config=model.config)


def has_sliding_window(model: Any) -> bool:
    """Does any attention layer slide its window? Read once per model (it runs on every cached forward)."""
    known = model.__dict__.get("_ctxext_sliding")
    if known is None:
        from ..models.attention import attention_modules, sliding_window

        known = any(sliding_window(m) is not None for m in attention_modules(model))
        model.__dict__["_ctxext_sliding"] = known
    return known


def crop(cache: Any, length: int) -> None:
    """Keep the first `length` tokens of a cache."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _cropped(cache: Any, length: int) -> Any:
    crop(cache, length)
    return cache


@torch.inference_mode()
def extend(model: Any, cache: Any, ids: Any, keep: int = 0, chunk: int = PREFILL_CHUNK) -> torch.Tensor | None:
    """Feed `ids` after what `cache` holds, `chunk` tokens per call; -> hidden states of the last `keep` tokens."""
    ids = np.asarray(ids)
    n = len(ids)
    kept = []
    for s in range(0, n, chunk):
        h = hidden_states(model, ids[s:s + chunk], cache)
        if s + len(h) > n - keep:  # this chunk holds some of the last `keep` positions
            kept.append(h[max(0, n - keep - s):])
    return torch.cat(kept) if keep and kept else None


# --------------------------------------------------------------------------------------------- verdicts


def first_integer_verdict(text: str, target: str, final: bool) -> bool | None:
    """Is the first integer in `text` equal to `target`? None while more text could still change the answer."""
    m = re.search(r"\d+", text)
    if m is None:
        return False if final else None
    run = m.group()
    if m.end() < len(text) or final:  # the integer is complete
        return run == target
    return None if target.startswith(run) else False


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for src in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif src is not None:
            ids.update(int(x) for x in src)
    return frozenset(ids)


# ----------------------------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Probe:
    """A prompt `base[:at] + needle + base[at:] + tail` followed by the expected `answer` tokens.
    `target` is the integer greedy decoding must produce first (None: only the answer's NLL is wanted)."""

    at: int
    needle: np.ndarray
    tail: np.ndarray
    answer: np.ndarray
    target: str | None = None

    def prompt(self, base: np.ndarray) -> np.ndarray:
        return np.concatenate([base[:self.at], self.needle, base[self.at:], self.tail]).astype(np.int64)

    def extra(self) -> int:
        """Tokens beyond the haystack itself."""
        return len(self.needle) + len(self.tail) + len(self.answer)


@dataclass(frozen=True)
class ProbeResult:
    nll: np.ndarray  # per answer token
    correct: bool | None  # None when the probe has no target
    generated: int  # greedy steps decoded beyond the single teacher-forced forward (0 = none needed)
    tokens: tuple[int, ...] = ()  # the start of greedy decoding's output that decided the verdict


def check_budget(probes: Sequence[Probe], max_new_tokens: int) -> None:
    """A verdict reads the answer and the token after it (probes without a target only score NLL)."""
    for pr in probes:
        if pr.target is not None and len(pr.answer) + 1 > max_new_tokens:
            raise CtxextError(f"--max-new-tokens {max_new_tokens} is too small: this tokenizer writes the "
                              f"answer in {len(pr.answer)} tokens; use at least {len(pr.answer) + 1}")


class Scorer:
    """Scores probes on one model; `reusable(prefix_len, total_len)` says whether a cached prefix is valid for a
    prompt of total_len tokens (False for methods whose frequencies depend on the whole sequence length)."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 16,
                 reusable: Callable[[int, int], bool] = lambda p, t: True):
        self.model, self.tok = model, tokenizer
        self.max_new_tokens = max_new_tokens
        self.reusable = reusable
        self.eos = eos_ids(model, tokenizer)
        self.decode_seconds = 0.0  # time spent in greedy decoding past the teacher-forced forward

    # -- one probe, given the hidden states of its last k+1 positions and `resume(n)`: a cache holding the first
    # n tokens of prompt + answer (called only when greedy decoding has to go on)
    @torch.inference_mode()
    def _judge(self, pr: Probe, h: torch.Tensor, resume: Callable[[int], Any], prompt_len: int) -> ProbeResult:
        k = len(pr.answer)
        lg = logits(self.model, h)  # (k+1, V): position j predicts answer[j]; row k is after the answer
        if pr.target is not None and not bool(torch.isfinite(lg).all()):  # argmax of NaN is token 0: a "wrong" answer
            raise CtxextError(f"the model's logits are not finite (NaN/inf) after a {prompt_len:,}-token prompt: "
                              "its answers would be noise, not retrieval; in float16 that is an overflow, run with "
                              "--dtype bfloat16 or float32")
        ans = _ids(pr.answer, lg.device)
        nll = torch.nn.functional.cross_entropy(lg[:k], ans, reduction="none").double().cpu().numpy()
        if pr.target is None:
            return ProbeResult(nll, None, 0)
        greedy = lg.argmax(-1).tolist()
        answer = [int(t) for t in pr.answer]
        for i, g in enumerate(greedy):
            if i < k and g == answer[i]:
                continue
            seq = answer[:i] + [g]
            verdict, steps = self._decide(seq, pr.target)
            if verdict is None:  # undecided: continue greedy decoding from the cached prompt + answer[:i] (extends seq)
                verdict, steps = self._greedy(resume(prompt_len + i), seq, pr.target)
            return ProbeResult(nll, verdict, steps, tuple(seq))
        raise AssertionError("unreachable: the loop returns at the latest after the answer")

    def _decide(self, seq: list[int], target: str) -> tuple[bool | None, int]:
        final = seq[-1] in self.eos or len(seq) >= self.max_new_tokens
        text = self.tok.decode(seq, skip_special_tokens=True)
        return first_integer_verdict(text, target, final), 0

    @torch.inference_mode()
    def _greedy(self, cache: Any, seq: list[int], target: str) -> tuple[bool, int]:
        t0, steps = time.perf_counter(), 0
        while True:
            h = hidden_states(self.model, [seq[-1]], cache)
            seq.append(int(logits(self.model, h[-1:]).argmax(-1)))
            steps += 1
            verdict, _ = self._decide(seq, target)
            if verdict is not None:
                self.decode_seconds += time.perf_counter() - t0
                return verdict, steps

    # -- many probes over one haystack
    def scores(self, base: np.ndarray, probes: Sequence[Probe],
               reuse: bool = True) -> Iterator[tuple[int, ProbeResult, int, int]]:
        """Yields (index, result, tokens encoded, tokens they attended to before them) probe by probe.
        Probes run by increasing needle position, so the haystack before each needle extends one shared
        cache (when `reuse` and the prefix is valid for the prompt's length). The (tokens, attended) pair of a
        probe covers the haystack piece it added to the shared cache and its own tokens after the needle, which
        follow that piece: `cost.flops(tokens, attended)` is the work done for it."""
        base = np.asarray(base)
        check_budget(probes, self.max_new_tokens)
        fused = reuse and fused_branches(self.model)
        order = sorted(range(len(probes)), key=lambda j: probes[j].at)
        fulls = {i: np.concatenate([probes[i].prompt(base), probes[i].answer]).astype(np.int64) for i in order}

        def shares(i: int) -> bool:
            return reuse and probes[i].at > 0 and self.reusable(probes[i].at, len(fulls[i]))

        shared, cur, k = None, 0, 0
        while k < len(order):
            i = order[k]
            pr, full = probes[i], fulls[i]
            if not shares(i):  # one plain forward over the whole prompt
                k += 1
                keep = len(pr.answer) + 1
                cache = new_cache(self.model) if pr.target is not None else None  # kept for greedy fallback
                h = hidden_states(self.model, full, cache)[-keep:]
                yield i, self._judge(pr, h, lambda n, c=cache: _cropped(c, n), len(full) - len(pr.answer)), len(full), 0
                del cache
                continue
            if shared is None or cur > pr.at:
                shared, cur = new_cache(self.model), 0
            start = cur
            extend(self.model, shared, base[cur:pr.at])
            cur = pr.at
            if fused:  # the following probes at this needle position with as many tokens: one batch of branches
                group = [i]
                while (k + len(group) < len(order) and len(group) < self._rows(len(full) - pr.at, len(full))
                       and probes[order[k + len(group)]].at == pr.at and len(fulls[order[k + len(group)]]) == len(full)
                       and shares(order[k + len(group)])):
                    group.append(order[k + len(group)])
                k += len(group)
                for n, (j, res) in enumerate(self._branches(shared, pr.at, [(j, probes[j], fulls[j]) for j in group])):
                    yield j, res, len(full) - (start if n == 0 else pr.at), start if n == 0 else pr.at
                continue
            k += 1  # one branch in the shared cache itself, cropped back afterwards
            keep = len(pr.answer) + 1
            h = extend(self.model, shared, full[pr.at:], keep=keep)
            res = self._judge(pr, h, lambda n: _cropped(shared, n), len(full) - len(pr.answer))
            crop(shared, pr.at)
            yield i, res, len(full) - start, start

    def _rows(self, own: int, total: int) -> int:
        """How many branches of `own` tokens each one batch may hold: their own KV stays within one whole
        prompt's or BRANCH_BYTES, whichever is more."""
        cfg = self.model.config.get_text_config(decoder=True) if hasattr(self.model.config, "get_text_config") \
            else self.model.config
        per_token = 2 * cfg.num_hidden_layers * getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) * \
            (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads) * \
            next(self.model.parameters()).element_size()
        return max(1, max(total, BRANCH_BYTES // per_token) // max(own, 1))

    @torch.inference_mode()
    def _branches(self, shared: Any, at: int, items: list[tuple[int, Probe, np.ndarray]]
                  ) -> Iterator[tuple[int, ProbeResult]]:
        """Probes whose prompts share `shared`'s first `at` tokens and have equally many tokens after them, as B
        rows of one forward over a read-only view of that prefix."""
        prefix = [(layer.keys[:, :, :at], layer.values[:, :, :at]) for layer in shared.layers]
        cache = branch_cache(prefix)
        ids = np.stack([full[at:] for _, _, full in items])
        rows, n = ids.shape
        keep = max(len(pr.answer) for _, pr, _ in items) + 1
        chunk = max(1, BATCH_TOKENS // rows)
        kept = []
        for s in range(0, n, chunk):
            h = hidden_rows(self.model, ids[:, s:s + chunk], cache)
            if s + h.shape[1] > n - keep:
                kept.append(h[:, max(0, n - keep - s):])
        h = torch.cat(kept, dim=1)
        for b, (i, pr, full) in enumerate(items):
            prompt_len = len(full) - len(pr.answer)
            res = self._judge(pr, h[b, keep - len(pr.answer) - 1:], lambda m, b=b: cache.row(b, m), prompt_len)
            yield i, res

    def score(self, base: np.ndarray, probes: Sequence[Probe], reuse: bool = True) -> list[ProbeResult]:
        """Results in the order of `probes`."""
        out: list[ProbeResult | None] = [None] * len(probes)
        for i, res, _, _ in self.scores(base, probes, reuse):
            out[i] = res
        return out  # type: ignore[return-value]
