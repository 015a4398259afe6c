"""theory: how far a RoPE model reaches, and which method and parameters reach a target length.

Reads only the model's config (no weights; --calibrate below is the exception): critical dimension,
extrapolation limit 2π·b^(d_extra/d), critical base for the target, per-pair wavelengths, and one recommendation per scaling method with
its predicted reach (Liu et al. 2023, https://arxiv.org/abs/2310.05209). With --out DIR it writes
results.json, summary.md and plan.png.

--calibrate loads the weights once: it measures where default RoPE's perplexity first passes 2x its in-window
value on a text (ctxext.evals.reach) and carries every predicted reach by measured / predicted of that default.
The critical pair's limit is where extrapolation starts to fail; how far past it perplexity holds is a property of
the model (SmolLM2-135M holds to ~1.3x, the tiny fixture breaks at it), and a forward of the default shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import CtxextError
from . import out_folder


def _positive_int(text: str) -> int:
    try:
        v = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of tokens, got '{text}'") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not (1 < v < 1e30):  # inf (or a float32 frequency that underflows to 0) divided by zero
        raise argparse.ArgumentTypeError(f"rope base must be > 1 and finite (below 1e30), got {text}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF directory, .gguf file, or built-in name (smollm2-135m, ...)")
    p.add_argument("--target", required=True, type=_positive_int, help="target context length in tokens (> trained length)")
    p.add_argument("--base", type=_positive_float,
                   help="plan for the model with its rope base changed to B (e.g. after ABF tuning); for a larger "
                        "base the critical dimension stays the one learned with the trained base, for a smaller "
                        "one it is the planned base's")
    p.add_argument("--original-len", type=_positive_int, metavar="L",
                   help="override the trained length read from the config")
    p.add_argument("--calibrate", action="store_true",
                   help="load the weights and measure where default RoPE's perplexity first passes 2x its in-window "
                        "value on --data (forwards of --calibrate-len tokens, see --calibrate-windows); every predicted reach is then also "
                        "given carried by measured / predicted of that default")
    p.add_argument("--data", action="append", metavar="PATH",
                   help="text for --calibrate (file, folder or .jsonl; repeatable); default: the held-out book")
    p.add_argument("--calibrate-len", type=_positive_int, metavar="N",
                   help="tokens measured by --calibrate (default: twice the trained length)")
    p.add_argument("--calibrate-windows", type=_positive_int, metavar="W",
                   help="average --calibrate's curve over W consecutive windows of the text; default: enough to "
                        "score 16,384 tokens (at most 16, as many as the text holds), so one window for SmolLM2 and "
                        "several for a small model, whose single window is noisy")
    p.add_argument("--device", default="auto", help="for --calibrate: auto, cpu, cuda or cuda:<i>")
    p.add_argument("--json", action="store_true", help="print the plan as JSON to stdout")
    p.add_argument("--out", type=out_folder, metavar="DIR", help="also write results.json, summary.md and plan.png here")


def run(args: argparse.Namespace) -> int:
    from ..models import model_info
    from ..scaling import RopeShape
    from ..theory import check_target, plan

    info = model_info(args.model)  # config only, no weights
    if info.encoding != "rope":
        raise CtxextError(f"plan predicts RoPE extrapolation; {args.model} uses {info.encoding} positions "
                          f"(for ALiBi try `--scaling alibi-interp:factor=a` or `ntk-alibi:factor=a` in eval)")
    shape = info.rope_shape
    if args.original_len:
        shape = RopeShape(shape.rotary_dim, shape.base, args.original_len)
    check_target(args.target, shape.original_len)
    from ..models.attention import SUPPORTED_MODEL_TYPES
    from ..scaling.hf import takes_default_only

    model_type = info.config.get("model_type")
    only_default = (f"ctxext applies only `default` to '{model_type}' (its attention sets its softmax scale from the "
                    "rope when built)") if takes_default_only(model_type) else None  # no pick eval and export refuse
    p = plan(shape, args.target, base=args.base, patchable=model_type in SUPPORTED_MODEL_TYPES,
             only_default=only_default)

    head_dim = getattr(info, "head_dim", None) or _head_dim(info.config) or shape.rotary_dim
    data = {"model": getattr(info, "name", args.model), "head_dim": head_dim, **p.to_dict()}
    if (own := own_rope(info, shape)) is not None:
        data["own_rope"] = own
    if args.calibrate:
        add_calibration(data, *calibrate(args, info, shape, own))
    elif args.data or args.calibrate_len or args.calibrate_windows is not None:
        raise CtxextError("--data, --calibrate-len and --calibrate-windows only take effect with --calibrate")
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(data))
    if args.out:
        write_outputs(Path(args.out), data, p, info, args)
    return 0


def calibrate(args: argparse.Namespace, info: Any, shape: Any, own: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
    """Measure the break point of the model as loaded (--base does not apply) on the given text against its
    prediction: the default RoPE's, or the checkpoint's own scaled RoPE's (`own`, see own_rope), which is what
    loads; -> (the Calibration, its record for results.json)."""
    from ..evals.cost import ModelCost, fmt_seconds, matmul_rate
    from ..evals.reach import auto_windows, measure_break
    from ..fixtures import HELD_OUT_BOOK, books_dir
    from ..models import load_model
    from ..models.load import require_tokenizer, resolve_device
    from ..scaling import parse_spec
    from ..theory import Calibration, predicted_reach

    if own is not None and own["predicted_reach"] is None:
        raise CtxextError(f"--calibrate compares the model as loaded with its predicted reach; this checkpoint's own "
                          f"'{own['rope_type']}' RoPE changes with the length and has none")
    length = args.calibrate_len or 2 * shape.original_len
    if length <= shape.original_len:
        raise CtxextError(f"--calibrate-len {length} must be longer than the trained window ({shape.original_len})")
    data = [str(x) for x in (args.data or [books_dir() / HELD_OUT_BOOK])]
    require_tokenizer(args.model, "calibrate", "the calibration needs to read its text")
    device = resolve_device(args.device)
    if device == "cpu":
        w = args.calibrate_windows or auto_windows(length)
        est = w * ModelCost.of(info).flops(length) / matmul_rate()
        print(f"calibrating: {w} forward(s) of {length:,} tokens with default RoPE (about {fmt_seconds(est)} here)",
              file=sys.stderr)
    lm = load_model(args.model, device=device)
    brk, doc, windows = measure_break(lm, data, length, shape.original_len, args.calibrate_windows)
    pred = predicted_reach(parse_spec("default"), shape).tokens if own is None else own["predicted_reach"]
    cal = Calibration(pred, brk.reach, brk.censored)
    return cal, {"data": doc, "length": length, "windows": windows, "predicted": pred,
            "measured": brk.reach, "censored": brk.censored, "in_window_ppl": round(brk.in_window_ppl, 3),
            "tolerance": round(cal.tolerance, 4)}


def add_calibration(data: dict[str, Any], cal: Any, record: dict[str, Any]) -> None:
    """Each recommendation's reach carried by the measured tolerance; a lower bound when the default held."""
    data["calibration"] = record
    for r in data["recommendations"]:
        r["calibrated_reach"] = None if r["reach_capped"] else round(cal.reach(r["predicted_reach"]))


