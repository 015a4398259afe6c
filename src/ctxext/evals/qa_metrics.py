"""Question-answering scores: SQuAD-style normalisation, exact match, token F1 and ROUGE-L, each the maximum
over the gold answers.

Normalisation follows the SQuAD v1.1/v2.0 evaluation script (Rajpurkar et al. 2016, https://arxiv.org/abs/1606.05250):
lowercase -> remove punctuation -> remove the articles a / an / the -> collapse whitespace. Punctuation here is
ASCII `string.punctuation` plus every Unicode punctuation character (category P*: curly quotes, dashes), which
book text is full of. Token F1 is the harmonic mean of precision and recall of the multiset of normalised tokens;
when either side has no tokens, F1 is 1 if both are empty and 0 otherwise (the SQuAD v2 convention).

ROUGE-L (Lin 2004, https://aclanthology.org/W04-1013/) on the same normalised tokens: with LCS the length of the
longest common subsequence, P = LCS/|pred|, R = LCS/|gold|, F = 2PR/(P+R) (the β = 1 F-measure, as the
`rouge-score` package reports). Empty sides follow the F1 convention.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = frozenset(string.punctuation)


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop a/an/the, single spaces."""
    text = "".join(ch for ch in text.lower() if not _is_punct(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def exact_match(pred: str, gold: str) -> float:
    return float(normalize(pred) == normalize(gold))


def _empty_rule(p: list[str], g: list[str]) -> float | None:
    """Score when a side is empty (1 if both are, else 0); None when both have tokens."""
    if not p or not g:
        return float(p == g)
    return None


def token_f1(pred: str, gold: str) -> float:
    p, g = tokens(pred), tokens(gold)
    empty = _empty_rule(p, g)
    if empty is not None:
        return empty
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence of two token lists (O(|a|·|b|) dynamic programme, one row kept)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            keep = row[j]
            row[j] = prev_diag + 1 if x == y else max(row[j], row[j - 1])
            prev_diag = keep
    return row[-1]


def rouge_l(pred: str, gold: str) -> float:
    p, g = tokens(pred), tokens(gold)
    empty = _empty_rule(p, g)
    if empty is not None:
        return empty
    lcs = lcs_length(p, g)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(g)
    return 2 * precision * recall / (precision + recall)


def _golds(golds: str | Iterable[str]) -> list[str]:
    out = [golds] if isinstance(golds, str) else list(golds)
    if not out:
        raise ValueError("no gold answer to score against")
    return out


def best(metric, pred: str, golds: str | Iterable[str]) -> float:
    """max over the gold answers of metric(pred, gold)."""
    return max(metric(pred, g) for g in _golds(golds))


def score(pred: str, golds: str | Iterable[str]) -> dict[str, float]:
    """{'em', 'f1', 'rougeL'} of one prediction, each the maximum over the gold answers."""
    golds = _golds(golds)
    return {"em": best(exact_match, pred, golds), "f1": best(token_f1, pred, golds),
            "rougeL": best(rouge_l, pred, golds)}


METRICS = ("em", "f1", "rougeL")
