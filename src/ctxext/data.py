"""Text files, folders and JSONL -> token streams, cached per tokenizer.

A *document* is one text file, or one line of a JSONL file (its ``text`` field, or the line itself when it is
a JSON string). Folders are read recursively (``.txt``, ``.md``, ``.text``, ``.jsonl``), in sorted order.
Project Gutenberg headers and licences are stripped. Token ids are cached under
``<cache root>/tokens/<tokenizer fingerprint>/`` (cache root: env ``CTXEXT_CACHE``, else ``~/.cache/ctxext``),
keyed by each file's path, size and modification time, so a second run does not tokenize again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import CtxextError

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl",)


@dataclass(frozen=True)
class Document:
    """One document: where it came from (``path`` or ``path:line``) and its token ids (int32)."""

    name: str
    tokens: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def cache_root() -> Path:
    """$CTXEXT_CACHE, else ~/.cache/ctxext (created on first use by the writers)."""
    env = os.environ.get("CTXEXT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ctxext"


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg book (header and licence removed); other text unchanged."""
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    start = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n", text)
    end = re.search(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", text)
    if not start and not end:
        return text
    return text[start.end() if start else 0: end.start() if end else len(text)].strip() + "\n"


# a folder holding one of these is a ctxext output (eval, train, search, export) or a model: its summary.md or model
# card README.md is no data
OUTPUT_MARKERS = ("results.json", "config.json", "history.jsonl")


def ctxext_output(f: Path, marked: set[Path]) -> bool:
    """Whether `f` is something ctxext (or a model folder) wrote: inside a run or model folder (`marked`: the
    subfolders of the --data folder that hold an OUTPUT_MARKERS file), or a synth-qa log (X.log.jsonl; its X.jsonl
    is data for train --instruct)."""
    return f.name.endswith(".log.jsonl") or any(d in marked for d in f.parents)


def _check_text_file(f: Path) -> None:
    """A --data file (named, or found in a folder) must be text: a .json array or a compressed book was read as one
    raw document, a UTF-16 .txt as replacement characters."""
    if f.suffix.lower() == ".json":
        raise CtxextError(f"{f}: --data reads text files and .jsonl (one JSON object per line), not .json; "
                          "write one document per line as .jsonl")
    try:
        with f.open("rb") as fh:
            head = fh.read(8192)
    except OSError as e:
        raise CtxextError(f"cannot read data file {f}: {e.strerror}") from None
    if b"\0" in head:
        raise CtxextError(f"{f} is not a text file (it holds NUL bytes: compressed or binary?); give plain text "
                          "or .jsonl")


_SAID: set[str] = set()


def _say_once(message: str) -> None:
    """A note on stderr, once per process (a command reads its --data files more than once)."""
    if message not in _SAID:
        _SAID.add(message)
        print(message, file=sys.stderr)


def data_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files behind --data arguments (files as given, folders expanded, ctxext's own outputs under a folder
    left out and said so); each file once; errors name the bad path."""
    paths = [Path(p).expanduser() for p in paths]
    if not paths:
        raise CtxextError("no data given; pass --data with text files, folders or .jsonl files")
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            entries = [f for f in p.rglob("*") if f.is_file()]  # one walk: the markers and the data alike
            marked = {f.parent for f in entries if f.name in OUTPUT_MARKERS and f.parent != p}
            found = sorted(f for f in entries if f.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES)
            own = [f for f in found if ctxext_output(f, marked)]
            if own:
                _say_once(f"data: {p}: left out {len(own)} file(s) ctxext wrote (run outputs, model cards, synth-qa "
                          f"logs), e.g. {own[0]}")
            left = set(own)
            found = [f for f in found if f not in left]
            if not found:
                raise CtxextError(f"data folder {p} holds no {', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} files")
            for f in found:  # a UTF-16 or binary .txt in a folder was decoded with replacements and averaged in
                _check_text_file(f)
            files += found
        elif p.is_file():
            _check_text_file(p)
            files.append(p)
        else:
            raise CtxextError(f"data path not found: {p}")
    unique, seen, twice = [], set(), []
    for f in files:  # a file given twice (or with its folder) counted twice in every average
        if f.resolve() in seen:
            twice.append(f)
        else:
            seen.add(f.resolve())
            unique.append(f)
    if twice:
        _say_once(f"data: {len(twice)} file(s) given more than once are read once, e.g. {twice[0]}")
    return unique


def read_utf8(path: str | Path) -> str:
    """A JSONL file's text; bytes that are not UTF-8 (JSON's encoding) fail in one line naming file:line."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise CtxextError(f"{path}:{line} is not UTF-8 (byte 0x{raw[e.start]:02x}); JSONL files are UTF-8") from None


