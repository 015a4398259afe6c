"""What a run writes into --out: results.json (the ctxext eval record format plus the training history),
summary.md, and loss-curve.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .evaluate import headline


def write_reports(out: Path, meta: dict[str, Any], history: list[dict[str, Any]], evals: list[dict[str, Any]],
                  summary: dict[str, Any]) -> None:
    """`evals`: [{"step": s, "records": [...]}]; every record also goes into the flat `records` list."""
    from ..evals.files import atomic_write, write_json

    records = [r for e in evals for r in e["records"]]
    write_json(out / "results.json", {"meta": meta, "records": records, "training": {
        "summary": summary, "evaluations": [{"step": e["step"], **headline(e["records"], meta["config"]["seq_len"])}
                                            for e in evals],
        "history": history}})
    plots = [loss_plot(out / "loss-curve.png", history)] if history else []
    atomic_write(out / "summary.md", summary_markdown(meta, history, evals, summary, plots))


def loss_plot(path: Path, history: list[dict[str, Any]]) -> str:
    from ..plots import figure, save

    with figure() as (fig, ax):
        steps = [h["step"] for h in history]
        ax.plot(steps, [h["loss"] for h in history], color="#0072B2", label="training loss")
        short = [h for h in history if h.get("short")]
        if short:
            ax.scatter([h["step"] for h in short], [h["loss"] for h in short], s=8, color="#D55E00",
                       label="original-window steps (mixed window)", zorder=3)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats / token)")
        ax.set_title("Training loss")
        ax.legend()
        ax2 = ax.twinx()
        ax2.plot(steps, [h["lr"] for h in history], color="#8C8C8C", linewidth=1, linestyle="--")
        ax2.set_ylabel("learning rate", color="#8C8C8C")
        ax2.grid(False)
        save(fig, path)
    return path.name


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_markdown(meta: dict[str, Any], history: list[dict[str, Any]], evals: list[dict[str, Any]],
                     summary: dict[str, Any], plots: list[str]) -> str:
    c = meta["config"]
    lines = [f"# ctxext train: {c['model']} with `{meta['spec']}` at {c['seq_len']:,} tokens", "",
             f"`{meta.get('command') or ''}`", ""]
    lines += [f"- {k.replace('_', ' ')}: {_fmt(v)}" for k, v in summary.items() if not isinstance(v, (dict, list))]
    if v := summary.get("export_verification"):  # a dict, so the line above left it out
        past = v.get("past_window")
        lines.append(f"- final/ loaded by stock transformers: max |logit diff| {v['max_abs_logit_diff']:.3g} over "
                     f"{v['tokens']} tokens ({'passed' if v['passed'] else 'FAILED'})" + (
                         "" if not past or past["same"] else
                         f"; past the window {past['max_abs_logit_diff']:.3g} ({past['why']})"))
    lines += ["", "## Evaluation at the training length", ""]
    if not evals:
        lines.append("none (--no-eval)")
    else:
        lines += ["| step | passkey accuracy | ppl | ppl, last quarter |", "|---:|---:|---:|---:|"]
    for e in evals:
        h = headline(e["records"], c["seq_len"])
        lines.append(f"| {e['step']} | {_fmt(h.get('passkey'))} | {_fmt(h.get('ppl'))} | "
                     f"{_fmt(h.get('ppl_last_quarter'))} |")
    if history:
        every = max(1, len(history) // 20)
        lines += ["", "## Loss", "", "| step | loss | lr | tokens |", "|---:|---:|---:|---:|"]
        for h in history[::every] + ([history[-1]] if (len(history) - 1) % every else []):
            lines.append(f"| {h['step']} | {h['loss']:.4f} | {h['lr']:.3g} | {h['tokens']:,} |")
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)
