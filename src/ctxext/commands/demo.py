"""`ctxext demo`: the README's main job — plan and compare scaling methods on SmolLM2-135M past its 8k window.

Steps (each writes into its own folder under --out; the whole run resumes with --resume):
1. plan: the theory for a 2x target (critical dimension, predicted reach per method, plan.png);
2. eval: default RoPE vs training-free scaling methods, long-document perplexity per 2k bucket on a held-out
   book and passkey retrieval past the window, with plots;
3. plan_check.md: step 1's predicted reach per spec against where step 2's perplexity curve breaks (and calibrated
   by the default's break);
4. summary.md that puts them side by side.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import out_folder

MODEL = "smollm2-135m"
SPECS = ("default", "yarn:factor=2", "ntk:factor=2")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=out_folder, default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--model", default=MODEL, help=f"model (default {MODEL})")
    p.add_argument("--scaling", action="append", help=f"specs to compare (default: {', '.join(SPECS)})")
    p.add_argument("--ppl-length", type=int, default=12288, help="perplexity window in tokens (default 12288)")
    p.add_argument("--passkey-length", type=int, default=12288, help="passkey prompt length (default 12288)")
    p.add_argument("--depths", default="0.1,0.5", help="passkey depths (default 0.1,0.5)")
    p.add_argument("--resume", action="store_true", help="keep finished cells from an earlier run in --out")


def run(args: argparse.Namespace) -> int:
    from ..cli import main as cli_main
    from ..errors import CtxextError
    from ..evals import run_eval
    from ..evals.files import write_json
    from ..fixtures import HELD_OUT_BOOK, books_dir
    from ..models import model_info
    from ..scaling import parse_spec

    t0 = time.time()
    out = Path(args.out)
    specs = [parse_spec(s).text for s in args.scaling or SPECS]  # the names the eval files its curves under
    info = model_info(args.model)
    if args.ppl_length <= info.trained_len:  # the measured break needs a curve past the window: refuse before any work
        raise CtxextError(f"--ppl-length {args.ppl_length} must be longer than {args.model}'s trained window "
                          f"({info.trained_len} tokens): the demo measures where perplexity breaks past it")
    book = books_dir() / HELD_OUT_BOOK
    windows = demo_windows(args.ppl_length)
    steps = {"ppl": dict(tasks=["ppl"], lengths=[args.ppl_length], data=[book], bucket=2048,
                         windows=windows if windows > 1 else None),
             "passkey": dict(tasks=["passkey"], lengths=[args.passkey_length], depths=args.depths)}
    for name, kw in steps.items():  # every eval refusal (depths, lengths, memory, an --out to resume) before step 1
        run_eval(args.model, specs, out=out / name, samples=1, resume=args.resume, dry_run=True,
                 log=lambda m: None, **kw)
    out.mkdir(parents=True, exist_ok=True)
    target = 2 * info.trained_len
    print(f"[1/3] plan: {args.model} to {target} tokens", flush=True)
    code = cli_main(["plan", "--model", args.model, "--target", str(target), "--out", str(out / "plan")])
    if code:
        return code
    print(f"[2/3] perplexity at {args.ppl_length} tokens on {book.name}"
          + (f" ({windows} consecutive windows)" if windows > 1 else "") + f": {', '.join(specs)}", flush=True)
    run_eval(args.model, specs, out=out / "ppl", samples=1, resume=args.resume, command="ctxext demo", **steps["ppl"])
    print(f"[3/3] passkey at {args.passkey_length} tokens, depths {args.depths}", flush=True)
    run_eval(args.model, specs, out=out / "passkey", samples=1, resume=args.resume, command="ctxext demo",
             **steps["passkey"])
    check, rows = plan_check(out, args.model, specs, args.ppl_length)
    print(check)
    (out / "plan_check.md").write_text(check + "\n")
    write_json(out / "plan_check.json", {"model": args.model, "ppl_length": args.ppl_length, "rows": rows})
    (out / "summary.md").write_text(summary(out, time.time() - t0))
    print(f"done in {time.time() - t0:.0f} s: {out / 'summary.md'}")
    return 0


def _averaged(ppl: Path) -> str:
    """', averaged over N windows of the book' when the perplexity step read more than one."""
    path = ppl / "results.json"
    cfg = json.loads(path.read_text())["meta"]["config"] if path.is_file() else {}
    n = (cfg.get("settings") or {}).get("windows") or 1
    return f", averaged over {n} consecutive windows of the book" if n > 1 else ""


def demo_windows(length: int) -> int:
    """Windows of the book the perplexity step averages: as many as --calibrate's default scores, whole ones only
    (SmolLM2's 12,288 tokens: one; a tiny model's 1,024: sixteen). One short window is the book's opening (title
    page, licence), whose curve put tiny-rope's break at 257 where the model breaks at ~353."""
    from ..evals.reach import CALIBRATE_TOKENS, MAX_WINDOWS

    return max(1, min(MAX_WINDOWS, CALIBRATE_TOKENS // length))


def plan_check(out: Path, model: str, specs: list[str], length: int) -> tuple[str, list[dict]]:
    """Step 1's predicted reach per spec against where step 2's perplexity curve first passes 2x its in-window value,
    and the prediction calibrated by default RoPE's measured break (`ctxext plan --calibrate`, here for free: the
    default's curve is already measured) -> (markdown, one row per spec for plan_check.json). A curve that never
    breaks bounds the ratio from below (measured >= its length)."""
    from ..errors import CtxextError
    from ..evals.files import curve_path, load_array
    from ..evals.reach import ppl_break
    from ..models import model_info
    from ..scaling import parse_spec
    from ..theory import Calibration, predicted_reach

    shape = model_info(model).rope_shape
    rows = {}
    for s in specs:
        curve = load_array(curve_path(out / "ppl", "ppl", s, length))
        try:
            pred = predicted_reach(parse_spec(s), shape)
        except CtxextError:  # not a RoPE spec (self-extend, streaming): the planner gives it no reach
            pred = None
        rows[s] = (pred, ppl_break(curve[1:], shape.original_len) if curve is not None else None)
    d = rows.get("default")
    cal = Calibration(d[0].tokens, d[1].reach, False) if d and d[0] and d[1] and not d[1].censored else None
    calibrated = f" Calibrated: the prediction times default RoPE's measured / predicted ({cal.tolerance:.2f})." \
        if cal else ""
    lines = [f"Predicted reach (step 1) vs measured: the first position where perplexity passes 2x its in-window "
             f"value on the {length:,}-token curve of step 2{_averaged(out / 'ppl')} (buckets of "
             f"{shape.original_len // 8:,} tokens; ≥: held to the end of the curve).{calibrated}", "",
             "| spec | predicted reach | measured | measured / predicted | calibrated |", "|---|---:|---:|---:|---:|"]
    table = []
    for s, (pred, brk) in rows.items():
        p = "–" if pred is None else ("no limit" if pred.capped else f"{pred.tokens:,.0f}")
        m = "–" if brk is None else (f"≥ {brk.length:,}" if brk.censored else f"{brk.reach:,.0f}")
        ratio = (brk.length if brk.censored else brk.reach) / pred.tokens if pred and brk and not pred.capped else None
        r = "–" if ratio is None else (f"≥ {ratio:.2f}" if brk.censored else f"{ratio:.2f}")
        cal_reach = cal.reach(pred.tokens) if cal and pred and not pred.capped and s != "default" else None
        c = "–" if cal_reach is None else f"{cal_reach:,.0f}"
        lines.append(f"| `{s}` | {p} | {m} | {r} | {c} |")
        table.append({"spec": s, "predicted": None if pred is None or pred.capped else pred.tokens,
                      "measured": None if brk is None else brk.to_dict(), "ratio": ratio,
                      "ratio_is_lower_bound": bool(brk and brk.censored), "calibrated": cal_reach})
    unbroken = [f"`{s}`" for s, (pred, brk) in rows.items() if brk is not None and brk.censored]
    if unbroken:  # with the defaults on SmolLM2: both scaled methods, predicted to reach past the curve
        lines += ["", f"{', '.join(unbroken)}: no break within the {length:,}-token curve, so the ratio is a lower "
                      "bound and no break was compared with its prediction; a longer `--ppl-length` measures it."]
    return "\n".join(lines), table


def measured_seconds(out: Path) -> float:
    """The recorded time of every eval cell under out (kept across --resume, unlike one invocation's clock)."""
    total = 0.0
    for part in ("ppl", "passkey"):
        try:
            total += sum(t.get("seconds", 0.0) for t in json.loads((out / part / "results.json").read_text())
                         .get("meta", {}).get("timings", []))
        except (OSError, ValueError):
            pass
    return total


def summary(out: Path, seconds: float) -> str:
    parts = [f"# ctxext demo ({measured_seconds(out) / 60:.1f} min of measurement; this invocation "
             f"{seconds / 60:.1f} min)\n"]
    # each section: its markdown, and the folder whose plots follow it (none for the plan check)
    sections = (("Plan", "plan/summary.md", "plan"), ("Perplexity", "ppl/summary.md", "ppl"),
                ("Plan vs measurement", "plan_check.md", None), ("Passkey", "passkey/summary.md", "passkey"))
    for title, path, plots in sections:
        md = out / path
        body = md.read_text() if md.is_file() else "(missing)\n"
        # headings and image links of the part's own summary are relative to its folder; the images are linked below
        keep = [l for l in body.splitlines() if not l.startswith(("# ", "!["))]
        parts.append(f"## {title}\n\n" + "\n".join(keep) + "\n")
        for png in sorted((out / plots).glob("*.png")) if plots else []:
            parts.append(f"![{png.stem}]({plots}/{png.name})\n")
    meta = json.loads((out / "ppl" / "results.json").read_text()).get("meta", {}) if (out / "ppl" / "results.json").is_file() else {}
    if meta:
        versions = meta.get("versions", {})
        parts.append(f"\nversions: {json.dumps({k: versions[k] for k in ('ctxext', 'torch', 'transformers') if k in versions})}\n")
    return "\n".join(parts)
