"""`ctxext synth-qa`: the acceptance checks (pure), chunk choice, the driver with a scripted generator on the
tiny-rope tokenizer (files, reasons, resume after an interruption == one uninterrupted run, errors), and on
SmolLM2-135M-Instruct a real run whose every kept answer has its content words in its chunk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.evals.longqa import read_examples
from ctxext.fixtures import books_dir
from ctxext.synth import SynthSettings, check, synthesize
from ctxext.synth import run as synth_run

BOOK = "pg1342.txt"


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ pure checks


def test_content_words_and_support():
    assert check.content_words("The Captain of the ship, Mr. Reed!") == ["captain", "ship", "mr", "reed"]
    chunk = "Mr. Bingley inherited property to the amount of nearly a hundred thousand pounds from his father."
    assert check.supported("Mr. Bingley", chunk)
    assert check.supported("nearly a hundred thousand pounds", chunk)
    assert check.missing_words("Mr. Darcy inherited land", chunk) == ["darcy", "land"]
    assert not check.supported("inherits", chunk)  # exact words only: no stemming
    assert not check.supported("it was he", chunk)  # no content word at all -> not supported
    assert not check.supported("", chunk)


def test_question_problems():
    assert check.question_problem("Who inherited property?") is None
    assert check.question_problem("Who inherited property") == "no question mark"
    assert check.question_problem("Who?") == "1 words"
    assert check.question_problem("Who was most likely to be most likely to be most likely to be?") == "repeats itself"
    assert check.answer_in_question("Sir William", "Who was Sir William?")
    assert not check.answer_in_question("Mr. Bingley", "Who inherited property?")


@pytest.fixture(scope="module")
def tiny():
    from ctxext.models import load_model

    return load_model("tiny-rope")


def test_pick_chunks_whole_sentences_seeded(tiny):
    tok = tiny.tokenizer
    text = (books_dir() / BOOK).read_text(encoding="utf-8")[40000:52000]
    ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"])
    a = synth_run.pick_chunks(tok, ids, 10, 80, np.random.default_rng([0, 0]))
    assert a == synth_run.pick_chunks(tok, ids, 10, 80, np.random.default_rng([0, 0]))
    assert a != synth_run.pick_chunks(tok, ids, 10, 80, np.random.default_rng([1, 0]))
    assert len(a) == 10 and len(set(a)) == 10 and a == sorted(a)
    for s, e in a:
        assert 8 <= e - s <= 80
        chunk = tok.decode(ids[s:e].tolist()).strip()
        assert chunk[-1] in ".!?”’\"')_]" or chunk.endswith("."), chunk[-20:]  # ends at a sentence end
        if s > 0:
            assert tok.decode(ids[s - 3:s].tolist()).rstrip()[-1] in ".!?”’\"')_]"


def test_pick_chunks_never_overlap(tiny):
    tok = tiny.tokenizer
    text = (books_dir() / BOOK).read_text(encoding="utf-8")[40000:44000]
    ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"])
    for seed in range(5):
        a = synth_run.pick_chunks(tok, ids, 1000, 80, np.random.default_rng([seed, 0]))
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(a, a[1:])), a  # sorted and pairwise disjoint
        covered = sum(e - s for s, e in a)
        assert covered <= len(ids) and len(a) * 8 <= covered
        assert 0 < len(a) < len(ids) // 8  # fewer than asked: only as many as fit side by side


FRONT = ("THE BOOK\n\nContents\n\n CHAPTER I. The Start\n CHAPTER II. The End\n\nPREFACE\n\nA long preface "
         "about nothing. It goes on.\n\n\nCHAPTER I. The Start\n\nIt was a dark night. The wind blew. ")


def test_front_tokens_auto_none_number(tiny):
    tok = tiny.tokenizer
    ids = np.asarray(tok(FRONT * 1 + "More text follows here. " * 200, add_special_tokens=False)["input_ids"])
    k = synth_run.front_tokens(tok, ids, "auto")
    # the last chapter-1 heading, not the one in the contents: the context starts at 'CHAPTER I. The Start\n\nIt'
    assert tok.decode(ids[k:].tolist()).lstrip().startswith("CHAPTER I. The Start\n\nIt was a dark night")
    assert "PREFACE" in tok.decode(ids[:k].tolist())
    assert synth_run.front_tokens(tok, ids, "none") == 0
    assert synth_run.front_tokens(tok, ids, "17") == 17
    assert synth_run.front_tokens(tok, ids, str(10 ** 9)) == len(ids)
    plain = np.asarray(tok("No headings here. " * 100, add_special_tokens=False)["input_ids"])
    assert synth_run.front_tokens(tok, plain, "auto") == 0  # nothing to skip
    # a chapter-1 heading past the first quarter (a second volume) is not front matter
    late = np.asarray(tok("Text of volume one. " * 300 + "\nCHAPTER I\n\nVolume two.", add_special_tokens=False)
                      ["input_ids"])
    assert synth_run.front_tokens(tok, late, "auto") == 0


def test_front_of_the_books_is_skipped(tiny):
    """On the real books the automatic skip lands on the first line of the novel (measured, SmolLM2's tokens are
    in the benchmark README; here with the fixture tokenizer)."""
    from ctxext.data import load_documents

    starts = {"pg1342.txt": "Chapter I.]", "pg84.txt": "Chapter 1\n\n\nI am by birth a Genevese",
              "pg2701.txt": "CHAPTER 1. Loomings.\n\nCall me Ishmael"}
    for book, first in starts.items():
        d = load_documents([books_dir() / book], tiny.tokenizer)[0]
        ids = np.asarray(d.tokens)
        k = synth_run.front_tokens(tiny.tokenizer, ids, "auto")
        assert k > 1000 and tiny.tokenizer.decode(ids[k:k + 40].tolist()).lstrip().startswith(first), book


# ------------------------------------------------------------------------------------------------ the driver


class ScriptedGenerator:
    """Stands in for the model: a question about the chunk's first words; a short answer from the chunk for
    even calls and 'zebra unicorn' (not in the chunk) for odd ones; raises after `fail_after` chunks."""

    calls = 0
    fail_after: int | None = None

    def __init__(self, model, tokenizer, chat=False):
        pass

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        chunk = prompt.rsplit("Text: ", 1)[1].split("\n", 1)[0]
        words = [w for w in chunk.split() if w.isalpha()]
        if prompt.endswith("Question:"):
            cls = ScriptedGenerator
            if cls.fail_after is not None and cls.calls >= cls.fail_after:
                raise KeyboardInterrupt
            cls.calls += 1
            return f" What comes after the words {words[0]} {words[1]}?"
        if prompt.endswith("Short answer:"):
            content = [w for w in words[2:] if w.lower() not in check.STOPWORDS]
            return " ".join(content[:2]) if ScriptedGenerator.calls % 2 else "zebra unicorn"
        return " ".join(words[:8])

    def verify(self, chunk: str, question: str, answer: str) -> float:
        return 1.0


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setattr(synth_run, "Generator", ScriptedGenerator)
    ScriptedGenerator.calls, ScriptedGenerator.fail_after = 0, None
    return ScriptedGenerator


@pytest.fixture(scope="module")
def book_part(tmp_path_factory) -> str:
    text = (books_dir() / BOOK).read_text(encoding="utf-8")[40000:60000]
    p = tmp_path_factory.mktemp("book") / "part.txt"
    p.write_text(text)
    return str(p)


def test_driver_files_reasons_and_resume(tmp_path, tiny, scripted, book_part):
    s = SynthSettings(model="tiny-rope", per_doc=8, min_len=512, max_len=1024)
    full = tmp_path / "full.jsonl"
    res = synthesize([book_part], full, s, progress=False, lm=tiny, log=lambda m: None)
    assert res["processed"] == res["chunks"] == 8 and res["finished"]
    assert res["kept"] == 4 and res["rejected"] == {"answer not in chunk": 4}
    log_path, summary_path = synth_run.side_files(full)
    assert json.loads(summary_path.read_text()) == res
    log = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert len(log) == 8 and sum(r["reason"] is None for r in log) == 4
    rows = [json.loads(x) for x in full.read_text().splitlines()]
    for r in rows:
        assert r["chunk"] in " ".join(r["context"].split())  # the chunk lies inside the truncated document
        assert len(tiny.tokenizer(r["context"], add_special_tokens=False)["input_ids"]) <= 1024 - synth_run.RESERVE + 2
        assert check.supported(r["answers"][0], r["chunk"]) and check.supported(r["long_answer"], r["chunk"])
    assert [e.question for e in read_examples([full])] == [r["question"] for r in rows]  # longqa reads it

    # interrupted after 5 chunks, then resumed: the same files as one uninterrupted run
    part = tmp_path / "part.jsonl"
    scripted.calls, scripted.fail_after = 0, 5
    with pytest.raises(KeyboardInterrupt):
        synthesize([book_part], part, s, progress=False, lm=tiny, log=lambda m: None)
    assert len(synth_run.side_files(part)[0].read_text().splitlines()) == 5
    assert not json.loads(synth_run.side_files(part)[1].read_text())["finished"]
    scripted.fail_after = None
    with pytest.raises(CtxextError, match="already exists; pass --resume"):
        synthesize([book_part], part, s, progress=False, lm=tiny)
    with pytest.raises(CtxextError, match=r"other settings \(seed 0 -> 1\)"):
        synthesize([book_part], part, SynthSettings(model="tiny-rope", per_doc=8, min_len=512, max_len=1024, seed=1),
                   resume=True, progress=False, lm=tiny)
    res2 = synthesize([book_part], part, s, resume=True, progress=False, lm=tiny, log=lambda m: None)
    assert part.read_text() == full.read_text()
    assert synth_run.side_files(part)[0].read_text() == log_path.read_text()
    assert {k: res2[k] for k in ("processed", "kept", "rejected")} == {k: res[k] for k in ("processed", "kept", "rejected")}


def test_nothing_kept_still_writes_the_output_file(tmp_path, tiny, scripted, book_part, monkeypatch):
    """With every chunk rejected, OUT was never created: the run said 'wrote 0 examples to OUT', a rerun refused
    because 'OUT already exists', and longqa on it failed with 'data path not found'."""
    orig = ScriptedGenerator.complete
    monkeypatch.setattr(ScriptedGenerator, "complete",
                        lambda self, p, n: "zebra unicorn" if p.endswith("Short answer:") else orig(self, p, n))
    out = tmp_path / "none.jsonl"
    res = synthesize([book_part], out, SynthSettings(model="tiny-rope", per_doc=2, min_len=512, max_len=1024),
                     progress=False, lm=tiny, log=lambda m: None)
    assert res["kept"] == 0 and res["rejected"] == {"answer not in chunk": 2}
    assert out.is_file() and out.read_text() == ""
    with pytest.raises(CtxextError, match="longqa: no examples in"):  # not 'data path not found'
        read_examples([out])


def test_tries_keep_the_first_passing_attempt(tmp_path, tiny, scripted, book_part, monkeypatch):
    """With --tries 2 every chunk rejected on its first try (the scripted 'zebra unicorn' answer) gets a second
    attempt with other worked examples; the checks stay the same and every failed try is counted."""
    seen = []
    orig = synth_run.prompts.question_prompt
    monkeypatch.setattr(synth_run.prompts, "question_prompt", lambda c, v=0: seen.append(v) or orig(c, v))
    s = SynthSettings(model="tiny-rope", per_doc=8, min_len=512, max_len=1024, tries=2)
    out = tmp_path / "t.jsonl"
    res = synthesize([book_part], out, s, progress=False, lm=tiny, log=lambda m: None)
    assert res["kept"] == 8 and res["rejected"] == {} and res["rejected_tries"] == {"answer not in chunk": 7}
    # the script answers 'zebra unicorn' on even question calls: chunk 1 passes at once, chunks 2-8 on try 2
    assert res["tries_total"] == 15 and seen.count(1) == 7 and seen.count(0) == 8
    assert orig("x", 1) != orig("x", 0)  # another pair of worked examples
    for r in map(json.loads, out.read_text().splitlines()):
        assert check.supported(r["answers"][0], r["chunk"]) and check.supported(r["long_answer"], r["chunk"])
    log = [json.loads(x) for x in synth_run.side_files(out)[0].read_text().splitlines()]
    assert sorted(r["try"] for r in log) == [0] + [1] * 7
    assert all(r["failed_tries"] == (["answer not in chunk"] if r["try"] else []) for r in log)


def test_contexts_split_a_long_document(tmp_path, tiny, scripted, book_part):
    """--contexts 3: consecutive contexts of max_len - RESERVE tokens, each with its own chunks inside it; the first
    context is the one-context run's (same chunk ids), and each example's context is its own part of the book."""
    one = SynthSettings(model="tiny-rope", per_doc=4, min_len=512, max_len=1024)
    three = SynthSettings(model="tiny-rope", per_doc=4, min_len=512, max_len=1024, contexts=3)
    a, b = tmp_path / "one.jsonl", tmp_path / "three.jsonl"
    ra = synthesize([book_part], a, one, progress=False, lm=tiny, log=lambda m: None)
    scripted.calls = 0
    rb = synthesize([book_part], b, three, progress=False, lm=tiny, log=lambda m: None)
    assert ra["contexts"] == 1 and rb["contexts"] == 3 and rb["chunks"] == 12 == 3 * ra["chunks"]
    log_a = [json.loads(x)["chunk_id"] for x in synth_run.side_files(a)[0].read_text().splitlines()]
    log_b = [json.loads(x)["chunk_id"] for x in synth_run.side_files(b)[0].read_text().splitlines()]
    assert log_b[:4] == log_a and {c.split("@")[0] for c in log_b[4:]} == {book_part + "#1", book_part + "#2"}
    from ctxext.data import load_documents

    ids = load_documents([book_part], tiny.tokenizer)[0].tokens
    budget = 1024 - synth_run.RESERVE
    front = rb["front_tokens_skipped"][book_part]
    rows = [json.loads(x) for x in b.read_text().splitlines()]
    assert {r["context_start"] for r in rows} == {front, front + budget, front + 2 * budget}
    for r in rows:
        k = (r["context_start"] - front) // budget
        assert r["document"] == (book_part if k == 0 else f"{book_part}#{k}")
        assert r["context"] == tiny.tokenizer.decode(ids[r["context_start"]:r["context_start"] + budget])
        assert r["chunk"] in " ".join(r["context"].split())


def test_errors_before_weights(tmp_path, capsys):
    book = str(books_dir() / BOOK)
    for args, msg in [
        (["--data", book, "--out", str(tmp_path / "x.txt")], "--out must be a .jsonl file"),
        (["--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x.jsonl")], "data path not found"),
        (["--data", book, "--out", str(tmp_path / "x.jsonl"), "--max-len", "200"], "--max-len 200 is too short"),
        (["--data", book, "--out", str(tmp_path / "x.jsonl"), "--per-doc", "0"], "--per-doc must be >= 1"),
        (["--data", book, "--out", str(tmp_path / "x.jsonl"), "--skip-front", "-3"], "--skip-front must be 'auto'"),
        (["--data", book, "--out", str(tmp_path / "x.jsonl"), "--skip-front", "chapter"], "--skip-front must be"),
        (["--data", book, "--out", str(tmp_path / "x.jsonl"), "--tries", "0"], "--tries must be >= 1"),
        (["--data", book, "--out", str(tmp_path / "x.jsonl"), "--contexts", "0"], "--contexts must be >= 1"),
        (["--data", book, "--out", str(tmp_path / "x.jsonl"), "--model", "no-such-model"], "no-such-model"),
    ]:
        capsys.readouterr()
        assert main(["synth-qa", "--no-progress"] + args) == 2, args
        err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ctxext: error:")]
        assert len(err) == 1 and msg in err[0], (args, err)


def test_too_short_documents_are_refused(tmp_path, tiny, scripted):
    short = tmp_path / "short.txt"
    short.write_text("A short text. It has two sentences.")
    with pytest.raises(CtxextError, match="no document has >= --min-len 1024 tokens"):
        synthesize([str(short)], tmp_path / "o.jsonl", SynthSettings(model="tiny-rope"), progress=False, lm=tiny)
    # long enough as a whole, too short once the front is skipped
    book = tmp_path / "book.txt"
    book.write_text("Anna met Tom at the market. " * 400)
    with pytest.raises(CtxextError, match="after the skipped front"):
        synthesize([str(book)], tmp_path / "p.jsonl", SynthSettings(model="tiny-rope", min_len=1000,
                   skip_front=str(10 ** 6)), progress=False, lm=tiny)


def test_driver_skips_front_and_records_it(tmp_path, tiny, scripted):
    book = tmp_path / "book.txt"
    story = " ".join(f"Anna met Tom number {i} at the market." for i in range(300))
    book.write_text(FRONT + story + "\n")
    out = tmp_path / "qa.jsonl"
    res = synthesize([str(book)], out, SynthSettings(model="tiny-rope", per_doc=6, min_len=256, max_len=640),
                     progress=False, lm=tiny, log=lambda m: None)
    k = res["front_tokens_skipped"][str(book)]
    assert k > 0 and res["kept"] >= 1
    for r in map(json.loads, out.read_text().splitlines()):
        assert r["context_start"] == k and r["context"].lstrip().startswith("CHAPTER I. The Start\n\nIt was")
        assert "PREFACE" not in r["context"]


# ------------------------------------------------------------------------------------------------ SmolLM2


@pytest.mark.slow
def test_smollm2_kept_answers_are_in_their_chunks(tmp_path, book_part):
    """A real run of SmolLM2-135M-Instruct on a part of Pride and Prejudice: something is kept, every kept short
    and long answer has all its content words in its chunk, and the summary counts every chunk once."""
    out = tmp_path / "qa.jsonl"
    assert main(["synth-qa", "--data", book_part, "--out", str(out), "--per-doc", "10", "--max-len", "1024",
                 "--min-len", "512", "--tries", "3", "--no-progress"]) == 0
    summary = json.loads(synth_run.side_files(out)[1].read_text())
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert summary["kept"] == len(rows) >= 1
    assert summary["kept"] + summary["rejected_total"] == summary["processed"] == 10
    for r in rows:
        for answer in (r["answers"][0], r["long_answer"]):
            assert check.content_words(answer) and not check.missing_words(answer, r["chunk"]), (answer, r["chunk"])
        assert r["verify_logodds"] > 0 and r["question"].endswith("?")


def test_resume_counts_a_kept_question_the_log_missed(tmp_path, tiny, scripted, book_part, monkeypatch):
    """Interrupted after an example reached the output but before its log line: on resume its question still
    counts against duplicates in its document."""
    s = SynthSettings(model="tiny-rope", per_doc=8, min_len=512, max_len=1024)
    part = tmp_path / "part.jsonl"
    scripted.calls, scripted.fail_after = 0, 4
    with pytest.raises(KeyboardInterrupt):
        synthesize([book_part], part, s, progress=False, lm=tiny, log=lambda m: None)
    log_path = synth_run.side_files(part)[0]
    log = log_path.read_text().splitlines()
    last_kept = [json.loads(x) for x in part.read_text().splitlines()][-1]
    log_path.write_text("".join(x + "\n" for x in log if json.loads(x)["chunk_id"] != last_kept["id"]))
    seen = []
    real = synth_run.judge
    monkeypatch.setattr(synth_run, "judge", lambda gen, chunk, kept, tries=1: seen.append(list(kept))
                        or real(gen, chunk, kept, tries))
    scripted.fail_after = None
    synthesize([book_part], part, s, resume=True, progress=False, lm=tiny, log=lambda m: None)
    assert seen and last_kept["question"] in seen[0]


def test_resume_drops_a_last_line_a_kill_cut_short(tmp_path, tiny, scripted, book_part):
    """A kill mid-write leaves a partial last line in the log or the output (an example line is the whole context,
    ~16 KB): --resume ended in a JSONDecodeError traceback. The cut line is dropped and its chunk runs again; the
    files then equal one uninterrupted run's. A bad line elsewhere is a one-line refusal."""
    s = SynthSettings(model="tiny-rope", per_doc=8, min_len=512, max_len=1024)
    full = tmp_path / "full.jsonl"
    synthesize([book_part], full, s, progress=False, lm=tiny, log=lambda m: None)
    for cut in ("log", "out"):
        part = tmp_path / f"part-{cut}.jsonl"
        scripted.calls, scripted.fail_after = 0, 5
        with pytest.raises(KeyboardInterrupt):
            synthesize([book_part], part, s, progress=False, lm=tiny, log=lambda m: None)
        log_path = synth_run.side_files(part)[0]
        target = log_path if cut == "log" else part
        last = target.read_text().splitlines()[-1]
        if cut == "log":  # the last chunk's log line, cut: that chunk is not done
            target.write_text("".join(x + "\n" for x in target.read_text().splitlines()[:-1]) + last[:40])
        else:  # an example line cut mid-write, before its log line
            lines = target.read_text().splitlines()
            target.write_text("".join(x + "\n" for x in lines[:-1]) + last[:40])
            log_path.write_text("".join(x + "\n" for x in log_path.read_text().splitlines()
                                        if json.loads(x)["chunk_id"] != json.loads(last)["id"]))
        scripted.fail_after = None
        synthesize([book_part], part, s, resume=True, progress=False, lm=tiny, log=lambda m: None)
        got = [json.loads(x) for x in log_path.read_text().splitlines()]
        gone = json.loads(last)["chunk_id" if cut == "log" else "id"]
        if cut == "log":  # the rest of the run as one uninterrupted run made it
            want = [json.loads(x) for x in synth_run.side_files(full)[0].read_text().splitlines()]
            assert part.read_text() == full.read_text()
            # a chunk whose example was kept needs no rerun: its log line stays missing, as after any kill between
            assert got in (want, [r for r in want if r["chunk_id"] != gone]), [r["chunk_id"] for r in got]
        else:  # the cut example's chunk ran again (the scripted answers then follow another order)
            ids = [json.loads(x)["id"] for x in part.read_text().splitlines()]
            assert len(ids) == len(set(ids)) and [r["chunk_id"] for r in got].count(gone) == 1
    log_path = synth_run.side_files(part)[0]
    log_path.write_text("{broken\n" + log_path.read_text())
    with pytest.raises(CtxextError, match=r"line 1 is not JSON"):
        synthesize([book_part], part, s, resume=True, progress=False, lm=tiny, log=lambda m: None)