def _head_dim(cfg: dict[str, Any]) -> int | None:
    if cfg.get("head_dim"):
        return int(cfg["head_dim"])
    if cfg.get("hidden_size") and cfg.get("num_attention_heads"):
        return int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])
    return None


def write_outputs(out: Path, data: dict[str, Any], p: Any, info: Any, args: argparse.Namespace) -> None:
    from ..plots import plan_wavelengths
    from ..runinfo import versions

    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "versions": versions(),
        "command": getattr(args, "command_line", "ctxext plan"),
        "config": {"model": args.model, "target": args.target, "base": args.base, "original_len": args.original_len,
                   "rope_shape": {"rotary_dim": p.shape.rotary_dim, "base": p.shape.base,
                                  "original_len": p.shape.original_len},
                   "model_config": getattr(info, "config", None)},
    }
    (out / "results.json").write_text(json.dumps({**data, "meta": meta}, indent=2) + "\n")
    (out / "summary.md").write_text(render_markdown(data))
    plan_wavelengths(p, out / "plan.png", title=f"{Path(data['model']).name}: RoPE wavelength per pair, "
                                                f"{data['original_max_position_embeddings']:,} → {data['target']:,} tokens")
    print(f"wrote {out / 'results.json'}, {out / 'summary.md'}, {out / 'plan.png'}", file=sys.stderr)


