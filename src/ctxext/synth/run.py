"""The synth-qa driver: documents -> seeded chunks -> question, short and long answer -> checks -> JSONL.

Per document: first the front matter is skipped (`skip_front`: 'auto' = up to the last line-start heading of
chapter 1 ('Chapter I', 'CHAPTER 1.', 'Chapter One'; 'ACT I' for a play) in the first quarter of the document — the last one, because
a table of contents lists it first; nothing skipped when there is none; 'none'; or a number of tokens. The
Project Gutenberg header itself is already removed by ctxext.data). Documents with fewer than min_len tokens
left are skipped. The context is the next `max_len - RESERVE` tokens (RESERVE leaves room for the question and
the answer in a max_len-token training example); with `contexts` K > 1, a long document gives up to K consecutive
contexts of that size (a last part shorter than min_len is dropped), each with its own chunks, so one book yields
many examples. Chunks are runs of whole sentences of at most `chunk_tokens`
tokens starting at a sentence start inside the context; `per_doc` of them, pairwise non-overlapping (spans
visited in a random order, each taken unless it overlaps one already taken; fewer when no more fit), drawn with
numpy's generator seeded by (seed, document index), so a run is reproducible. For each chunk the generator writes a question, a short answer and a long answer (greedy), then
the pair must pass, in this order (the first failure is the rejection reason counted in the summary):

  bad question            no '?', fewer than 3 or more than 30 words, a repeated phrase
  empty answer            the short or the long answer is empty
  answer repeats question the short answer's content words are all in the question
  answer not in chunk     a content word of the short answer does not occur in the chunk  (acceptance check)
  long answer not in chunk  same for the long answer                                       (acceptance check)
  model rejected          the model's own calibrated yes/no verdict on (chunk, question, short answer) is not yes
  duplicate question      the same normalised question was already kept for this document

With `tries` > 1 a rejected chunk is tried again with another pair of worked examples in the prompts (a new
question, greedy as before), up to `tries` times; the first pair that passes every check is kept. The checks
are the same for every try; the summary counts each rejected chunk once by its last try's reason ("rejected")
and every failed try by reason ("rejected_tries"; equal to "rejected" when tries is 1).

Files, for --out FILE.jsonl: FILE.jsonl (kept examples, appended one per line), FILE.log.jsonl (one line per
processed chunk, kept or not, with what was generated), FILE.summary.json (settings, counts by reason, timing;
rewritten after every chunk). --resume skips the chunks already in the log; the settings must match.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data import Document
from ..errors import CtxextError
from ..evals.files import atomic_write, resume_jsonl
from ..evals.needles import sentence_starts
from . import check, prompts
from .model import Generator

RESERVE = 128  # tokens of a max_len example left for the question and the answer
MAX_QUESTION, MAX_SHORT, MAX_LONG = 32, 16, 48  # greedy budgets (tokens) of the three generations
REASONS = ("bad question", "empty answer", "answer repeats question", "answer not in chunk",
           "long answer not in chunk", "model rejected", "duplicate question")


@dataclass(frozen=True)
class SynthSettings:
    model: str = "smollm2-135m"
    per_doc: int = 8
    min_len: int = 1024
    max_len: int = 4096
    chunk_tokens: int = 80
    seed: int = 0
    chat: bool = False
    skip_front: str = "auto"
    tries: int = 1
    contexts: int = 1

    def validate(self) -> None:
        if self.skip_front not in ("auto", "none") and not (self.skip_front.isdigit()):
            raise CtxextError(f"--skip-front must be 'auto', 'none' or a number of tokens >= 0, "
                              f"got {self.skip_front!r}")
        if self.tries < 1:
            raise CtxextError(f"--tries must be >= 1, got {self.tries}")
        if not 0 <= self.seed < 2**63:  # numpy refused a negative one with a traceback
            raise CtxextError(f"--seed must be in [0, 2^63), got {self.seed}")
        if self.per_doc < 1:
            raise CtxextError(f"--per-doc must be >= 1, got {self.per_doc}")
        if self.contexts < 1:
            raise CtxextError(f"--contexts must be >= 1, got {self.contexts}")
        if self.max_len < RESERVE + 2 * self.chunk_tokens:
            raise CtxextError(f"--max-len {self.max_len} is too short: it must hold a chunk of {self.chunk_tokens} "
                              f"tokens twice over plus {RESERVE} tokens for the question and answer "
                              f"(>= {RESERVE + 2 * self.chunk_tokens})")
        if self.min_len < 1 or self.chunk_tokens < 8:
            raise CtxextError(f"--min-len must be >= 1 and --chunk-tokens >= 8 (got {self.min_len}, "
                              f"{self.chunk_tokens})")


def _canon(name: str, where: dict[str, str] | None = None) -> str:
    """A document name ('path' or 'path:line') with its path resolved: the same file however it was spelled. `where`
    maps --data paths as a run typed them to where they resolved then (a name under one is resolved through it:
    a relative path from another folder names another file)."""
    path, colon, line = name.rpartition(":")
    if not (colon and line.isdigit()):
        path, line = name, ""
    for typed, resolved in (where or {}).items():
        if path == typed or path.startswith(typed.rstrip("/") + "/"):
            path = resolved + path[len(typed):]
            break
    return str(Path(path).resolve()) + (f":{line}" if line else "")


def side_files(out: Path) -> tuple[Path, Path]:
    """(log, summary) next to the output FILE.jsonl."""
    stem = out.with_suffix("") if out.suffix == ".jsonl" else out
    return stem.with_name(stem.name + ".log.jsonl"), stem.with_name(stem.name + ".summary.json")


CHAPTER_ONE = re.compile(r"(?im)^[ \t]*(?:chapter|act)[ \t]+(?:1|i|one)\b")  # a novel's first chapter, a play's act


def front_tokens(tokenizer: Any, ids: np.ndarray, skip: str) -> int:
    """Tokens of front matter to skip: a number as given, 0 for 'none', and for 'auto' the token where the last
    line-start 'Chapter 1/I/One' (or 'Act 1/I') heading in the first quarter of the document begins (0 when there is none)."""
    if skip == "none":
        return 0
    if skip != "auto":
        return min(int(skip), len(ids))
    head = ids[: len(ids) // 4]
    found = list(CHAPTER_ONE.finditer(tokenizer.decode(head.tolist())))
    if not found:
        return 0
    c = found[-1].start()
    m = re.match(r"\s*", found[-1].group(0))
    c += m.end() if m else 0  # the heading's first letter, not the newline before it
    lo, hi = 0, len(head)  # smallest k whose decoded prefix reaches past character c
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(head[:mid].tolist())) > c:
            hi = mid
        else:
            lo = mid + 1
    return max(lo - 1, 0)


def pick_chunks(tokenizer: Any, ids: np.ndarray, n: int, chunk_tokens: int,
                rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to n pairwise non-overlapping (start, end) token spans of whole sentences, at most chunk_tokens long,
    each starting at a sentence start: candidate spans in a seeded random order, each taken unless it overlaps
    one already taken (overlapping chunks gave near-duplicate questions)."""
    starts = sentence_starts(tokenizer, ids)
    spans = []
    for i, s in enumerate(starts[:-1]):
        j = i + 1
        while j + 1 < len(starts) and starts[j + 1] - s <= chunk_tokens:
            j += 1
        e = int(starts[j])
        if 8 <= e - s <= chunk_tokens:
            spans.append((int(s), e))
    used = np.zeros(len(ids) + 1, dtype=bool)
    taken: list[tuple[int, int]] = []
    for k in rng.permutation(len(spans)) if spans else []:
        s, e = spans[k]
        if not used[s:e].any():
            used[s:e] = True
            taken.append((s, e))
            if len(taken) == n:
                break
    return sorted(taken)


