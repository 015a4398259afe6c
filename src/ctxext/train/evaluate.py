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


def drop_unrecorded(out: Path, kept: set[int]) -> list[int]:
    """Delete the evaluation folders of steps the checkpoint resumed from has no evaluation of (all of them when
    --resume starts over from step 0): a killed run's cells there were merged into the new run's figures (an eval
    resumes per cell), another spec's too, and other --passkey-trials were refused naming the folder. -> the steps
    dropped."""
    import shutil

    dropped = []
    for d in sorted((out / "eval").glob("step-*")):
        tail = d.name.removeprefix("step-")
        if tail.isdigit() and int(tail) not in kept and d.is_dir():
            shutil.rmtree(d)
            dropped.append(int(tail))
    return dropped


def _runs(cfg: TrainConfig) -> list[tuple[str, int, list[str] | None]]:
    runs: list[tuple[str, int, list[str] | None]] = [("passkey", cfg.passkey_trials, None)]
    if cfg.eval_data:
        runs.append(("ppl", cfg.eval_docs, list(cfg.eval_data)))
    return runs


def describe(cfg: TrainConfig) -> str:
    """What one evaluation runs, in words."""
    parts = [f"passkey {len(PASSKEY_DEPTHS)} depths × {cfg.passkey_trials} trials"]
    if cfg.eval_data:
        parts.append(f"ppl over {cfg.eval_docs} document(s)")
    return f"{' and '.join(parts)} at {cfg.seq_len:,} tokens"


def estimate_seconds(cfg: TrainConfig) -> float:
    """One evaluation's time as ctxext eval states it (this machine's measured rates; no weights loaded)."""
    import tempfile

    from ..evals import run_eval

    with tempfile.TemporaryDirectory() as tmp:
        return sum(run_eval(cfg.model, [cfg.scaling], [task], [cfg.seq_len], depths=PASSKEY_DEPTHS, samples=samples,
                            data=data, out=Path(tmp) / task, seed=cfg.seed, bucket=quarter(cfg.seq_len),
                            dry_run=True, progress=False, log=lambda m: None)["estimated_seconds"]
                   for task, samples, data in _runs(cfg))


def evaluation_steps(cfg: TrainConfig) -> list[int]:
    """The steps an evaluation runs at: before the first step, every --eval-every, and at the end."""
    every = range(cfg.eval_every, cfg.steps, cfg.eval_every) if cfg.eval_every else []
    return [0, *every, cfg.steps]


def evaluate(lm: Any, spec_arg: str, cfg: TrainConfig, out: Path, step: int,
             progress: bool = False) -> list[dict[str, Any]]:
    """passkey (cfg.passkey_trials per depth) and, with --eval-data, ppl (cfg.eval_docs documents) at --seq-len;
    records of the ctxext eval format with `model` = "<model>@step<N>". `progress`: ctxext eval's bar."""
    from ..evals import run_eval

    runs = _runs(cfg)
    name, was_training = lm.name, lm.model.training
    lm.name = f"{cfg.model}@step{step}"
    lm.model.eval()
    records: list[dict[str, Any]] = []
    try:
        for task, samples, data in runs:
            res = run_eval(lm, [spec_arg], [task], [cfg.seq_len], depths=PASSKEY_DEPTHS, samples=samples, data=data,
                           out=eval_dir(out, step) / task, resume=True, seed=cfg.seed,
                           bucket=quarter(cfg.seq_len), progress=progress, log=lambda m: None,
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