# --- rendering -------------------------------------------------------------------------------------------

def _reach(r: dict[str, Any]) -> str:
    return f"≥ {r['predicted_reach']:,.0f} (no limit)" if r["reach_capped"] else f"{r['predicted_reach']:,.0f}"


def _short(spec: str, width: int = 34) -> str:
    return spec if len(spec) <= width else spec[: width - 1] + "…"


def _facts(d: dict[str, Any]) -> list[str]:
    L, T, c = d["original_max_position_embeddings"], d["target"], d["critical_pair"]
    base = f"{d['rope_theta']:g}" + (f" (planned with base {d['planned_base']:g})" if d["planned_base"] != d["rope_theta"] else "")
    every = c >= d["rotary_dim"] // 2  # the small-base regime: there is no pair c, and no limit
    return [
        f"model        {d['model']}: rotary dim {d['rotary_dim']} (head_dim {d['head_dim']}), rope base {base}",
        f"lengths      trained L = {L:,}, target T = {T:,} (s = {d['scale']:.4g})",
        f"critical     dim d_extra = {d['critical_dim']}: " + (
            "every pair completes a full period within L" if every else
            f"pairs 0-{c - 1} complete a full period within L, pair {c} is the first that never does"),
        "reach        as trained, no limit predicted (every pair has seen all its phases)" if every else
        f"reach        as trained, 2π·b^(d_extra/d) = {d['extrapolation_limit']:,.0f} tokens",
        f"bases for T  critical base {d['critical_base']:,.0f} (tune at T with base ≤ this to reach T); "
        f"training-free base {d['training_free_base']:,.0f}",
    ] + _own_rope_facts(d) + _calibration_facts(d)


def _own_rope_facts(d: dict[str, Any]) -> list[str]:
    o = d.get("own_rope")
    if not o:
        return []
    reach = ("no wavelength prediction (its frequencies change with the length)" if o["predicted_reach"] is None
             else f"by the same rule it reaches ≈ {o['predicted_reach']:,.0f} tokens")
    within = "; the target is within it" if d["target"] <= o["window"] else ""
    return [f"own rope     this checkpoint's config already scales its RoPE ({o['rope_type']}, made for "
            f"{o['window']:,} tokens{within}): as shipped {reach}. The rows plan from its original RoPE (trained "
            "L above): `default` is that RoPE, and each method replaces the config's scaling"]


def own_rope(info: Any, shape: Any) -> dict[str, Any] | None:
    """The checkpoint's own RoPE scaling (Llama 3.1's llama3 bands, a yarn or linear config), which the planner's
    rows do not describe: its type, the length it was made for and its predicted reach (2π/θ_c of its own
    frequencies; None when they change with the length). None for a plain RoPE config."""
    import math

    from transformers import AutoConfig

    from ..models.stock_rope import OWN_LENGTH_DEPENDENT, checkpoint_freqs, own_window
    from ..scaling.hf import config_rope_type
    from ..theory import REACH_CAP, critical_dim

    rope_type = config_rope_type(info.config)
    if rope_type == "default":
        return None
    reach = None
    if rope_type not in OWN_LENGTH_DEPENDENT:
        inv_freq = checkpoint_freqs(AutoConfig.for_model(**info.config), "plan").inv_freq
        c = critical_dim(shape.rotary_dim, shape.base, shape.original_len) // 2
        reach = float(REACH_CAP) if c >= len(inv_freq) else min(float(REACH_CAP), 2 * math.pi / float(inv_freq[c]))
    return {"rope_type": rope_type, "window": own_window(info.config), "predicted_reach": reach}


def _calibration_facts(d: dict[str, Any]) -> list[str]:
    c = d.get("calibration")
    if not c:
        return []
    held = "held below 2x over all" if c["censored"] else "passed 2x its in-window ppl at"
    bound = "≥ " if c["censored"] else ""
    where = f"{c['length']:,} tokens of {c['data']}" + (f" ({c['windows']} windows)" if c["windows"] > 1 else "")
    return [f"calibrated   default RoPE {held} {c['measured']:,.0f} of {where} "
            f"(in-window ppl {c['in_window_ppl']:.2f}) vs predicted {c['predicted']:,.0f}: tolerance {bound}"
            f"{c['tolerance']:.3g}; calibrated reach = predicted × tolerance (recommendations still use the "
            "predicted reach)"]