def _doc(context_name: str) -> str:
    """The document a context belongs to ('book.txt#2' -> 'book.txt'): duplicate questions are per document."""
    return context_name.split("#")[0]


def _clean(text: str) -> str:
    return " ".join(text.split())


def judge(gen: Generator, chunk: str, kept_questions: list[str], tries: int = 1) -> dict[str, Any]:
    """Up to `tries` attempts (prompt variants 0, 1, ...) on one chunk; -> the last attempt's log row ('reason'
    None when kept) with 'try' (its index) and 'failed_tries' (the reasons of every failed attempt)."""
    failed: list[str] = []
    for t in range(tries):
        row = judge_once(gen, chunk, kept_questions, t)
        if row["reason"] is None:
            break
        failed.append(row["reason"])
    return {**row, "try": t, "failed_tries": failed}


def judge_once(gen: Generator, chunk: str, kept_questions: list[str], variant: int = 0) -> dict[str, Any]:
    """Generate and check one chunk's pair; -> the log row (with 'reason' None when kept)."""
    q = _clean(gen.complete(prompts.question_prompt(chunk, variant), MAX_QUESTION))
    row: dict[str, Any] = {"question": q, "short": None, "long": None, "verify": None, "reason": None}
    if check.question_problem(q):
        row.update(reason="bad question", detail=check.question_problem(q))
        return row
    row["short"] = short = _clean(gen.complete(prompts.short_prompt(chunk, q, variant), MAX_SHORT))
    row["long"] = long = _clean(gen.complete(prompts.long_prompt(chunk, q, short, variant), MAX_LONG)) if short else ""
    if not check.content_words(short) or not check.content_words(long):
        row["reason"] = "empty answer"
    elif check.answer_in_question(short, q):
        row["reason"] = "answer repeats question"
    elif not check.supported(short, chunk):
        row.update(reason="answer not in chunk", detail=check.missing_words(short, chunk))
    elif not check.supported(long, chunk):
        row.update(reason="long answer not in chunk", detail=check.missing_words(long, chunk))
    if row["reason"]:
        return row
    row["verify"] = v = round(gen.verify(chunk, q, short), 4)
    if not v > 0:
        row["reason"] = "model rejected"
    elif any(check.same_question(q, k) for k in kept_questions):
        row["reason"] = "duplicate question"
    return row


