"""Long-document question answering: read a JSONL file of (context, question, answers), put as much of the
context as fits the length before the question, decode the answer greedily, score it against the gold answers
with exact match, token F1 and ROUGE-L (`qa_metrics`, max over the golds).

Prompt (token budget = the cell's length L, the last `max_new_tokens` positions kept for the answer):

    [BOS] <context, cut from its start to fit> "\\n\\nQuestion: <question>\\nAnswer:"

Cutting from the start keeps the text closest to the question. Decoding is greedy and stops at the first
end-of-sequence token, at a newline after the answer's first non-blank text, or after --max-new-tokens tokens.

Accepted JSONL layouts (one JSON object per line; `.jsonl` only):
- context: the first present of `context`, `document`, `story`, `article`, `passage` — a string, or an object
  whose `text` is one (NarrativeQA's `document.text`).
- question: `question`, `query`, or `input` when a context key is present (LongBench); a string or an object
  with `text`. With no context key, `input` holds "question\\n\\ncontext" (SCROLLS: Qasper, NarrativeQA) and is
  split at its first blank line.
- answers: `answers`, `answer`, `outputs`, `output`, `targets` or `target` — a string, a list of strings, a list
  of objects with `text` (NarrativeQA), or an object whose `text` is a string or a list (SQuAD).
- QuALITY: `article` + `questions`: [{`question`, `options`, `gold_label` (1-based)}] -> one example per
  question, the gold answer being the text of the correct option; a flat line with `options` + `gold_label`
  works too.
- id: `id`, `_id`, `qid` or `question_id`, else FILE:LINE (#k for the k-th QuALITY question).

Records per length: metrics `em`, `f1`, `rougeL` (means over the examples, 0–1), n = examples. The generated
answers and their scores are written to OUT/answers/longqa-<spec>-<length>.jsonl. Examples per length: all of
them up to --samples (default 50; with more in the file, a seeded sample, the same for every length).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..data import jsonl_lines, special_prefix
from ..errors import CtxextError
from . import qa_metrics
from .files import atomic_write, slug
from .needles import encode
from .scoring import PREFILL_CHUNK, eos_ids, extend, hidden_states, logits, new_cache
from .tasks import Cell, Settings, Task, TaskContext, register

QUESTION = "\n\nQuestion: {question}\nAnswer:"
CONTEXT_KEYS = ("context", "document", "story", "article", "passage")
QUESTION_KEYS = ("question", "query", "input")
ANSWER_KEYS = ("answers", "answer", "outputs", "output", "targets", "target")
ID_KEYS = ("id", "_id", "qid", "question_id")
DEFAULT_SAMPLES = 50


@dataclass(frozen=True)
class QAExample:
    id: str
    context: str
    question: str
    answers: tuple[str, ...]


# ------------------------------------------------------------------------------------------------ reading


def _text(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("text"), str):
        return v["text"]
    return None


def _answers(v: Any) -> list[str] | None:
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict) and "text" in v:
        return _answers(v["text"])
    if isinstance(v, list):
        out = [_text(x) for x in v]
        return out if out and all(isinstance(x, str) for x in out) else None
    return None


def _first(obj: dict, keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for k in keys:
        if k in obj and obj[k] is not None:
            return k, obj[k]
    return None, None


def _quality(where: str, obj: dict, context: str, ident: str) -> list[QAExample]:
    qs = obj.get("questions")
    items = qs if isinstance(qs, list) else [obj]
    out = []
    for k, q in enumerate(items):
        question, options, label = _text(q.get("question")) if isinstance(q, dict) else None, \
            q.get("options") if isinstance(q, dict) else None, q.get("gold_label") if isinstance(q, dict) else None
        if question is None or not isinstance(options, list) or not isinstance(label, int) \
                or not 1 <= label <= len(options) or not isinstance(options[label - 1], str):
            raise CtxextError(f"{where}: QuALITY question {k} needs 'question', 'options' and a 1-based "
                              f"'gold_label' within the options")
        out.append(QAExample(f"{ident}#{k}" if qs is not None else ident, context, question, (options[label - 1],)))
    return out


def parse_line(obj: Any, where: str) -> list[QAExample]:
    """The examples of one JSONL line (QuALITY lines hold several); CtxextError naming what is missing."""
    if not isinstance(obj, dict):
        raise CtxextError(f"{where}: expected a JSON object with context, question and answers")
    _, ident = _first(obj, ID_KEYS)
    ident = str(ident) if ident is not None else where
    ckey, cval = _first(obj, CONTEXT_KEYS)
    context = _text(cval) if ckey else None
    if ckey and context is None:
        raise CtxextError(f"{where}: '{ckey}' must be a string or an object with a string 'text'")
    if context is not None and ("questions" in obj or "options" in obj):
        return _quality(where, obj, context, ident)
    qkey, qval = _first(obj, QUESTION_KEYS)
    if context is None:
        if qkey == "input" and isinstance(qval, str) and "\n\n" in qval.strip():
            qval, context = qval.strip().split("\n\n", 1)
        else:
            raise CtxextError(f"{where}: no context; accepted keys: {', '.join(CONTEXT_KEYS)} "
                              "(or SCROLLS 'input' = question, blank line, context)")
    question = _text(qval) if qkey else None
    if question is None or not question.strip():
        raise CtxextError(f"{where}: no question; accepted keys: {', '.join(QUESTION_KEYS)}")
    akey, aval = _first(obj, ANSWER_KEYS)
    answers = _answers(aval) if akey else None
    if not answers:
        raise CtxextError(f"{where}: no gold answer; accepted keys: {', '.join(ANSWER_KEYS)} (a string, a list of "
                          "strings, or objects with 'text')")
    return [QAExample(ident, context, question.strip(), tuple(answers))]


def read_examples(paths: list[str | Path]) -> list[QAExample]:
    """Every example in the .jsonl files given (in file order); one-line errors for anything unreadable."""
    out: list[QAExample] = []
    for p in paths:
        p = Path(p)
        if p.is_dir() or p.suffix.lower() != ".jsonl":
            raise CtxextError(f"longqa reads .jsonl files of context/question/answers; got {p}")
        try:
            lines = jsonl_lines(p)
        except OSError as e:
            raise CtxextError(f"cannot read {p}: {e.strerror}") from None
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CtxextError(f"{p}:{i} is not valid JSON ({e.msg})") from None
            out += parse_line(obj, f"{p}:{i}")
    if not out:
        raise CtxextError(f"longqa: no examples in {', '.join(str(p) for p in paths)}")
    return out


def pick(examples: list[QAExample], n: int, seed: int) -> list[QAExample]:
    """All examples when there are at most n, else n of them drawn with the seed (kept in file order)."""
    if len(examples) <= n:
        return list(examples)
    idx = np.sort(np.random.default_rng([seed, 8]).choice(len(examples), size=n, replace=False))
    return [examples[i] for i in idx]


# ------------------------------------------------------------------------------------------------ prompts


def build_prompt(tokenizer: Any, context: str | np.ndarray, question: str, length: int,
                 reserve: int = 0) -> np.ndarray:
    """[BOS] + the last tokens of the context that fit + the question, `length` − `reserve` tokens at most
    (`reserve`: room kept for the answer). `context` may be given as token ids already."""
    head = special_prefix(tokenizer)
    tail = encode(tokenizer, QUESTION.format(question=question.strip()))
    room = length - reserve - len(head) - len(tail)
    if room < 1:
        raise CtxextError(f"longqa: length {length} leaves no room for context after the question "
                          f"({len(head) + len(tail)} tokens)" + (f" and the answer (--max-new-tokens {reserve})"
                                                                 if reserve else "") + "; use a longer length")
    ids = encode(tokenizer, context) if isinstance(context, str) else np.asarray(context, dtype=np.int64)
    return np.concatenate([head, ids[max(0, len(ids) - room):], tail]).astype(np.int64)


@torch.inference_mode()
def greedy_answer(model: Any, tokenizer: Any, prompt: np.ndarray, max_new_tokens: int,
                  eos: frozenset[int] | None = None, whole: bool = False) -> tuple[str, int]:
    """(answer text, tokens decoded): greedy, stopping at EOS, at a newline once the answer has text, or after
    max_new_tokens. The prompt is encoded in chunks into a KV cache (`whole`: in one forward, for a method whose
    frequencies differ between the first chunk's length and the prompt's, e.g. longrope); logits only for the
    last position."""
    eos = eos_ids(model, tokenizer) if eos is None else eos
    cache = new_cache(model)
    h = extend(model, cache, prompt, keep=1, chunk=max(len(prompt), 1) if whole else PREFILL_CHUNK)
    out: list[int] = []
    text = ""
    while len(out) < max_new_tokens:
        t = int(logits(model, h[-1:]).argmax(-1))
        if t in eos:
            break
        out.append(t)
        text = tokenizer.decode(out, skip_special_tokens=True)
        body = text.lstrip()
        if "\n" in body:
            text = body.split("\n", 1)[0]
            break
        if len(out) < max_new_tokens:
            h = hidden_states(model, [t], cache)
    return text.strip(), len(out)


# ------------------------------------------------------------------------------------------------ the task


def answers_path(out: Path, spec_text: str, length: int) -> Path:
    return Path(out) / "answers" / f"longqa-{slug(spec_text)}-{length}.jsonl"


def run(ctx: TaskContext, cells: list[Cell]) -> Iterator[tuple[Cell, list[dict[str, Any]]]]:
    examples = pick(ctx.data["longqa"], ctx.settings.samples_for(TASK), ctx.settings.seed)
    tok, s = ctx.tokenizer, ctx.settings
    eos = eos_ids(ctx.model, tok)
    context_ids = {}  # tokenized once, shared by the lengths
    for length, depth in sorted(cells):
        rows, sums = [], dict.fromkeys(qa_metrics.METRICS, 0.0)
        for ex in examples:
            if ex.context not in context_ids:
                context_ids[ex.context] = encode(tok, ex.context)
            prompt = build_prompt(tok, context_ids[ex.context], ex.question, length, s.max_new_tokens)
            pred, steps = greedy_answer(ctx.model, tok, prompt, s.max_new_tokens, eos,
                                        whole=not ctx.same_freqs(PREFILL_CHUNK, len(prompt)))
            sc = qa_metrics.score(pred, ex.answers)
            for k in sums:
                sums[k] += sc[k]
            rows.append({"id": ex.id, "question": ex.question, "answers": list(ex.answers), "prediction": pred,
                         "prompt_tokens": int(len(prompt)), **sc})
            ctx.tick(ctx.cost.flops(len(prompt), scored=1)
                     + sum(ctx.cost.flops(1, len(prompt) + i, scored=1) for i in range(steps)))
        atomic_write(answers_path(ctx.out, ctx.spec.text, length),
                     "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        n = len(examples)
        yield (length, depth), [ctx.record("longqa", length, depth, m, sums[m] / n, n) for m in qa_metrics.METRICS]


def check_prompt(tok: Any, s: Settings, length: int, cells: list[Cell], examples: Any) -> None:
    """Every question the run asks must leave context room at `length` (a context of one token stands in)."""
    for ex in pick(examples, s.samples_for(TASK), s.seed):
        build_prompt(tok, np.zeros(1, dtype=np.int64), ex.question, length, s.max_new_tokens)


def cost(mc: Any, length: int, depths: list[float], s: Settings) -> tuple[float, float]:
    n = s.samples_for(TASK)
    per = mc.flops(length - s.max_new_tokens, scored=1) + sum(
        mc.flops(1, length - s.max_new_tokens + i, scored=1) for i in range(s.max_new_tokens))
    return n * per, mc.peak_cached(length, plain=False)


TASK = register(Task(
    name="longqa", summary="long-document QA from a JSONL file, greedy answers scored by EM, token F1 and ROUGE-L",
    run=run, cost=cost, metric="f1", needs_data=True, default_samples=DEFAULT_SAMPLES, higher_is_better=True,
    read_data=read_examples, check_prompt=check_prompt,
    options=("samples", "max_new_tokens"),
))
