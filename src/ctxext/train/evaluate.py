"""Periodic evaluation during training: perplexity and passkey at the training length, run by ctxext.evals on
the model being trained (or, under FSDP / DeepSpeed, on a full copy gathered on the main process), written to
OUT/eval/step-NNNNNN/ in the ctxext eval format and collected into OUT/results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TrainConfig

PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def eval_dir(out: Path, step: int) -> Path:
    return out / "eval" / f"step-{step:06d}"


def evaluate(lm: Any, spec_arg: str, cfg: TrainConfig, out: Path, step: int) -> list[dict[str, Any]]:
    """passkey (cfg.passkey_trials per depth) and, with --eval-data, ppl (cfg.eval_docs documents) at --seq-len;
    records of the ctxext eval format with `model` = "<model>@step<N>"."""
    from ..evals import run_eval

    runs = [("passkey", cfg.passkey_trials, None)]
    if cfg.eval_data:
        runs.append(("ppl", cfg.eval_docs, list(cfg.eval_data)))
    name, was_training = lm.name, lm.model.training
    lm.name = f"{cfg.model}@step{step}"
    lm.model.eval()
    records: list[dict[str, Any]] = []
    try:
        for task, samples, data in runs:
            res = run_eval(lm, [spec_arg], [task], [cfg.seq_len], depths=PASSKEY_DEPTHS, samples=samples, data=data,
                           out=eval_dir(out, step) / task, resume=True, seed=cfg.seed,
                           bucket=quarter(cfg.seq_len), progress=False, log=lambda m: None,
                           command=f"{cfg.command_line} (evaluation at step {step})")
            records += res["records"]
    finally:
        lm.name = name
        lm.model.train(was_training)
    return records


def quarter(seq_len: int) -> int:
    """Bucket width for four buckets, the last ending at seq_len (rounded up: with seq_len // 4 a length that is
    not a multiple of 4 got a fifth, short bucket and no last-quarter figure)."""
    return max(1, -(-seq_len // 4))


def headline(records: list[dict[str, Any]], seq_len: int) -> dict[str, float]:
    """The figures a run is judged by: passkey accuracy over depths, ppl overall and in the last quarter."""
    out: dict[str, float] = {}
    acc = [r for r in records if r["task"] == "passkey" and r["metric"] == "accuracy" and r["value"] is not None]
    if acc:
        out["passkey"] = sum(r["value"] * r["n"] for r in acc) / sum(r["n"] for r in acc)
    for r in records:
        if r["task"] == "ppl" and r["metric"] == "ppl" and r["value"] is not None:
            if r["bucket"] is None:
                out["ppl"] = r["value"]
            elif r["bucket"] == [3 * quarter(seq_len), seq_len]:
                out["ppl_last_quarter"] = r["value"]
    return out