def jsonl_lines(path: str | Path) -> list[str]:
    """A JSONL file's lines, split at newlines only: str.splitlines also splits at U+2028, U+2029 and U+0085,
    which JSON allows unescaped inside strings (and synth-qa writes them so)."""
    return [line.rstrip("\r") for line in read_utf8(path).split("\n")]


def _jsonl_texts(path: Path, field: str) -> list[tuple[str, str]]:
    out = []
    for i, line in enumerate(jsonl_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj: Any = json.loads(line)
        except json.JSONDecodeError as e:
            raise CtxextError(f"{path}:{i} is not valid JSON ({e.msg})") from None
        text = obj if isinstance(obj, str) else obj.get(field) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise CtxextError(f"{path}:{i} has no string field '{field}'")
        if text.strip():
            out.append((f"{path}:{i}", text))
    return out


def read_texts(paths: Iterable[str | Path], field: str = "text") -> list[tuple[str, str]]:
    """(name, text) for every non-empty document; an error when there is none."""
    docs: list[tuple[str, str]] = []
    for f in data_files(paths):
        if f.suffix.lower() in JSONL_SUFFIXES:
            docs += _jsonl_texts(f, field)
        else:
            try:
                text = strip_gutenberg(f.read_text(encoding="utf-8", errors="replace"))
            except OSError as e:
                raise CtxextError(f"cannot read data file {f}: {e.strerror}") from None
            if text.strip():
                docs.append((str(f), text))
    if not docs:
        raise CtxextError(f"no text in the data given ({', '.join(str(p) for p in paths)}): every document is empty")
    return docs


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Short hash that changes when the tokenizer's vocabulary or pipeline changes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:  # slow tokenizers: the vocabulary decides
        blob = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_key(path: Path, field: str) -> str:
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{field}|v1"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def _encode(tokenizer: Any, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32)


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_documents(paths: Iterable[str | Path], tokenizer: Any, field: str = "text",
                   cache: bool = True) -> list[Document]:
    """Token streams of every document under `paths` (files, folders, JSONL), in a stable order."""
    paths = list(paths)
    fp = tokenizer_fingerprint(tokenizer) if cache else ""
    docs: list[Document] = []
    for f in data_files(paths):
        cpath = cache_root() / "tokens" / fp / f"{_file_key(f, field)}.npz" if cache else None
        if cpath is not None and cpath.is_file():
            try:
                with np.load(cpath) as z:
                    names, offsets, ids = list(z["names"]), z["offsets"], z["ids"]
                # names as this run spells the path (the cache is keyed by the resolved one): 'path' or 'path:line'
                names = [str(f) + (":" + str(n).rsplit(":", 1)[1] if f.suffix.lower() in JSONL_SUFFIXES else "")
                         for n in names]
                docs += [Document(n, ids[offsets[i]:offsets[i + 1]]) for i, n in enumerate(names)]
                continue
            except (OSError, KeyError, ValueError):
                pass  # unreadable cache entry: tokenize again
        texts = _jsonl_texts(f, field) if f.suffix.lower() in JSONL_SUFFIXES else \
            [(str(f), strip_gutenberg(f.read_text(encoding="utf-8", errors="replace")))]
        encoded = [(n, _encode(tokenizer, t)) for n, t in texts if t.strip()]
        if cpath is not None:
            offsets = np.cumsum([0] + [len(t) for _, t in encoded]).astype(np.int64)
            ids = np.concatenate([t for _, t in encoded]) if encoded else np.zeros(0, np.int32)
            try:
                _write_npz(cpath, names=np.asarray([n for n, _ in encoded], dtype=str), offsets=offsets, ids=ids)
            except OSError as e:  # a read-only home on a cluster node: carry on uncached
                print(f"data: cannot write the token cache under {cache_root()} ({e.strerror}); set CTXEXT_CACHE "
                      "to a writable folder to keep tokenized text between runs", file=sys.stderr)
                cache = False
        docs += [Document(n, t) for n, t in encoded]
    if not docs:
        raise CtxextError(f"no text in the data given ({', '.join(str(p) for p in paths)}): every document is empty")
    return docs


def special_prefix(tokenizer: Any) -> np.ndarray:
    """The tokens the tokenizer puts before any text: BOS for Llama-style tokenizers, nothing for GPT-2 style
    (SmolLM2, the fixtures). Models trained with BOS at position 0 score text without it much worse (and use it
    as their attention sink), so every place that starts a sequence puts these first."""
    return np.asarray(tokenizer("", add_special_tokens=True)["input_ids"], dtype=np.int64)


def lead(prefix: np.ndarray, tokens: np.ndarray, length: int | None = None) -> np.ndarray:
    """`prefix` then `tokens`, cut to `length` tokens (int64); `tokens` itself when the prefix is empty."""
    out = np.concatenate([prefix, np.asarray(tokens, dtype=np.int64)]) if len(prefix) else tokens
    return out if length is None else out[:length]


def windows_of(tokens: np.ndarray, prefix: np.ndarray, length: int, count: int) -> list[np.ndarray]:
    """Up to `count` consecutive windows of `length` tokens of `tokens` (as many as it holds whole), each led by
    `prefix` (the tokenizer's start tokens): the window w is prefix + tokens[w*n : (w+1)*n], n = length - |prefix|."""
    n = length - len(prefix)
    return [lead(prefix, tokens[w * n:(w + 1) * n]) for w in range(min(count, len(tokens) // n))]


def documents_at_least(docs: list[Document], n_tokens: int) -> tuple[list[Document], list[Document]]:
    """(documents with >= n_tokens tokens, the ones too short) — callers say which were skipped."""
    long = [d for d in docs if len(d) >= n_tokens]
    return long, [d for d in docs if len(d) < n_tokens]


def files_key(files: Iterable[Path]) -> list[list]:
    """[resolved path, size] per data file: what a resume compares (a book added, removed or rewritten)."""
    return [[str(Path(f).resolve()), Path(f).stat().st_size] for f in files]


def files_change(old: list, new: list) -> str:
    """How two [path, size] lists of data files differ, in a few words (for a refused resume)."""
    a, b = {tuple(x) for x in old}, {tuple(x) for x in new}
    gone, came = sorted(p for p, _ in a - b), sorted(p for p, _ in b - a)
    parts = [f"{len(came)} new or changed (e.g. {came[0]})"] if came else []
    parts += [f"{len(gone)} gone or changed (e.g. {gone[0]})"] if gone else []
    return ", ".join(parts) or "the same files in another order (documents are taken in order)"


def document_count(files: Iterable[Path], enough: int | None = None) -> int:
    """How many documents `files` hold at most, without tokenizing: one per text file, one per non-blank JSONL line
    (a line whose text is empty is dropped when read). Stops reading once `enough` are found (a large corpus is
    read again when loaded)."""
    n = 0
    for f in files:
        n += sum(1 for line in jsonl_lines(f) if line.strip()) if f.suffix.lower() in JSONL_SUFFIXES else 1
        if enough is not None and n >= enough:
            break
    return n
