"""`ctxext eval`: perplexity curves, passkey, needle in a haystack, needle-driven perplexity and the loss-law
fit, for every --scaling spec × --task × --lengths (× --depths), on one model load.

Writes DIR/results.json (flat records, rewritten after every finished cell), DIR/summary.md and PNG plots;
DIR/answers/ holds every passkey/niah trial (key, what greedy decoding answered, verdict) and the longqa answers.
--resume skips cells already in DIR/results.json. Before running it states the peak memory and time per cell,
and refuses a length that cannot fit in memory; each finished cell's wall time is kept beside that estimate
(results.json meta.timings, the Time table of summary.md).

examples:
  ctxext eval --model smollm2-135m --scaling default --scaling yarn:factor=2 \\
      --task ppl --task passkey --lengths 4096,8192,16384 --data ../shared/data/books/ --out runs/cmp
  ctxext eval --model tiny-rope --scaling linear:factor=4 --task niah --lengths 256,512,1024 \\
      --depths 0,0.25,0.5,0.75,1 --data ../shared/data/books/pg84.txt --out runs/niah
"""

from __future__ import annotations

import argparse

from ..errors import CtxextError
from . import out_folder


def _csv(kind: str):
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind}, got '{text}'")
        return items

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF directory, .gguf file, or built-in name (smollm2-135m, tiny-rope, …)")
    p.add_argument("--scaling", action="append", metavar="SPEC",
                   help="name:key=value,… or a ctxext JSON file; repeat to compare (default: default)")
    p.add_argument("--task", action="append", required=True, metavar="TASK",
                   help="ppl, passkey, niah, needle-ppl, stream-ppl, fit or longqa; repeat for several")
    p.add_argument("--lengths", required=True, type=_csv("token counts"), help="comma-separated, e.g. 4096,8192,16384")
    p.add_argument("--depths", type=_csv("fractions"), default=None,
                   help="needle depths in [0, 1] for passkey/niah (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--samples", type=int, default=None,
                   help="documents per length (ppl, default 4), trials per cell (passkey 5, niah 2, needle-ppl 5) or "
                        "examples (longqa 50); stream-ppl reads one stream")
    p.add_argument("--data", action="append", metavar="PATH", help="text file, folder or .jsonl; repeat for several")
    p.add_argument("--out", required=True, type=out_folder, help="folder for results.json, summary.md and plots")
    p.add_argument("--resume", action="store_true", help="continue a run in --out, skipping finished cells")
    p.add_argument("--protocol", default="window", choices=("window", "sliding", "both"),
                   help="ppl: one window of the first L tokens, a sliding window, or both (default window)")
    p.add_argument("--windows", type=int, default=None, metavar="W",
                   help="ppl, window protocol: average W consecutive L-token windows of each document (default 1: "
                        "its first L tokens); one long book then gives a curve of W samples")
    p.add_argument("--stride", type=int, default=None,
                   help="with --protocol sliding or both: sliding-window stride in tokens (default L/2)")
    p.add_argument("--bucket", type=int, default=None, help="ppl bucket width in tokens (default: longest length / 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of pass keys and needles (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="greedy decoding budget of an answer (passkey/niah/longqa; default 16)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="model dtype")
    p.add_argument("--device", default="auto", help="auto (the GPU when one is visible), cpu, cuda or cuda:<i>")
    p.add_argument("--no-prefix-reuse", action="store_true",
                   help="encode every needle prompt from scratch instead of sharing the haystack prefix (same results)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the cost estimate, run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


GIVEN = {"samples": None, "depths": None, "protocol": "window", "windows": None, "stride": None, "bucket": None,
         "max_new_tokens": None, "no_prefix_reuse": False}  # option -> its value when not given


def check_task_options(args: argparse.Namespace) -> None:
    """Refuse an option that no --task acts on (each task declares its own): it was accepted and did nothing
    (--depths not even parsed without passkey or niah)."""
    from ..evals.runner import resolve_tasks
    from ..evals.tasks import TASKS, task_names

    tasks = resolve_tasks(args.task)
    for dest, unset in GIVEN.items():
        if getattr(args, dest) != unset and not any(dest in t.options for t in tasks):
            users = [n for n in task_names() if dest in TASKS[n].options]
            asked = [t.name for t in tasks]
            raise CtxextError(f"--{dest.replace('_', '-')} acts only with --task {' or '.join(users)}; "
                              + (f"{asked[0]} does" if len(asked) == 1 else f"{', '.join(asked)} do")
                              + " not use it")


def run(args: argparse.Namespace) -> int:
    from ..evals import run_eval

    if args.stride is not None and args.protocol == "window":  # accepted and ignored before
        raise CtxextError("--stride acts only with --protocol sliding or both; add one or drop --stride")
    check_task_options(args)
    res = run_eval(args.model, args.scaling or ["default"], args.task, args.lengths, depths=args.depths,
                   samples=args.samples, data=args.data, out=args.out, resume=args.resume, seed=args.seed,
                   protocol=args.protocol, windows=args.windows, stride=args.stride, bucket=args.bucket,
                   reuse_prefix=not args.no_prefix_reuse,
                   max_new_tokens=16 if args.max_new_tokens is None else args.max_new_tokens, dtype=args.dtype, progress=not args.no_progress,
                   command=getattr(args, "command_line", None), dry_run=args.dry_run,
                   device=args.device)
    if not args.dry_run:
        print(f"wrote {args.out}/results.json ({len(res['records'])} records), {args.out}/summary.md")
    return 0