def synthesize(data: list[str], out: str | Path, settings: SynthSettings, resume: bool = False,
               progress: bool = True, lm: Any = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write verified long-context QA examples to `out` (JSONL); -> the summary dict (also FILE.summary.json)."""
    from tqdm.auto import tqdm

    from ..data import data_files, load_documents
    from ..progress import progress_bar

    settings.validate()
    out = Path(out)
    if out.suffix != ".jsonl":
        raise CtxextError(f"--out must be a .jsonl file, got {out}")
    files = data_files(data)  # missing paths fail before any weights
    if lm is None:
        from ..models.load import require_tokenizer

        require_tokenizer(settings.model, "write examples with", "its prompts and answers need")
    inside = [f for f in files if f.resolve() in {out.resolve(), *(p.resolve() for p in side_files(out))}]
    if inside or any(Path(p).is_dir() and Path(p).resolve() in out.resolve().parents for p in data):
        raise CtxextError(f"--out {out} lies in a --data folder: its examples and log would be read as documents "
                          "on --resume (or by the next run on that folder); write it elsewhere")
    log_path, summary_path = side_files(out)
    done: dict[str, dict] = {}
    where: dict[str, str] = {}  # on resume: each --data path as the run typed it -> resolved where it ran
    if out.exists() or log_path.exists():
        if not resume:
            raise CtxextError(f"{out} already exists; pass --resume to continue that run, or choose another --out")
        try:
            summary = json.loads(summary_path.read_text())
            old = summary["settings"]
        except (OSError, ValueError, KeyError):
            raise CtxextError(f"cannot resume: {summary_path} is missing or unreadable") from None
        diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in asdict(settings).items() if old.get(k) != v]
        # resolved where the run started (a relative --data resolved from another folder named files not there)
        typed = [str(p) for p in summary.get("data") or []]
        where = dict(zip(typed, summary.get("data_resolved") or [str(Path(p).resolve()) for p in typed]))
        then = sorted(where.values())
        now = sorted(str(Path(p).resolve()) for p in data)
        if then and then != now:  # chunk seeds follow the document index: other data is another plan
            diff.append(f"data {then} -> {now}")
        if diff:
            raise CtxextError(f"cannot resume {out}: it was run with other settings ({'; '.join(diff)}); "
                              "use another --out")
        for r in resume_jsonl(log_path):  # a line a kill cut short is dropped: that chunk runs again
            done[r["chunk_id"]] = r
        kept = {ex["id"]: ex for ex in resume_jsonl(out)}
        for cid in kept.keys() - set(done):  # written to the output but not to the log (interrupted in between):
            # its question still counts against duplicates in its document (its failed tries are not known)
            done[cid] = {"chunk_id": cid, "reason": None, "question": kept[cid].get("question"),
                         "document": kept[cid].get("document", "")}
    out.parent.mkdir(parents=True, exist_ok=True)

    if lm is None:
        from ..models import load_model

        lm = load_model(settings.model)
    tok = lm.tokenizer
    if tok is None:
        raise CtxextError(f"{settings.model} has no tokenizer files; synth-qa needs one")
    gen = Generator(lm.model, tok, chat=settings.chat)
    docs = load_documents(data, tok)
    # a resume that spells a path otherwise (relative, absolute) names each document as the run did: chunk ids
    # and the per-document question lists follow the names
    spelled = {_canon(n, where): n for n in (str(r.get("document", "")).partition("#")[0] for r in done.values())
               if n}
    docs = [Document(spelled.get(_canon(d.name), d.name), d.tokens) for d in docs]
    budget = settings.max_len - RESERVE
    plan, skipped, fronts = [], [], {}
    for di, d in enumerate(docs):
        front = front_tokens(tok, np.asarray(d.tokens), settings.skip_front)
        if len(d) - front < settings.min_len:
            skipped.append(d.name)
            continue
        fronts[d.name] = front
        for k in range(settings.contexts):
            start = front + k * budget
            ids = np.asarray(d.tokens[start:start + budget], dtype=np.int64)
            if k and len(ids) < min(settings.min_len, budget):  # a short last part (with --min-len above the
                break  # context size, every later context was 'short': --contexts K gave one)
            # context 0 keeps the one-context names and seeds (runs made before --contexts resume unchanged)
            name = d.name if k == 0 else f"{d.name}#{k}"
            rng = np.random.default_rng([settings.seed, di] if k == 0 else [settings.seed, di, k])
            for s, e in pick_chunks(tok, ids, settings.per_doc, settings.chunk_tokens, rng):
                plan.append((name, start, ids, s, e))
    if not plan:
        raise CtxextError(f"no document has >= --min-len {settings.min_len} tokens after the skipped front "
                          f"(--skip-front {settings.skip_front}) and whole-sentence chunks "
                          f"(longest: {max(len(d) for d in docs)} tokens)")

    t0 = time.perf_counter()
    counts = {r: 0 for r in REASONS}
    tries_counts = {r: 0 for r in REASONS}
    kept = 0
    for r in done.values():
        for x in r.get("failed_tries", []):
            tries_counts[x] += 1
        if r.get("reason") is None:
            kept += 1
        else:
            counts[r["reason"]] = counts.get(r["reason"], 0) + 1
    contexts: dict[str, str] = {}
    kept_questions: dict[str, list[str]] = {}
    for r in done.values():
        if r.get("reason") is None and r.get("question"):
            kept_questions.setdefault(_doc(r.get("document", "")), []).append(r["question"])

    def summary(final: bool) -> dict[str, Any]:
        s = {"settings": asdict(settings), "data": [str(p) for p in data],
             "data_resolved": [str(Path(p).resolve()) for p in data], "out": str(out), "chunks": len(plan),
             "processed": len(done), "kept": kept, "rejected": {k: v for k, v in counts.items() if v},
             "rejected_total": sum(counts.values()),
             "rejected_tries": {k: v for k, v in tries_counts.items() if v},
             "tries_total": kept + sum(tries_counts.values()), "documents": len(docs),
             "contexts": len({p[0] for p in plan}), "documents_too_short": skipped,
             "front_tokens_skipped": fronts,
             "seconds_this_run": round(time.perf_counter() - t0, 1), "finished": final}
        atomic_write(summary_path, json.dumps(s, indent=1) + "\n")
        return s

    summary(False)
    out.touch()  # with nothing kept it must still exist: "wrote 0 examples to OUT", and a rerun's refusal names it
    todo = [p for p in plan if f"{p[0]}@{p[3]}" not in done]
    bar = progress_bar(total=len(plan), initial=len(plan) - len(todo), disable=not progress, unit="chunk")
    try:
        for name, start, ids, s, e in todo:
            cid = f"{name}@{s}"
            chunk = _clean(tok.decode(ids[s:e].tolist()))
            row = judge(gen, chunk, kept_questions.get(_doc(name), []), settings.tries)
            for x in row["failed_tries"]:
                tries_counts[x] += 1
            row = {"chunk_id": cid, "document": name, "chunk_start": s, "chunk_end": e, **row}
            if row["reason"] is None:
                if name not in contexts:
                    contexts[name] = tok.decode(ids.tolist())
                ex = {"id": cid, "context": contexts[name], "question": row["question"],
                      "answers": [row["short"]], "long_answer": row["long"], "chunk": chunk,
                      "chunk_tokens": [s, e], "context_start": start, "document": name, "verify_logodds": row["verify"],
                      "generator": settings.model}
                with out.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(ex, ensure_ascii=False) + "\n")
                kept += 1
                kept_questions.setdefault(_doc(name), []).append(row["question"])
            else:
                counts[row["reason"]] += 1
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({**row, "chunk": chunk}, ensure_ascii=False) + "\n")
            done[cid] = row
            bar.update(1)
            bar.set_postfix_str(f"kept {kept}, rejected {sum(counts.values())}")
            summary(False)
    finally:
        bar.close()
    res = summary(True)
    log(f"synth-qa: kept {kept} of {len(done)} chunks; rejected: "
        + (", ".join(f"{k} {v}" for k, v in res["rejected"].items()) or "none")
        + (f"; {len(skipped)} document(s) shorter than --min-len skipped" if skipped else ""))
    return res
