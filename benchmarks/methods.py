"""Every scaling method on SmolLM2-135M at 2x its window (16k; --factor 4 or 8 for 32k / 64k) on held-out book
text: perplexity per 2k bucket, passkey accuracy by depth, and a needle-in-a-haystack heatmap (lengths x depths)
for a few methods, through `ctxext eval` (one model load per task, resumable).

    python benchmarks/methods.py [--quick] [--tasks ppl,passkey,niah] [--out benchmarks/results/methods]
    python benchmarks/methods.py --factor 4 --tasks ppl   # 32k perplexity: ~7 min per method on 2 CPU cores
    python benchmarks/methods.py --factor 8 --tasks ppl --specs 'yarn:factor=8;streaming:sinks=4,window=2044'
                                                           # some specs only (streaming: its stream-ppl)
    python benchmarks/methods.py --tasks niah --seed 1    # more needle trials (other keys), pooled per cell
                                                           # with every other seed into benchmarks/results/methods_niah

Full: every method below at 16 384 tokens (one ~2-minute 16k forward per method and task cell on a 2-core CPU;
the run resumes with finished cells kept, so it can be done in parts). --quick: four methods at the same 16 384
tokens, perplexity only (~9 minutes on 2 cores); the README states whether its ordering of methods by last-quarter
perplexity matches the full run's. (An earlier --quick at 12 288 tokens did not: at 1.5x the window default RoPE
has not broken yet, so it ranked above linear, and dynamic-ntk, whose scale grows with the length, swapped with yarn.)
The README's method table is generated from DIR/results.json by benchmarks/readme.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# SmolLM2-135M's config: rope_theta and the trained length (max_position_embeddings)
BASE, TRAINED = 100_000.0, 8192
# the longrope factors found by benchmarks/search_smollm2.py per factor (reduced CPU budgets, on other books)
SEARCHED = {2: "benchmarks/results/search_smollm2_16k/search/best.json",
            4: "benchmarks/results/search_smollm2_32k/search/best.json"}


def specs_for(factor: int, base: float = BASE, trained: int = TRAINED) -> list[str]:
    """Every method at factor x the trained length. abf takes the planner's critical base for that length
    (`ctxext plan --target`); self-extend takes group 2*factor at window 2048 (the smallest power of two that
    reaches 2x) and 4*factor at window 4096 (the best of the 10-trial passkey sweep at 2x,
    benchmarks/attention_methods.py passkey: 9/10, then 10/10 on fresh keys), so both reach the target at any
    factor. The searched longrope factors join at the factors a search was run for (SEARCHED)."""
    from ctxext.theory import critical_base

    f = factor
    abf = round(critical_base(base, trained, trained * f))
    specs = ["default", f"linear:factor={f}", f"ntk:factor={f}", f"dynamic-ntk:factor={f}",
             f"ntk-by-parts:factor={f}", f"yarn:factor={f}", "dynamic-yarn", f"llama3:factor={f}", f"abf:base={abf}",
             f"self-extend:group={2 * f},window=2048", f"self-extend:group={4 * f},window=4096"]
    return specs + [SEARCHED[f]] if f in SEARCHED else specs


# streaming keeps a rolling cache, so it is measured by the stream-ppl task over the same tokens (same buckets)
STREAMING = "streaming:sinks=4,window=2044"
QUICK = ("default", "linear", "ntk", "yarn")  # the first four of specs_for, at the run's factor
# the heatmap sweeps 4 lengths per method, so it covers the baseline, the usual choice and the strongest others
# (default, yarn, both self-extend settings and the searched longrope), at 1/4, 1/2, 3/4 and all of the target
NIAH = ("default", "yarn", "self-extend", "longrope")
RESULTS = ROOT / "benchmarks" / "results"
# more needle trials come from runs with other seeds (other keys; `samples` is a resume key, so the seed-0 run
# cannot grow in place); merge_niah pools them into one heatmap
NIAH_MERGED = RESULTS / "methods_niah"


def method(spec: str) -> str:
    return "longrope" if spec.endswith(".json") else spec.split(":")[0]


def picked(specs: list[str], methods: tuple[str, ...] | None) -> list[str]:
    """The specs whose method is in methods (all of them for None), in specs' order."""
    return [s for s in specs if methods is None or method(s) in methods]


def out_name(factor: int, quick: bool, seed: int) -> str:
    """methods/ (2x), methods_x4/, ...; the quick run and other seeds (more needle trials) beside them."""
    name = "methods" if factor == 2 else f"methods_x{factor}"
    return f"{name}_quick" if quick else name if seed == 0 else f"{name}_niah_seed{seed}"


