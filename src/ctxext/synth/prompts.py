"""The generator's prompts: few-shot completions (two worked examples, then the chunk), one per step —
question, short answer, long answer — and a yes/no verification with four labelled examples (two yes, two no,
ending on yes so the last label does not bias towards no).

Why plain completion and not the chat template by default: on SmolLM2-135M-Instruct the chat-template version
of the question prompt mostly copied the worked example or chatted ("What's the text you'd like me to help
with?"); the plain few-shot completion gave a question about the chunk for most chunks. `chat=True` wraps every
prompt in the tokenizer's chat template instead.
"""

from __future__ import annotations

from typing import Any

EXAMPLES = (
    ("Tom walked to the old market in Paris and bought three red apples for his sister Anna.",
     "What did Tom buy for his sister?", "three red apples",
     "Tom bought three red apples for his sister Anna."),
    ("The ship left the harbour at dawn. Captain Reed stood on the deck and watched the storm clouds in the north.",
     "Who stood on the deck?", "Captain Reed",
     "Captain Reed stood on the deck and watched the storm clouds."),
    ("Margaret had lived in the grey stone cottage for forty years, and every morning she fed the hens before "
     "breakfast.", "How long had Margaret lived in the cottage?", "forty years",
     "Margaret had lived in the grey stone cottage for forty years."),
    ("\u201cI shall not dance tonight,\u201d said Henry coldly, and he left the ballroom before the music began.",
     "What did Henry say he would not do?", "dance tonight",
     "Henry said coldly that he would not dance tonight."),
)
N_VARIANTS = len(EXAMPLES)  # try t of a chunk uses worked examples t and t+1 (mod N_VARIANTS)
VERIFY_EXAMPLES = (  # (text, question, answer, label)
    (EXAMPLES[0][0], "Where did Tom walk?", "to London", "no"),
    (EXAMPLES[0][0], EXAMPLES[0][1], EXAMPLES[0][2], "yes"),
    (EXAMPLES[1][0], EXAMPLES[1][1], "the storm clouds", "no"),
    (EXAMPLES[1][0], "When did the ship leave the harbour?", "at dawn", "yes"),
)
CONTENT_FREE = "N/A"  # the calibration input (Zhao et al. 2021, https://arxiv.org/abs/2102.09690)


def _shots(upto: int, variant: int = 0) -> str:
    """Two worked examples (variant v: examples v and v+1) up to the question (0), the short answer (1) or the
    long answer (2). Variant 0 is the original pair."""
    out = []
    for text, q, short, long in (EXAMPLES[variant % N_VARIANTS], EXAMPLES[(variant + 1) % N_VARIANTS]):
        lines = [f"Text: {text}", f"Question: {q}"]
        if upto >= 1:
            lines.append(f"Short answer: {short}")
        if upto >= 2:
            lines.append(f"Long answer: {long}")
        out.append("\n".join(lines) + "\n\n")
    return "".join(out)


def question_prompt(chunk: str, variant: int = 0) -> str:
    return _shots(0, variant) + f"Text: {chunk}\nQuestion:"


def short_prompt(chunk: str, question: str, variant: int = 0) -> str:
    return _shots(1, variant) + f"Text: {chunk}\nQuestion: {question}\nShort answer:"


def long_prompt(chunk: str, question: str, short: str, variant: int = 0) -> str:
    return _shots(2, variant) + f"Text: {chunk}\nQuestion: {question}\nShort answer: {short}\nLong answer:"


def verify_prompt(chunk: str, question: str, answer: str) -> str:
    shots = "".join(f"Text: {t}\nQuestion: {q}\nAnswer: {a}\nCorrect: {c}\n\n" for t, q, a, c in VERIFY_EXAMPLES)
    return shots + f"Text: {chunk}\nQuestion: {question}\nAnswer: {answer}\nCorrect:"


def wrap(tokenizer: Any, prompt: str, chat: bool) -> str:
    """The text fed to the model: the chat template around the prompt (when asked for and the tokenizer has one),
    else BOS + the prompt."""
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
    return (tokenizer.bos_token or "") + prompt
