"""Acceptance checks on a generated question-answer pair, pure functions of text.

An answer is *supported* by its chunk when every content word of it (SQuAD-normalised tokens, `qa_metrics.tokens`,
minus a fixed list of English function words) occurs as a token of the normalised chunk. This is strict on
purpose: a 135M generator paraphrases, hallucinates and copies its few-shot examples, and an exact word match is
the one test that cannot be fooled by fluent text.
"""

from __future__ import annotations

import re

from ..evals.qa_metrics import normalize, tokens

# English function words (articles are already removed by the normalisation); content words are the rest.
STOPWORDS = frozenset("""
i me my myself we us our ours ourselves you your yours yourself yourselves he him his himself she her hers herself
it its itself they them their theirs themselves what which who whom whose this that these those am is are was were
be been being have has had having do does did doing will would shall should can could may might must ought
and but if or because as until while of at by for with about against between into through during before after
above below to from up down in out on off over under again further then once here there when where why how all
any both each few more most other some such no nor not only own same so than too very just also s t don now
one ones upon unto shall yes oh said say says
""".split())

MIN_QUESTION_WORDS, MAX_QUESTION_WORDS = 3, 30


def content_words(text: str) -> list[str]:
    """Normalised tokens of `text` that are not function words, in order (repeats kept)."""
    return [w for w in tokens(text) if w not in STOPWORDS]


def missing_words(answer: str, chunk: str) -> list[str]:
    """Content words of `answer` that do not occur in `chunk` (empty list: supported)."""
    have = set(tokens(chunk))
    return [w for w in dict.fromkeys(content_words(answer)) if w not in have]


def supported(answer: str, chunk: str) -> bool:
    """The acceptance check: the answer has content words and every one of them occurs in the chunk."""
    return bool(content_words(answer)) and not missing_words(answer, chunk)


def question_problem(question: str) -> str | None:
    """Why a generated question is unusable, or None: it must end with '?', have 3-30 words and not loop."""
    words = question.split()
    if not question.endswith("?"):
        return "no question mark"
    if not MIN_QUESTION_WORDS <= len(words) <= MAX_QUESTION_WORDS:
        return f"{len(words)} words"
    if re.search(r"\b(\w+(?:\s+\w+){0,3})\s+\1\s+\1\b", question.lower()):
        return "repeats itself"
    if not content_words(question):
        return "no content words"
    return None


def answer_in_question(answer: str, question: str) -> bool:
    """Does the answer only repeat the question ('Who was Sir William?' -> 'Sir William')?"""
    a = set(content_words(answer))
    return bool(a) and a <= set(content_words(question))


def same_question(a: str, b: str) -> bool:
    return normalize(a) == normalize(b)
