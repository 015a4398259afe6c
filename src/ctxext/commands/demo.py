"""`ctxext demo`: the README's main job — plan and compare scaling methods on SmolLM2-135M past its 8k window.

Steps (each writes into its own folder under --out; the whole run resumes with --resume):
1. plan: the theory for a 2x target (critical dimension, predicted reach per method, plan.png);
2. eval: default RoPE vs training-free scaling methods, long-document perplexity per 2k bucket on a held-out
   book and passkey retrieval past the window, with plots;
3. summary.md that puts both side by side.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

MODEL = "smollm2-135m"
SPECS = ("default", "yarn:factor=2", "ntk:factor=2")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--model", default=MODEL, help=f"model (default {MODEL})")
    p.add_argument("--scaling", action="append", help=f"specs to compare (default: {', '.join(SPECS)})")
    p.add_argument("--ppl-length", type=int, default=12288, help="perplexity window in tokens (default 12288)")
    p.add_argument("--passkey-length", type=int, default=12288, help="passkey prompt length (default 12288)")
    p.add_argument("--depths", default="0.1,0.5", help="passkey depths (default 0.1,0.5)")
    p.add_argument("--resume", action="store_true", help="keep finished cells from an earlier run in --out")


def run(args: argparse.Namespace) -> int:
    from ..cli import main as cli_main
    from ..evals import run_eval
    from ..fixtures import HELD_OUT_BOOK, books_dir
    from ..models import model_info

    t0 = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    specs = args.scaling or list(SPECS)
    info = model_info(args.model)
    target = 2 * info.trained_len
    print(f"[1/3] plan: {args.model} to {target} tokens", flush=True)
    code = cli_main(["plan", "--model", args.model, "--target", str(target), "--out", str(out / "plan")])
    if code:
        return code
    book = books_dir() / HELD_OUT_BOOK
    print(f"[2/3] perplexity at {args.ppl_length} tokens on {book.name}: {', '.join(specs)}", flush=True)
    run_eval(args.model, specs, ["ppl"], [args.ppl_length], data=[book], samples=1, bucket=2048,
             out=out / "ppl", resume=args.resume, command="ctxext demo")
    print(f"[3/3] passkey at {args.passkey_length} tokens, depths {args.depths}", flush=True)
    run_eval(args.model, specs, ["passkey"], [args.passkey_length], depths=args.depths, samples=1,
             out=out / "passkey", resume=args.resume, command="ctxext demo")
    (out / "summary.md").write_text(summary(out, time.time() - t0))
    print(f"done in {time.time() - t0:.0f} s: {out / 'summary.md'}")
    return 0


def summary(out: Path, seconds: float) -> str:
    parts = [f"# ctxext demo ({seconds / 60:.1f} min)\n"]
    for name, title in (("plan", "Plan"), ("ppl", "Perplexity"), ("passkey", "Passkey")):
        md = out / name / "summary.md"
        body = md.read_text() if md.is_file() else "(missing)\n"
        # headings and image links of the part's own summary are relative to its folder; the images are linked below
        keep = [l for l in body.splitlines() if not l.startswith(("# ", "!["))]
        parts.append(f"## {title}\n\n" + "\n".join(keep) + "\n")
        for png in sorted((out / name).glob("*.png")):
            parts.append(f"![{png.stem}]({name}/{png.name})\n")
    meta = json.loads((out / "ppl" / "results.json").read_text()).get("meta", {}) if (out / "ppl" / "results.json").is_file() else {}
    if meta:
        parts.append(f"\nversions: {json.dumps({k: meta[k] for k in ('ctxext', 'torch', 'transformers') if k in meta})}\n")
    return "\n".join(parts)
