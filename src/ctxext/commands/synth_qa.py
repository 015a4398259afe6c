"""`ctxext synth-qa`: synthetic long-document QA examples (the LLaMA 2 Long recipe) written by an instruct model.

For each document of --data with at least --min-len tokens, --per-doc random chunks (whole sentences, seeded)
(pairwise non-overlapping) inside its first --max-len tokens after the front matter (--skip-front) get a question, a short answer and a long answer from the model; a pair is
kept when every content word of both answers occurs in the chunk and the model's calibrated yes/no verdict is
yes. Each kept example's context is the document (after the skipped front) truncated to --max-len minus 128 tokens (room for the question
and answer); `ctxext eval --task longqa --data OUT` reads the file as it is.

Writes OUT (NAME.jsonl, appended), NAME.log.jsonl (every chunk, with its rejection reason) and NAME.summary.json
(counts by reason) beside it (--out runs/qa.jsonl: runs/qa.log.jsonl, runs/qa.summary.json). --resume continues an interrupted run with the same settings.

examples:
  ctxext synth-qa --model smollm2-135m --data ../shared/data/books/pg1513.txt --out runs/qa.jsonl --per-doc 60 --max-len 2048
  ctxext eval --model smollm2-135m --task longqa --data runs/qa.jsonl --lengths 2048 --out runs/qa-eval
"""

from __future__ import annotations

import argparse

from . import out_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="instruct model: HF directory, .gguf or built-in name "
                   "(default smollm2-135m = SmolLM2-135M-Instruct)")
    p.add_argument("--data", action="append", required=True, metavar="PATH",
                   help="text file, folder or .jsonl ('text' field) of long documents; repeat for several")
    p.add_argument("--out", required=True, type=out_file, help="output .jsonl file")
    p.add_argument("--per-doc", type=int, default=8, help="chunks tried per document (default 8)")
    p.add_argument("--min-len", type=int, default=1024, help="skip documents shorter than this many tokens (1024)")
    p.add_argument("--max-len", type=int, default=4096,
                   help="target example length in tokens: context = the document's first max-len - 128 (4096)")
    p.add_argument("--contexts", type=int, default=1, metavar="K",
                   help="contexts per document: a long document gives up to K consecutive contexts of --max-len - 128 "
                   "tokens, each with --per-doc chunks (default 1: only its first)")
    p.add_argument("--chunk-tokens", type=int, default=80, help="longest chunk in tokens (whole sentences; 80)")
    p.add_argument("--seed", type=int, default=0, help="seed of the chunk choice (default 0)")
    p.add_argument("--skip-front", default="auto", metavar="auto|none|N",
                   help="front matter skipped before the context: 'auto' (default) starts at the last line-start "
                   "'Chapter 1/I/One' heading in the document's first quarter (after a table of contents; nothing "
                   "skipped when there is none), 'none', or N tokens. The Gutenberg header is always removed")
    p.add_argument("--tries", type=int, default=1,
                   help="attempts per chunk, each with another pair of worked examples in the prompts; the first "
                   "pair passing every check is kept (same checks for every try; default 1)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template "
                   "(plain few-shot completion by default: better questions from SmolLM2-135M)")
    p.add_argument("--resume", action="store_true", help="continue a run into --out, skipping processed chunks")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..synth import SynthSettings, synthesize

    s = SynthSettings(model=args.model, per_doc=args.per_doc, min_len=args.min_len, max_len=args.max_len,
                      chunk_tokens=args.chunk_tokens, seed=args.seed, chat=args.chat,
                      skip_front=args.skip_front, tries=args.tries, contexts=args.contexts)
    res = synthesize(args.data, args.out, s, resume=args.resume, progress=not args.no_progress)
    print(f"wrote {res['kept']} examples to {args.out}; summary {res['out'].removesuffix('.jsonl')}.summary.json")
    return 0