def _calibrated(d: dict[str, Any], r: dict[str, Any]) -> list[str]:
    if "calibration" not in d:
        return []
    if r["calibrated_reach"] is None:
        return ["(no limit)"]
    return [("≥ " if d["calibration"]["censored"] else "") + f"{r['calibrated_reach']:,}"]


def _rec_rows(d: dict[str, Any], short: bool) -> list[list[str]]:
    rows = []
    for r in d["recommendations"]:
        ft = r["fine_tuning"]
        rows.append([r["method"], _short(r["spec"]) if short else r["spec"], _reach(r)] + _calibrated(d, r) + [
                     "yes" if r["reaches_target"] else "no", f"{r['attention_factor']:.4f}",
                     ("required: " if ft["required"] else "") + ft["cost"], r["recommended"] or ""])
    return rows


def _pair_rows(d: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    specs = [s for s in d["recommended"].values() if s]
    head = ["pair", "wavelength", "full period in L", "in T"] + [f"f_i {_short(s, 20)}" for s in specs]
    rows = []
    for row in d["pairs"]:
        mark = " ← critical" if row["index"] == d["critical_pair"] else ""
        rows.append([f"{row['index']}{mark}", f"{row['wavelength']:,.1f}",
                     "yes" if row["full_period_within_original"] else "no",
                     "yes" if row["full_period_within_target"] else "no"]
                    + [f"{row['factors'][s]:.4g}" for s in specs])
    return head, rows


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    w = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(x.ljust(n) for x, n in zip(r, w)).rstrip()  # noqa: E731
    return [fmt(head), fmt(["-" * n for n in w])] + [fmt(r) for r in rows]


REC_HEAD = ["method", "spec", "predicted reach", "≥ T", "attn", "fine-tuning", "recommended"]


def _rec_head(d: dict[str, Any]) -> list[str]:
    return REC_HEAD[:3] + (["calibrated reach"] if "calibration" in d else []) + REC_HEAD[3:]


def render_text(d: dict[str, Any]) -> str:
    lines = _facts(d) + [""] + _table(_rec_head(d), _rec_rows(d, short=True)) + [""]
    for kind, spec in d["recommended"].items():
        r = next(x for x in d["recommendations"] if x["spec"] == spec) if spec else None
        if r:
            cal = f"; calibrated {_calibrated(d, r)[0]}" if "calibration" in d else ""
            lines.append(f"recommended, {kind}: {r['spec']}  (reach {_reach(r)}{cal})")
    lines += ["", "why:"] + [f"  {r['method']:<13} {r['rationale']}" for r in d["recommendations"]]
    if d["skipped"]:
        lines.append("skipped: " + "; ".join(f"{k} ({v})" for k, v in d["skipped"].items()))
    lines += [""] + _table(*_pair_rows(d))
    return "\n".join(lines) + "\n"


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda x: x.replace("|", "\\|")  # noqa: E731
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(esc(x) for x in r) + " |" for r in rows])


def render_markdown(d: dict[str, Any]) -> str:
    lines = [f"# ctxext plan: {d['model']} → {d['target']:,} tokens", "", "```"] + _facts(d) + ["```", "",
             "## Recommendations", "",
             "Predicted reach = wavelength of the critical pair under the spec, 2π/θ'_c "
             "(Liu et al. 2023, https://arxiv.org/abs/2310.05209).", ""]
    lines += _md_table(_rec_head(d), [r[:1] + [f"`{r[1]}`"] + r[2:] for r in _rec_rows(d, short=False)])
    lines += ["", "## Why", ""] + [f"- **{r['method']}** `{_short(r['spec'], 40)}`: {r['rationale']}"
                                   for r in d["recommendations"]]
    if d["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in d["skipped"].items()) + "."]
    lines += ["", "## Per-pair wavelengths", "", "![wavelength per pair](plan.png)", ""]
    lines += _md_table(*_pair_rows(d))
    return "\n".join(lines) + "\n"
