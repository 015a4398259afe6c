"""`ctxext search`: LongRoPE2-style evolutionary search of per-pair RoPE rescale factors for a target length.

Seeds from PI, NTK, YaRN and LongRoPE2 (NTK-like pairs below the critical pair, s from it on). By default the pairs
below the critical pair are searched freely in [1, 2s] (the real critical dimension is found by the search, as in
LongRoPE; --fixed-critical pins them to LongRoPE2's s^(i/c)), pairs at or above it in [s, 2s]; non-decreasing
factors on a 0.01 grid. Children are scored on cheap proxies (half the length, or midway between window and target
when half is not past the window; half the samples) first and only the promising ones at full cost (successive
halving). Cost is counted in full-length-evaluation equivalents.

Writes DIR/best.json (a longrope spec: `--scaling DIR/best.json`, `ctxext export`), DIR/history.jsonl (every
evaluation), DIR/results.json, DIR/summary.md, DIR/factors.png and DIR/fitness_vs_cost.png, and the state --resume
reads (search.json, guard.json, references.json). --resume continues an interrupted search in DIR without evaluating
anything again, and ends where an uninterrupted run would; on a finished search it evaluates nothing.

examples:
  ctxext search --model tiny-rope --target 1024 --data ../shared/data/books/pg1342.txt --data ../shared/data/books/pg2701.txt --out runs/s
  ctxext search --model smollm2-135m --target 16384 --data ../shared/data/books/pg1342.txt --budget 40 --out runs/smol --resume
"""

from __future__ import annotations

import argparse

from . import out_folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF directory, .gguf file, or built-in name (smollm2-135m, tiny-rope, …)")
    p.add_argument("--target", required=True, type=int, help="target context length in tokens (> the trained window)")
    p.add_argument("--data", action="append", required=True, metavar="PATH",
                   help="text file, folder or .jsonl the fitness is measured on; repeat for several")
    p.add_argument("--out", required=True, type=out_folder, help="folder for best.json, history.jsonl, summary.md and plots")
    p.add_argument("--fitness", default="needle-ppl", choices=("needle-ppl", "ppl", "both"),
                   help="needle-driven perplexity (LongRoPE2, default), plain perplexity at the target, or both: "
                        "max of the two relative to yarn:factor=s (< 1: better than YaRN on both)")
    p.add_argument("--budget", type=float, default=130.0,
                   help="search budget in full-length-evaluation equivalents (default 130)")
    p.add_argument("--population", type=int, default=16, help="population size (default 16)")
    p.add_argument("--samples", type=int, default=10,
                   help="needle trials or ppl passages of one full evaluation (default 10)")
    p.add_argument("--rung", action="append", default=None, metavar="LENGTH:SAMPLES",
                   help="successive-halving rungs, cheapest first, the last = TARGET:SAMPLES "
                        "(default: TARGET/2:SAMPLES/2 then TARGET:SAMPLES; for TARGET <= 2x the window the proxy "
                        "sits midway between window and target)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search and of the needles (default 0)")
    p.add_argument("--fixed-critical", action="store_true",
                   help="pin the pairs below the theoretical critical pair to NTK-like factors (do not search it)")
    p.add_argument("--search-attention", action="store_true",
                   help="also search the attention factor (default: LongRoPE's sqrt(1 + ln s / ln L))")
    p.add_argument("--start-tokens", action="store_true",
                   help="also search n̂ start tokens that keep the original RoPE (such a result cannot be exported)")
    p.add_argument("--short-tolerance", type=float, default=0.01,
                   help="in-window guard: cap the attention factor so that perplexity inside the original window "
                        "stays within this fraction of the model as trained (default 0.01; -1: no guard)")
    p.add_argument("--device", default="auto", help="auto (the GPU when one is visible), cpu, cuda or cuda:<i>")
    p.add_argument("--resume", action="store_true", help="continue the search in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _rungs(items: list[str] | None) -> list[tuple[int, int]]:
    from ..errors import CtxextError

    out = []
    for item in items or []:
        a, sep, b = item.partition(":")
        try:
            out.append((int(a), int(b)))
        except ValueError:
            raise CtxextError(f"--rung '{item}' is not LENGTH:SAMPLES (two integers)") from None
        if not sep:
            raise CtxextError(f"--rung '{item}' is not LENGTH:SAMPLES")
    return out


def run(args: argparse.Namespace) -> int:
    from ..search import config_from, run_search

    cfg = config_from(args.target, fitness=args.fitness, budget=args.budget, population=args.population,
                      samples=args.samples, seed=args.seed, rungs=_rungs(args.rung),
                      search_critical=not args.fixed_critical, search_attention=args.search_attention,
                      start_tokens=args.start_tokens,
                      short_tolerance=None if args.short_tolerance == -1 else args.short_tolerance)
    res = run_search(args.model, args.data, args.out, cfg, resume=args.resume, progress=not args.no_progress,
                     command=getattr(args, "command_line", None), device=args.device)
    print(f"wrote {args.out}/best.json ({args.fitness} {res['best']['fitness']:.6g}, cost {res['spent']:.2f} "
          f"full-length evaluations), {args.out}/summary.md")
    return 0