def llama_style_tokenizer():
    """SentencePiece-style pipeline (Llama 2, Mistral): '▁' prepended, spaces become '▁'."""
    from tokenizers import Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "▁", "y", "e", "s", "n", "o", "▁y", "▁ye", "▁yes", "▁n", "▁no"])}
    merges = [("▁", "y"), ("▁y", "e"), ("▁ye", "s"), ("▁", "n"), ("▁n", "o")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_the_verdict_compares_the_words_own_tokens(tiny):
    """With a Llama-style tokenizer ' yes' and ' no' both start with '▁': the verdict compared that token with
    itself (log-odds 0), and every pair was rejected as 'model rejected' without a word."""
    from ctxext.synth.model import verdict_tokens

    tok = llama_style_tokenizer()
    yes, no, lead = verdict_tokens(tok)
    assert tok.convert_ids_to_tokens([yes, no]) == ["▁yes", "▁no"] and lead == []
    y, n, lead = verdict_tokens(tiny.tokenizer)  # GPT-2 style: ' yes' is 'Ġy' 'es' here, ' no' one token
    assert tiny.tokenizer.convert_ids_to_tokens([y, n]) == ["Ġy", "Ġno"] and lead == []


def test_contexts_past_a_min_len_above_the_context_size(tmp_path, tiny, scripted, book_part):
    """--min-len above max_len - RESERVE made every context after the first 'short': --contexts 3 gave one."""
    s = SynthSettings(model="tiny-rope", per_doc=1, min_len=1000, max_len=1024, contexts=3)
    res = synthesize([book_part], tmp_path / "c.jsonl", s, progress=False, lm=tiny, log=lambda m: None)
    assert res["contexts"] == 3


def test_resume_on_other_data_and_an_out_inside_the_data_are_refused(tmp_path, tiny, scripted, book_part):
    s = SynthSettings(model="tiny-rope", per_doc=2, min_len=512, max_len=1024)
    out = tmp_path / "r.jsonl"
    synthesize([book_part], out, s, progress=False, lm=tiny, log=lambda m: None)
    other = tmp_path / "other.txt"
    other.write_text(Path(book_part).read_text())
    with pytest.raises(CtxextError, match=r"other settings \(data \[.*part.txt'\] -> \[.*other.txt'\]\)"):
        synthesize([str(other)], out, s, resume=True, progress=False, lm=tiny)  # was mixed into the run
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "book.txt").write_text(Path(book_part).read_text())
    with pytest.raises(CtxextError, match="lies in a --data folder"):  # its --resume read qa.log.jsonl as data
        synthesize([str(folder)], folder / "qa.jsonl", s, progress=False, lm=tiny)


def test_resume_with_another_spelling_or_folder_continues_the_same_run(tmp_path, tiny, scripted, book_part,
                                                                        monkeypatch):
    """A relative --data resumed as an absolute path redid every chunk under new ids ('processed 4' of 2 chunks);
    resumed from another folder, the relative path resolved elsewhere and the resume was refused."""
    import shutil

    s = SynthSettings(model="tiny-rope", per_doc=2, min_len=512, max_len=1024)
    (tmp_path / "books").mkdir()
    shutil.copy(book_part, tmp_path / "books" / "part.txt")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "q.jsonl"
    scripted.calls, scripted.fail_after = 0, 1
    with pytest.raises(KeyboardInterrupt):
        synthesize(["books/part.txt"], out, s, progress=False, lm=tiny, log=lambda m: None)
    scripted.fail_after = None
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    res = synthesize([str(tmp_path / "books" / "part.txt")], out, s, resume=True, progress=False, lm=tiny,
                     log=lambda m: None)
    assert res["processed"] == res["chunks"] == 2
    log = [json.loads(x)["chunk_id"] for x in synth_run.side_files(out)[0].read_text().splitlines()]
    assert len(log) == len(set(log)) == 2 and all(c.startswith("books/part.txt@") for c in log)
