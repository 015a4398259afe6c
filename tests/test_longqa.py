"""`ctxext eval --task longqa`: the JSONL layouts it reads, the prompt it builds, greedy answers equal to
transformers' greedy generate, and on the tiny-rope fixture the records, answer files and errors. The fixture
is a weak model, so no accuracy is asserted: the records must equal the scorer applied to the answers written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.evals import qa_metrics
from ctxext.evals.longqa import QUESTION, build_prompt, greedy_answer, pick, read_examples
from ctxext.fixtures import HELD_OUT_BOOK, books_dir

RECORD_KEYS = {"model", "scaling", "task", "length", "depth", "bucket", "metric", "value", "n"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def passage() -> str:
    text = (books_dir() / HELD_OUT_BOOK).read_text(encoding="utf-8")
    return text[20000:24000]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory, passage) -> Path:
    rows = [
        {"id": "plain", "context": passage, "question": "Who wrote the letter?", "answers": ["Robert Walton", "Walton"]},
        {"document": {"text": passage}, "question": {"text": "Where was the ship?"}, "answers": [{"text": "in the ice"}]},
        {"input": "What is the name of the sister?\n\n" + passage, "output": "Margaret"},
        {"article": passage, "questions": [{"question": "Who is writing?", "options": ["Victor", "Walton"],
                                            "gold_label": 2}]},
    ]
    return write_jsonl(tmp_path_factory.mktemp("qa") / "qa.jsonl", rows)


# ------------------------------------------------------------------------------------------------ reading


def test_reads_every_layout(qa_file, passage):
    ex = read_examples([qa_file])
    assert [e.id for e in ex] == ["plain", f"{qa_file}:2", f"{qa_file}:3", f"{qa_file}:4#0"]
    assert [e.question for e in ex] == ["Who wrote the letter?", "Where was the ship?",
                                        "What is the name of the sister?", "Who is writing?"]
    assert [e.answers for e in ex] == [("Robert Walton", "Walton"), ("in the ice",), ("Margaret",), ("Walton",)]
    assert ex[0].context == ex[1].context == ex[3].context == passage
    assert ex[2].context == passage.strip()  # SCROLLS input: split at the first blank line, stripped
    # LongBench: 'input' is the question when a context key is there; SQuAD answers {'text': [...]}
    other = write_jsonl(qa_file.parent / "lb.jsonl", [
        {"context": "c", "input": "q?", "answers": {"text": ["a1", "a2"]}},
        {"story": "s", "query": "q2", "outputs": ["o"]}, ""])
    ex = read_examples([other])
    assert [(e.context, e.question, e.answers) for e in ex] == [("c", "q?", ("a1", "a2")), ("s", "q2", ("o",))]


@pytest.mark.parametrize("row,match", [
    ('{"context": "c", "answers": ["a"]', "is not valid JSON"),
    ({"context": "c", "answers": ["a"]}, "no question; accepted keys: question, query, input"),
    ({"context": "c", "question": "q"}, "no gold answer; accepted keys: answers, answer, outputs"),
    ({"context": "c", "question": "q", "answers": []}, "no gold answer"),
    ({"question": "q", "answers": ["a"]}, "no context; accepted keys: context, document, story, article, passage"),
    ({"context": 3, "question": "q", "answers": ["a"]}, "'context' must be a string"),
    ({"article": "t", "questions": [{"question": "q", "options": ["x"], "gold_label": 2}]}, "1-based 'gold_label'"),
    (["not", "an", "object"], "expected a JSON object"),
])
def test_reading_errors(tmp_path, row, match):
    f = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(CtxextError, match=match) as e:
        read_examples([f])
    assert str(e.value).startswith(f"{f}:1") and "\n" not in str(e.value)


def test_reading_refuses_non_jsonl_and_empty(tmp_path):
    with pytest.raises(CtxextError, match="longqa reads .jsonl files"):
        read_examples([books_dir() / HELD_OUT_BOOK])
    with pytest.raises(CtxextError, match="no examples"):
        read_examples([write_jsonl(tmp_path / "empty.jsonl", [""])])


def test_pick_is_seeded_and_keeps_file_order(qa_file):
    ex = read_examples([qa_file])
    assert pick(ex, 10, 0) == ex
    a, b, c = pick(ex, 2, 0), pick(ex, 2, 0), [pick(ex, 2, s) for s in range(6)]
    assert a == b and len(a) == 2 and [ex.index(e) for e in a] == sorted(ex.index(e) for e in a)
    assert len({tuple(e.id for e in x) for x in c}) > 1  # another seed draws other examples


# ------------------------------------------------------------------------------------------------ prompt + greedy


@pytest.fixture(scope="module")
def lm():
    from ctxext.models import load_model

    return load_model("tiny-rope")


def test_prompt_cuts_the_context_from_its_start(lm, passage):
    tok = lm.tokenizer
    ids = np.asarray(tok(passage, add_special_tokens=False)["input_ids"])
    q = np.asarray(tok(QUESTION.format(question="Who?"), add_special_tokens=False)["input_ids"])
    head = np.asarray(tok("", add_special_tokens=True)["input_ids"])
    p = build_prompt(tok, passage, "Who?", 100)
    assert len(p) == 100 and len(ids) > 100
    keep = 100 - len(head) - len(q)
    assert np.array_equal(p, np.concatenate([head, ids[-keep:], q]))  # the last context tokens, then the question
    short = build_prompt(tok, "A short text.", "Who?", 100)  # everything fits: nothing cut, no padding
    assert len(short) == len(head) + len(tok("A short text.", add_special_tokens=False)["input_ids"]) + len(q)
    with pytest.raises(CtxextError, match="length 5 leaves no room for context"):
        build_prompt(tok, passage, "Who?", 5)


def test_greedy_answer_equals_transformers_generate(lm, passage):
    tok, model = lm.tokenizer, lm.model
    for length, n in ((120, 10), (200, 24)):
        prompt = build_prompt(tok, passage, "Who wrote the letter?", length)
        text, steps = greedy_answer(model, tok, prompt, n)
        with torch.inference_mode():
            ref = model.generate(torch.as_tensor(prompt)[None], max_new_tokens=n, do_sample=False,
                                 pad_token_id=tok.eos_token_id)[0, len(prompt):].tolist()
        ref_text = tok.decode(ref[:steps], skip_special_tokens=True)
        assert 1 <= steps <= n
        # our answer = HF's greedy tokens up to the stop, cut at the first newline after text
        assert text == ref_text.lstrip().split("\n", 1)[0].strip()
        if steps < n and ref[steps - 1] not in (tok.eos_token_id,):
            assert "\n" in ref_text.lstrip()  # stopped early only at a newline (or EOS)


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, qa_file) -> Path:
    out = tmp_path_factory.mktemp("longqa") / "run"
    code = main(["eval", "--model", "tiny-rope", "--scaling", "default", "--scaling", "yarn:factor=2",
                 "--task", "longqa", "--data", str(qa_file), "--lengths", "128,384", "--max-new-tokens", "12",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_records_and_answer_files(run_dir, qa_file):
    res = json.loads((run_dir / "results.json").read_text())
    recs = res["records"]
    assert all(set(r) == RECORD_KEYS and r["task"] == "longqa" and r["depth"] is None and r["bucket"] is None
               for r in recs)
    assert sorted((r["scaling"], r["length"], r["metric"]) for r in recs) == sorted(
        (s, L, m) for s in ("default", "yarn:factor=2") for L in (128, 384) for m in ("em", "f1", "rougeL"))
    assert res["meta"]["config"]["settings"]["max_new_tokens"] == 12
    assert res["meta"]["config"]["resume_keys"]["data"] == [str(qa_file.resolve())]
    golds = {e.id: list(e.answers) for e in read_examples([qa_file])}
    tok = None
    for s, slug_start in (("default", "default-"), ("yarn:factor=2", "yarn_factor=2-")):
        for L in (128, 384):
            files = list((run_dir / "answers").glob(f"longqa-{slug_start}*-{L}.jsonl"))
            assert len(files) == 1
            rows = [json.loads(x) for x in files[0].read_text().splitlines()]
            assert [r["id"] for r in rows] == list(golds)
            for r in rows:
                assert r["answers"] == golds[r["id"]] and "\n" not in r["prediction"]
                assert r["prompt_tokens"] <= L - 12
                sc = qa_metrics.score(r["prediction"], r["answers"])
                assert {k: r[k] for k in sc} == sc  # the scorer applied to the generated answer
            for m in ("em", "f1", "rougeL"):
                rec = next(x for x in recs if x["scaling"] == s and x["length"] == L and x["metric"] == m)
                assert rec["n"] == 4 and rec["value"] == pytest.approx(np.mean([r[m] for r in rows]))
    summary = (run_dir / "summary.md").read_text()
    assert "## longqa" in summary and "**f1**" in summary and "**rougeL**" in summary
    del tok


def test_resume_skips_finished_cells(run_dir, qa_file, capsys):
    before = (run_dir / "results.json").read_text()
    main(["eval", "--model", "tiny-rope", "--scaling", "default", "--task", "longqa", "--data", str(qa_file),
          "--lengths", "128", "--max-new-tokens", "12", "--out", str(run_dir), "--no-progress", "--resume"])
    assert "nothing to run" in capsys.readouterr().err
    assert json.loads((run_dir / "results.json").read_text())["records"] == json.loads(before)["records"]


def test_samples_and_errors(tmp_path, qa_file, capsys):
    out = tmp_path / "two"
    main(["eval", "--model", "tiny-rope", "--task", "longqa", "--data", str(qa_file), "--lengths", "160",
          "--samples", "2", "--max-new-tokens", "4", "--out", str(out), "--no-progress"])
    recs = json.loads((out / "results.json").read_text())["records"]
    assert {r["n"] for r in recs} == {2}
    assert len((out / "answers").glob("*.jsonl").__next__().read_text().splitlines()) == 2
    base = ["eval", "--model", "tiny-rope", "--task", "longqa", "--no-progress"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"context": "c", "question": "q"}])
    for args, msg in [
        (["--lengths", "128", "--out", str(tmp_path / "x")], "task longqa needs --data"),
        (["--data", str(bad), "--lengths", "128", "--out", str(tmp_path / "y"), "--dry-run"],
         "bad.jsonl:1: no gold answer"),  # fails before any weights, even on a dry run
        (["--data", str(qa_file), "--task", "ppl", "--lengths", "128", "--out", str(tmp_path / "v")],
         "longqa cannot share --data with ppl: it reads files of its own kind, they read text; run longqa in a "
         "ctxext eval of its own"),  # it loaded the weights, then failed on the QA file's missing 'text' field
        (["--data", str(qa_file), "--lengths", "128", "--max-new-tokens", "0", "--out", str(tmp_path / "z")],
         "--max-new-tokens must be >= 1, got 0"),
        (["--data", str(qa_file), "--lengths", "20", "--max-new-tokens", "12", "--out", str(tmp_path / "w")],
         "length 20 leaves no room for context after the question (19 tokens) and the answer (--max-new-tokens 12)"),
    ]:
        capsys.readouterr()
        assert main(base + args) == 2, args
        err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ctxext: error:")]
        assert len(err) == 1 and msg in err[0], (args, err)


def test_estimate_counts_the_examples_the_files_hold(tmp_path, qa_file, capsys):
    """--samples above the number of examples must not inflate the stated time (4 examples, --samples 1000)."""
    lines = {}
    for n in ("4", "1000"):
        main(["eval", "--model", "tiny-rope", "--task", "longqa", "--data", str(qa_file), "--lengths", "4096",
              "--samples", n, "--out", str(tmp_path / n), "--no-progress", "--dry-run"])
        lines[n] = [x for x in capsys.readouterr().err.splitlines() if x.strip().startswith("longqa")]
    assert len(lines["4"]) == 1 and lines["4"] == lines["1000"], lines


def test_jsonl_with_unicode_line_separators_inside_strings(tmp_path):
    """JSON allows U+2028 / U+2029 / U+0085 unescaped in strings (synth-qa writes them so); they are not line ends."""
    rows = [{"context": "first line\u2028second\u2029third\x85end", "question": "q?", "answers": ["a"]},
            {"context": "plain", "question": "r?", "answers": ["b"]}]
    p = tmp_path / "qa.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    got = read_examples([p])
    assert [e.context for e in got] == [rows[0]["context"], "plain"]


LONGROPE2 = "longrope:factor=2,long_factor=[" + ",".join(f"{1 + i / 15:.3f}" for i in range(16)) + "]"


def test_longrope_prompts_are_encoded_in_one_forward(tmp_path, qa_file, monkeypatch):
    """A prompt encoded in chunks would run its first chunk with longrope's short factors (a chunk shorter than the
    window) and the rest with its long ones, unlike one forward; where a chunk's length and the prompt's see
    different frequencies the prompt goes in one forward, elsewhere in chunks."""
    import ctxext.evals.longqa as longqa
    from ctxext.evals.scoring import extend, logits, new_cache
    from ctxext.models import apply_spec, load_model
    from ctxext.scaling import parse_spec

    monkeypatch.setattr(longqa, "PREFILL_CHUNK", 128)  # stands in for 2,048 with tiny-rope's 256-token window
    seen = []
    real = longqa.greedy_answer

    def spy(*a, whole=False, **kw):
        seen.append(whole)
        return real(*a, whole=whole, **kw)

    monkeypatch.setattr(longqa, "greedy_answer", spy)
    for n, (spec, whole) in enumerate(((LONGROPE2, True), ("yarn:factor=2", False))):
        seen.clear()
        assert main(["eval", "--model", "tiny-rope", "--scaling", spec, "--task", "longqa", "--data", str(qa_file),
                     "--lengths", "400", "--samples", "2", "--out", str(tmp_path / str(n)), "--no-progress"]) == 0
        assert seen == [whole, whole]
    lm = load_model("tiny-rope")
    apply_spec(lm, parse_spec(LONGROPE2))
    ids = np.arange(300, 700) % 2000 + 3
    with torch.inference_mode():
        full = lm.model(torch.as_tensor(ids)[None]).logits[0, -1]
        for chunk, same in ((400, True), (128, False)):
            h = extend(lm.model, new_cache(lm.model), ids, keep=1, chunk=chunk)
            assert ((logits(lm.model, h[-1:])[0] - full).abs().max().item() < 1e-4) == same