def pool_cells(record_sets: list[list[dict]]) -> list[dict]:
    """Accuracy records of several runs pooled per (spec, length, depth): trials add up, accuracy is their mean."""
    cells: dict[tuple, dict] = {}
    for recs in record_sets:
        for r in recs:
            k = (r["scaling"], r["length"], r["depth"])
            c = cells.setdefault(k, {**r, "value": 0.0, "n": 0})
            c["value"] = (c["value"] * c["n"] + r["value"] * r["n"]) / (c["n"] + r["n"])
            c["n"] += r["n"]
    return list(cells.values())


def niah_sources(results: Path = RESULTS) -> list[Path]:
    """The runs whose needle cells are pooled: the seed-0 run and every other seed's."""
    return [results / "methods", *sorted(results.glob("methods_niah_seed*"))]


def niah_sets(sources: list[Path]) -> tuple[list[Path], list[dict], list[list[dict]]] | None:
    """(the sources that hold needle cells, their results, their needle accuracy records); None when fewer than two
    runs hold any (nothing to pool). One rule for merge_niah and the README's report."""
    import json

    found = [(d, json.loads((d / "results.json").read_text())) for d in sources if (d / "results.json").is_file()]
    kept = [(d, res, [r for r in res["records"] if r["task"] == "niah" and r["metric"] == "accuracy"])
            for d, res in found]
    kept = [k for k in kept if k[2]]
    if len(kept) < 2:
        return None
    return [d for d, _, _ in kept], [res for _, res, _ in kept], [x for _, _, x in kept]


def merge_niah(sources: list[Path], out: Path = NIAH_MERGED) -> Path | None:
    """Pool the niah cells of the seed-0 run and every seed run into out/results.json and out/niah_heatmap.png."""
    import json

    from ctxext.evals.files import atomic_write
    from ctxext.evals.plots import heatmap

    found = niah_sets(sources)
    if found is None:
        return None
    dirs, runs, sets = found
    recs = pool_cells(sets)
    meta = runs[0]["meta"]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", json.dumps(
        {"meta": {"pooled_from": [str(d.relative_to(ROOT)) for d in dirs],
                  "seeds": [res["meta"]["seed"] for res in runs], "machine": meta.get("machine"),
                  "versions": meta.get("versions"), "config": meta.get("config")}, "records": recs}, indent=1) + "\n")
    heatmap(out, recs, "niah", meta["config"]["model_info"]["trained_len"], "smollm2-135m")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--factor", type=int, default=2, help="target = factor x the trained 8,192 tokens (default 2: "
                   "16k; 4 and 8 are the GPU runs, 4 fits on the CPU for perplexity)")
    p.add_argument("--tasks", default="ppl,passkey,niah")
    p.add_argument("--specs", default=None, help="semicolon-separated specs overriding the default set")
    p.add_argument("--depths", default="0.1,0.5,0.9")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="bfloat16 for the GPU runs (flash attention); the CPU tables are float32")
    p.add_argument("--seed", type=int, default=0, help="other seeds draw other keys: more needle trials, another --out")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from ctxext.evals import run_eval
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    specs = (args.specs.split(";") if args.specs else
             picked(specs_for(args.factor), QUICK) if args.quick else specs_for(args.factor) + [STREAMING])
    length = TRAINED * args.factor
    tasks = ["ppl"] if args.quick else args.tasks.split(",")
    out = args.out or RESULTS / out_name(args.factor, args.quick, args.seed)
    common = dict(samples=1, bucket=2048, seed=args.seed, data=[books_dir() / HELD_OUT_BOOK], out=out, resume=True,
                  dtype=args.dtype,
                  command="python benchmarks/methods.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    os.chdir(ROOT)  # the searched spec is a path relative to the repo root
    for task in tasks:  # task by task, so a run cut short has whole columns of the table
        if task == "niah":
            run_eval("smollm2-135m", specs if args.specs else picked(specs, NIAH), [task],
                     [length * k // 4 for k in (1, 2, 3, 4)], depths=args.depths, **common)
            continue
        # streaming's perplexity is its stream (stream-ppl); it has no passkey (it cannot retrieve past its window)
        rest = [s for s in specs if method(s) != "streaming"]
        if rest:
            run_eval("smollm2-135m", rest, [task], [length], depths=args.depths, **common)
        if task == "ppl" and (streams := [s for s in specs if method(s) == "streaming"]):
            run_eval("smollm2-135m", streams, ["stream-ppl"], [length], **common)
    if "niah" in tasks and args.factor == 2:  # --specs runs too: the README pools every needle cell of these runs
        merged = merge_niah(niah_sources())
        if merged:
            print(f"needle trials of every seed pooled: {merged / 'results.json'}")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
