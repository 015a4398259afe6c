"""ctxext.data: text files, folders and JSONL become token streams, cached per tokenizer; bad data fails clearly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ctxext.data import (Document, cache_root, data_files, documents_at_least, load_documents, read_texts,
                         strip_gutenberg, tokenizer_fingerprint)
from ctxext.errors import CtxextError


def byte_tokenizer(reverse: bool = False):
    """A real fast tokenizer with one token per byte: no files, no training (`reverse`: other ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet(), reverse=reverse))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


class Counting:
    """Wraps a tokenizer and counts encode calls (to see the cache work)."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0
        self.backend_tokenizer = tok.backend_tokenizer

    def __call__(self, text, **kw):
        self.calls += 1
        return self.tok(text, **kw)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXEXT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("\ufeffHeader junk\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nBody text.\n"
                                "*** END OF THE PROJECT GUTENBERG EBOOK X ***\nLicence.")
    (root / "sub" / "b.md").write_text("Markdown doc")
    (root / "sub" / "c.jsonl").write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps("second") + "\n"
                                          + json.dumps({"text": ""}) + "\n")
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    return root


def test_cache_root_follows_env(cache_dir, monkeypatch):
    assert cache_root() == cache_dir
    monkeypatch.delenv("CTXEXT_CACHE")
    assert cache_root() == cache_dir.home() / ".cache" / "ctxext"


def test_gutenberg_header_and_licence_are_stripped():
    text = "junk\r\n*** START OF THE PROJECT GUTENBERG EBOOK FOO ***\r\nHello.\r\n*** END OF THE PROJECT GUTENBERG EBOOK"
    assert strip_gutenberg(text) == "Hello.\n"
    assert strip_gutenberg("plain text") == "plain text"


def test_folders_files_and_jsonl(corpus):
    files = data_files([corpus])
    assert [f.name for f in files] == ["a.txt", "b.md", "c.jsonl"]  # sorted, recursive, .bin ignored
    docs = read_texts([corpus])
    assert [t for _, t in docs] == ["Body text.\n", "Markdown doc", "first", "second"]  # empty JSONL text skipped
    assert docs[2][0].endswith("c.jsonl:1") and docs[3][0].endswith("c.jsonl:3")


def test_token_streams_match_the_tokenizer_and_are_cached(corpus, cache_dir):
    tok = Counting(byte_tokenizer())
    docs = load_documents([corpus], tok)
    assert [d.name.rsplit("/", 1)[-1] for d in docs] == ["a.txt", "b.md", "c.jsonl:1", "c.jsonl:3"]
    assert all(isinstance(d, Document) and d.tokens.dtype == np.int32 for d in docs)
    assert docs[1].tokens.tolist() == tok.tok("Markdown doc", add_special_tokens=False)["input_ids"]
    assert tok.calls == 4
    fp = tokenizer_fingerprint(tok)
    assert len(list((cache_dir / "tokens" / fp).glob("*.npz"))) == 3  # one cache file per data file
    again = load_documents([corpus], tok)
    assert tok.calls == 4  # all from the cache
    assert [d.name for d in again] == [d.name for d in docs]
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(again, docs))


def test_cache_follows_file_changes_and_tokenizer(corpus, cache_dir):
    tok = Counting(byte_tokenizer())
    load_documents([corpus / "sub" / "b.md"], tok)
    f = corpus / "sub" / "b.md"
    f.write_text("Changed, and longer")
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    (d,) = load_documents([f], tok)
    assert tok.calls == 2 and len(d) == len("Changed, and longer")
    other = byte_tokenizer(reverse=True)  # another vocabulary: another cache folder
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)
    (d2,) = load_documents([f], other)
    assert d2.tokens.tolist() == other("Changed, and longer", add_special_tokens=False)["input_ids"] != d.tokens.tolist()


def test_documents_at_least():
    docs = [Document("a", np.zeros(10, np.int32)), Document("b", np.zeros(3, np.int32))]
    long, short = documents_at_least(docs, 5)
    assert [d.name for d in long] == ["a"] and [d.name for d in short] == ["b"]


@pytest.mark.parametrize("setup, match", [
    (lambda p: [], "no data given"),
    (lambda p: [p / "missing.txt"], "data path not found: .*missing.txt"),
    (lambda p: [p / "empty_dir"], "holds no .txt"),
    (lambda p: [p / "empty.txt"], "every document is empty"),
    (lambda p: [p / "bad.jsonl"], r"bad.jsonl:2 is not valid JSON"),
    (lambda p: [p / "nofield.jsonl"], r"nofield.jsonl:1 has no string field 'text'"),
    (lambda p: [p / "latin1.jsonl"], r"latin1.jsonl:2 is not UTF-8 \(byte 0xe9\); JSONL files are UTF-8"),
    (lambda p: [p / "book.txt.gz"], r"book.txt.gz is not a text file \(it holds NUL bytes"),
    (lambda p: [p / "docs.json"], r"docs.json: --data reads text files and .jsonl .*not .json"),
])
def test_bad_data_fails_clearly(tmp_path, setup, match):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')  # a traceback before
    import gzip

    (tmp_path / "book.txt.gz").write_bytes(gzip.compress(b"A book. " * 100))  # was scored as text (ppl 445)
    (tmp_path / "docs.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}]))  # was one raw-JSON document
    with pytest.raises(CtxextError, match=match):
        load_documents(setup(tmp_path), byte_tokenizer())
    with pytest.raises(CtxextError, match=match):
        read_texts(setup(tmp_path))


def test_a_folder_leaves_out_what_ctxext_wrote_and_each_file_counts_once(tmp_path, capsys):
    """An eval's summary.md under the --data folder was scored as a book (ppl 41.8 -> 186.3 with n 1 -> 2); a
    model card README.md and a synth-qa log likewise; a file given twice (or with its folder) counted twice."""
    root = tmp_path / "corpus"
    (root / "run1").mkdir(parents=True)
    (root / "book.txt").write_text("A book.")
    (root / "run1" / "results.json").write_text("{}")
    (root / "run1" / "summary.md").write_text("# ctxext eval")
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")
    (root / "model" / "README.md").write_text("model card")
    (root / "qa.jsonl").write_text(json.dumps({"text": "kept: train --instruct reads it"}) + "\n")
    (root / "qa.log.jsonl").write_text("{}\n")
    got = data_files([root])
    assert [f.name for f in got] == ["book.txt", "qa.jsonl"]
    assert "left out 3 file(s) ctxext wrote" in capsys.readouterr().err
    again = data_files([root / "book.txt", root, str(root / "book.txt")])
    assert [f.name for f in again] == ["book.txt", "qa.jsonl"] and again[0] == root / "book.txt"
    assert "2 file(s) given more than once are read once" in capsys.readouterr().err


def test_names_follow_this_runs_spelling_and_an_unwritable_cache_is_no_error(tmp_path, monkeypatch, capsys):
    book = tmp_path / "sub" / "book.txt"
    book.parent.mkdir()
    book.write_text("Some words here.")
    qa = tmp_path / "sub" / "d.jsonl"
    qa.write_text(json.dumps({"text": "x"}) + "\n" + json.dumps({"text": "y"}) + "\n")
    tok = byte_tokenizer()
    assert [d.name for d in load_documents([book, qa], tok)] == [str(book), f"{qa}:1", f"{qa}:2"]
    monkeypatch.chdir(tmp_path)  # the cached names were the first run's spelling
    assert [d.name for d in load_documents(["sub/book.txt", "sub/d.jsonl"], tok)] == \
        ["sub/book.txt", "sub/d.jsonl:1", "sub/d.jsonl:2"]
    monkeypatch.setenv("CTXEXT_CACHE", "/proc/no_cache_here")  # a traceback after tokenizing
    docs = load_documents([book], tok)
    assert len(docs) == 1 and "cannot write the token cache" in capsys.readouterr().err
