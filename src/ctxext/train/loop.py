"""The training loop: one CPU, one GPU, or many through accelerate (DDP, FSDP, DeepSpeed ZeRO-3).

One optimizer step consumes `rows_per_step` packed rows of --seq-len tokens over all processes; each process
takes its slice and runs it in forwards of --micro-batch rows. Every forward returns the summed token loss,
scaled by world / (scored tokens of the whole global batch) before backward, so after the engines average the
gradients over processes, one process and N processes with the same global batch take the same step.

Order: everything that needs no weights (spec, export plan, memory estimate and refusal) -> model, data ->
evaluation of the untrained extension (step 0) -> steps, with a checkpoint every --save-every steps, on
Ctrl-C (after the current step), and at the end -> final evaluation -> DIR/final exported as ctxext export does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..data import files_change, files_key
from ..errors import CtxextError
from ..lock import is_lock, out_lock
from . import checkpoint as ckpt
from . import doc_attention
from .config import TrainConfig
from .data import IGNORE, RowOrder, is_short_step, load_rows, model_inputs
from .evaluate import evaluate, headline
from .loss import LossModel
from .malloc import tune_malloc
from .memory import GIB, check_fits
from .optim import make_optimizer, make_scheduler, param_groups, warmup_warning
from .report import write_reports
from .setup import build_model, plan_run

FINAL_DIR = "final"
CARD_FIGURES = {"steps_done": "training steps", "tokens": "training tokens", "final_loss": "final training loss",
                "passkey": "passkey accuracy at {n} tokens", "ppl": "perplexity at {n} tokens (--eval-data)",
                "ppl_last_quarter": "perplexity of the last quarter at {n} tokens"}  # figure -> model-card line


DIST_TIMEOUT_MINUTES = 180  # NCCL's default is 10: the other ranks wait that long while rank 0 evaluates or exports


def dist_timeout_minutes() -> float:
    """How long a process waits for the others at a barrier (CTXEXT_DIST_TIMEOUT_MINUTES overrides): rank 0 alone
    runs the evaluations (about 100 passkey trials of 10 s each at 64k on an H200), the export and a first
    tokenization, while the other ranks wait."""
    raw = os.environ.get("CTXEXT_DIST_TIMEOUT_MINUTES", "")
    try:
        value = float(raw) if raw else DIST_TIMEOUT_MINUTES
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise CtxextError(f"CTXEXT_DIST_TIMEOUT_MINUTES must be a positive number of minutes, got {raw!r}")
    return value


def make_accelerator() -> Any:
    """bf16 autocast with fp32 master weights on GPU, fp32 on CPU. Under torchrun / accelerate launch on CPU the
    processes join a gloo group (DDP); FSDP there is switched on by hand, because accelerate 1.15 enables FSDP only
    for accelerators (the CPU path serves the tests; it uses FSDP2 exactly as on GPU)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs

    cuda = torch.cuda.is_available()
    mp = "no"
    if cuda:
        mp = os.environ.get("ACCELERATE_MIXED_PRECISION") or ("bf16" if torch.cuda.is_bf16_supported() else "no")
    acc = Accelerator(mixed_precision=mp, cpu=not cuda,
                      kwargs_handlers=[InitProcessGroupKwargs(timeout=dt.timedelta(minutes=dist_timeout_minutes()))])
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and \
            acc.distributed_type == DistributedType.MULTI_CPU:
        from accelerate.state import PartialState

        # both shared states: accelerate re-reads PartialState's when it re-creates an AcceleratorState
        PartialState().distributed_type = acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # read from the FSDP_* variables of the launcher
    return acc


class StopFlag:
    """The first Ctrl-C (SIGINT) or SIGTERM (what schedulers send before preempting) asks the loop to stop after the
    current step (checkpoint, then exit); a second one interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nctxext train: stopping after this step and saving a checkpoint (signal again to abort)",
              file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# what a run resolves its options to, compared on --resume instead of the options as typed: a spec file's contents
# (not its path), the lr used (not None for the default), the tokens per step, the data files' names and sizes
RESOLVED_KEYS = {"scaling": "spec", "lr": "peak_lr", "batch_tokens": "tokens_per_step", "data": "data_files"}


def resolved_settings(cfg: TrainConfig, spec: Any, rows_per_step: int, files: list[Path]) -> dict[str, Any]:
    what = {k: v for k, v in spec.to_dict().items() if k != "meta"}  # a search's best.json rewritten with new figures
    return {"spec": what, "peak_lr": cfg.peak_lr, "tokens_per_step": rows_per_step * cfg.seq_len,
            "explicit_batch": cfg.batch_tokens is not None,
            "data_files": files_key(files)}


def _resume_diff(before: dict[str, Any], cfg: TrainConfig, old: dict[str, Any] | None,
                 new: dict[str, Any]) -> list[str]:
    """The settings a resume would change. Checkpoints written before `resolved` was kept compare options as typed."""
    raw = {k: v for k, v in cfg.to_dict().items() if k in TrainConfig.RESUME_KEYS}
    if old is None:
        return [f"{k} {before.get(k)!r} -> {v!r}" for k, v in raw.items() if _jsonish(before.get(k)) != _jsonish(v)]
    diff = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in raw.items()
            if k not in RESOLVED_KEYS and _jsonish(before.get(k)) != _jsonish(v)]
    for key, what in RESOLVED_KEYS.items():
        if what == "tokens_per_step" and not (old["explicit_batch"] or new["explicit_batch"]):
            continue  # one row per process on both sides: a resume on another number of processes may go on
        if _jsonish(old.get(what)) != _jsonish(new[what]):  # only this key's message: files_change reads file lists
            if what == "spec":
                diff.append(f"the scaling spec resolves to {_short(old['spec'])} -> {_short(new['spec'])}")
            elif what == "data_files":
                diff.append(f"data files (names and sizes) differ: {files_change(old[what], new[what])}")
            else:
                diff.append(f"{key} ({what}) {old.get(what)!r} -> {new[what]!r}")
    return diff


def _short(spec: dict[str, Any], width: int = 70) -> str:
    text = json.dumps(spec, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def _check_out(out: Path, cfg: TrainConfig, progress: dict[str, Any] | None, resolved: dict[str, Any]) -> None:
    """Refuse an --out that would be overwritten, and a --resume that cannot continue what --out holds."""
    if cfg.resume:  # without a complete checkpoint --resume starts from step 0 (one command serves every restart)
        if progress is None:
            return
        diff = _resume_diff(progress.get("config", {}), cfg, progress.get("resolved"), resolved)
        if diff:
            raise CtxextError(f"cannot --resume {out}: its checkpoint was written with other settings "
                              f"({'; '.join(diff)}); use the same settings or another --out")
        return
    if ckpt.find(out) is not None:
        raise CtxextError(f"{out} holds a checkpoint; pass --resume to continue it, or choose another --out")
    if (out / "spec.json").is_file():  # train's first file: a run that stopped before its first checkpoint
        raise CtxextError(f"{out} holds a run that stopped before its first checkpoint; pass --resume to start it "
                          "over there (from step 0), or choose another --out")
    if out.exists() and any(not is_lock(p) for p in out.iterdir()):
        raise CtxextError(f"--out {out} exists and is not empty; choose another folder")


def _check_eval_data(cfg: TrainConfig, tokenizer: Any) -> int:
    """The perplexity evaluation scores documents of --seq-len tokens (the tokenizer's start tokens included):
    -> how many of --eval-docs it will average (an error when none is long enough)."""
    from ..data import load_documents, special_prefix

    extra = len(special_prefix(tokenizer))
    lengths = [len(d) + extra for d in load_documents(list(cfg.eval_data), tokenizer)]
    longest = max(lengths, default=0)
    if longest < cfg.seq_len:
        raise CtxextError(f"--eval-data: no document holds --seq-len {cfg.seq_len:,} tokens (the longest has "
                          f"{longest:,}); give longer documents or leave --eval-data out")
    return min(cfg.eval_docs, sum(n >= cfg.seq_len for n in lengths))


def _jsonish(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def reset_peak_memory(device: str) -> None:
    """Start a new peak measurement: CUDA's allocator statistics, or the process's peak RSS (Linux clear_refs)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux (or not allowed): the peak then covers the whole process


def peak_memory(device: str) -> int:
    """Peak bytes since the last reset: torch.cuda.max_memory_allocated, or the peak RSS (VmHWM)."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def train(cfg: TrainConfig, on_step: Callable[[dict[str, Any]], None] | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run (or --resume) the training described by `cfg`; returns the summary written to OUT/results.json.
    `on_step(record)` is called on every process after each step (tests use it to interrupt). The main process
    holds OUT's lock once --out is checked: a second run into it is refused (their saves deleted each other's)."""
    with contextlib.ExitStack() as held:
        return _train(cfg, on_step, progress, held)


def _train(cfg: TrainConfig, on_step: Callable[[dict[str, Any]], None] | None, progress: bool,
           held: contextlib.ExitStack) -> dict[str, Any]:
    import torch
    from accelerate.utils import DistributedType
    from tqdm.auto import tqdm

    from .. import runinfo
    from ..data import data_files
    from ..progress import progress_bar

    acc = make_accelerator()
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    say = (lambda m: tqdm.write(m, file=sys.stderr)) if main else (lambda m: None)
    out = Path(cfg.out)
    dtype_kind = acc.distributed_type
    rows_per_step = cfg.rows_per_step(world)
    per_rank = rows_per_step // world
    if dtype_kind == DistributedType.DEEPSPEED and cfg.micro_batch < per_rank:
        raise CtxextError(f"with DeepSpeed, --micro-batch must cover the {per_rank} rows per process and step "
                          "(ctxext accumulates gradients itself, DeepSpeed's own accumulation is not wired in)")
    sharded = dtype_kind in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    device = str(acc.device)
    malloc_threshold = tune_malloc() if not device.startswith("cuda") else None  # before the weights are loaded
    plan = plan_run(cfg, min(cfg.micro_batch, per_rank), acc.mixed_precision == "bf16", world if sharded else 1,
                    malloc_tuned=malloc_threshold is not None)
    L = plan.export.original_len
    if cfg.mixed_window and cfg.seq_len % L:
        raise CtxextError(f"--mixed-window cuts rows into the original window: --seq-len {cfg.seq_len} must be a "
                          f"multiple of {L}")
    files = data_files(cfg.data or cfg.instruct)
    if cfg.eval_data:
        data_files(cfg.eval_data)
    resolved = resolved_settings(cfg, plan.spec, rows_per_step, files)
    prev = ckpt.read_progress(out) if cfg.resume else None
    _check_out(out, cfg, prev, resolved)
    if main:
        held.enter_context(out_lock(out, "train"))
    micro_desc = f"{min(cfg.micro_batch, per_rank)} × {cfg.seq_len:,} tokens per forward"
    say(f"ctxext train: {cfg.model} with {plan.spec.text}, {cfg.steps} steps of {rows_per_step} × {cfg.seq_len:,} "
        f"tokens on {world} process(es) ({dtype_kind.value}, {device}, "
        f"{'bf16 autocast' if acc.mixed_precision == 'bf16' else 'fp32'}) -> {out}")
    say(f"peak memory estimate per process ({micro_desc}): {plan.memory.describe()}")
    if cfg.check_memory:
        check_fits(plan.memory, device, f"training {cfg.model} at {micro_desc}")
    if cfg.evaluate and main:  # they run silently between steps and can cost more than the training
        from ..evals.cost import fmt_seconds
        from .evaluate import describe, estimate_seconds, evaluation_steps

        at = evaluation_steps(cfg)
        say(f"evaluation ({describe(cfg)}): ≈ {fmt_seconds(estimate_seconds(cfg))} each on this machine, {len(at)} "
            f"of them (steps {', '.join(map(str, at[:6]))}{', …' if len(at) > 6 else ''}); "
            "--no-eval or --passkey-trials to spend less")
    if (warning := warmup_warning(cfg.steps, cfg.warmup, cfg.peak_lr)) is not None:
        say(f"warning: {warning}")
    if cfg.seq_len <= L < plan.export.max_position_embeddings:
        say(f"warning: --seq-len {cfg.seq_len:,} is within the model's trained length {L:,}: no position past it is "
            f"trained, though the checkpoint will say {plan.export.max_position_embeddings:,}")
    if cfg.resume and prev is None:  # a save is complete once its progress.json exists: none finished yet
        broken = [p.name for p in ckpt.partial(out)]
        say(f"--resume: no complete checkpoint in {out}" + (f" (unfinished: {', '.join(broken)})" if broken else "")
            + ", starting from step 0")

    torch.manual_seed(cfg.seed)
    lm = build_model(cfg, plan.spec)
    with acc.main_process_first():
        if cfg.instruct:
            from .instruct import load_instruct

            rows = load_instruct(cfg.instruct, lm.tokenizer, cfg.seq_len, cfg.prompt_loss)
        else:
            rows = load_rows(cfg.data, lm.tokenizer, cfg.seq_len)
    if rows.n_rows < rows_per_step:  # every step then trains on copies of the same rows
        say(f"the data makes {rows.n_rows} row(s) of --seq-len {cfg.seq_len:,}, fewer than the {rows_per_step} of one "
            f"step: each step repeats rows (~{rows_per_step / rows.n_rows:.1f} times); give more data or a smaller "
            "--batch-tokens")
    if cfg.evaluate and cfg.eval_data:  # before any step or evaluation (it failed after step 0's, naming --lengths)
        if (n_eval := _check_eval_data(cfg, lm.tokenizer)) < cfg.eval_docs:
            say(f"--eval-data: {n_eval} document(s) hold --seq-len {cfg.seq_len:,} tokens, of the --eval-docs "
                f"{cfg.eval_docs} asked; the perplexity evaluation averages those")
    model, opt = acc.prepare(LossModel(lm.model, cfg.loss_chunk),
                             make_optimizer(param_groups(lm.model, cfg.weight_decay), cfg.peak_lr))
    sched = make_scheduler(opt.optimizer if hasattr(opt, "optimizer") else opt, cfg.steps, cfg.warmup,
                           cfg.schedule, cfg.min_lr_ratio)
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "spec.json"  # the spec as ctxext eval / export accept it (also for the mixed-window longrope)
    if main:
        from ..evals.files import write_json

        write_json(spec_file, plan.spec.to_dict())
    spec_arg = cfg.scaling if not cfg.mixed_window else str(spec_file)

    history: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    train_peak: list[int] = []  # peak memory of the steps (set-up, data and evaluation excluded)
    step, rows_done, elapsed = 0, 0, 0.0  # rows_done: position in the row order (rows per step vary with world)
    if prev is not None:
        where = ckpt.find(out)
        state = ckpt.load(out, acc, model, opt, sched)
        step, history, evals, elapsed = state["step"], state["history"], state["evals"], state["seconds"]
        train_peak += [state["peak_bytes"]] if state.get("peak_bytes") else []  # a resumed process may run no step
        rows_done = state.get("rows_consumed", step * rows_per_step)  # older checkpoints: the same world
        say(f"resumed from step {step}, row {rows_done:,} of the data order, from {where}"
            + ("" if where.name == ckpt.CKPT_DIR else " (left by a save that was cut off)"))

    if cfg.resume and main:  # evaluations the killed run made after its last checkpoint are redone from scratch
        from .evaluate import drop_unrecorded

        if dropped := drop_unrecorded(out, {e["step"] for e in evals}):
            say(f"--resume: dropped the evaluation(s) of step(s) {', '.join(map(str, dropped))}, which the "
                "checkpoint does not hold; they run again")
    acc.wait_for_everyone()
    host = _Host(acc, model, lm, cfg, plan.spec)
    host.progress = main and progress
    meta = {"versions": runinfo.versions(), "machine": runinfo.machine(), "command": cfg.command_line,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "seed": cfg.seed,
            "spec": plan.spec.text, "resolved_spec": plan.spec.to_dict(), "config": cfg.to_dict(),
            "processes": world, "distributed": dtype_kind.value, "device": device,
            "torch_threads": torch.get_num_threads(), "malloc_mmap_threshold": malloc_threshold,
            "mixed_precision": acc.mixed_precision, "memory_estimate": plan.memory.as_dict(),
            "rows": {"count": rows.n_rows, "documents": rows.n_documents, "rows_per_step": rows_per_step,
                     **({"instruct_examples": rows.n_documents, "scored_answer_tokens": rows.scored_answer_tokens,
                         "scored_prompt_tokens": rows.scored_prompt_tokens} if cfg.instruct else {})},
            "trainable_parameters": plan.n_trainable}

    def summary() -> dict[str, Any]:
        timed = history[1:] if len(history) > 1 else history  # the first step pays warm-up costs
        secs = sum(h["step_seconds"] for h in timed)
        pad = {}
        if cfg.instruct:  # rows end in padding, computed like any token: say how much, and the rate without it
            slots, padded = sum(h["step_tokens"] for h in history), sum(h.get("step_padding", 0) for h in history)
            real = sum(h["step_tokens"] - h.get("step_padding", 0) for h in timed)
            pad = {"padding_fraction": round(padded / slots, 4) if slots else None,
                   "tokens_per_second_without_padding": real / secs if secs else None}
        return {"steps_done": step, "steps": cfg.steps, "tokens": rows_done * cfg.seq_len,
                "final_loss": history[-1]["loss"] if history else None,
                "tokens_per_second": (sum(h["step_tokens"] for h in timed) / secs) if secs else None, **pad,
                "train_seconds": round(elapsed, 2),
                "peak_memory_gib": round(max(train_peak) / GIB, 3) if train_peak else None,
                "memory_estimate_gib": round(plan.memory.total / GIB, 3),
                "final": str(out / FINAL_DIR) if (out / FINAL_DIR / "config.json").is_file() else None}

    def progress_state() -> dict[str, Any]:
        return {"step": step, "rows_consumed": rows_done, "seconds": elapsed, "history": history,
                "evals": evals, "config": cfg.to_dict(), "resolved": resolved,
                "peak_bytes": max([*train_peak, peak_memory(device)])}  # this process's steps and earlier ones

    stepped = False  # steps ran in this process since the last peak reset

    def run_eval_at(s: int) -> None:
        nonlocal stepped
        if not cfg.evaluate or any(e["step"] == s for e in evals):
            return
        if stepped:  # the steps' peak so far; the evaluation's own is not the training's
            train_peak.append(peak_memory(device))
        records = host.evaluate(spec_arg, out, s)
        reset_peak_memory(device)
        stepped = False
        evals.append({"step": s, "records": records})
        if main:
            say(f"evaluation at step {s}: " + ", ".join(f"{k} {v:.4g}" for k, v in headline(records, cfg.seq_len).items()))
            write_reports(out, meta, history, evals, summary())

    if prev is not None and state.get("finished") and step >= cfg.steps and (out / FINAL_DIR / "config.json").is_file():
        say(f"{out} holds a finished run (step {step} of {cfg.steps}, evaluated, exported to {out / FINAL_DIR}): "
            "nothing to do")
        result = summary()
        if (saved := out / FINAL_DIR / "results.json").is_file():
            result["export_verification"] = json.loads(saved.read_text()).get("verification")
        acc.wait_for_everyone()
        return result
    if step == 0 or (cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps):
        run_eval_at(step)  # a checkpoint saved at an evaluation step is written before that evaluation runs
    reset_peak_memory(device)
    order = RowOrder(rows.n_rows, cfg.seed)
    bar = progress_bar(total=cfg.steps, initial=step, disable=not (main and progress), unit="step",
                       desc="train")
    interrupted = False
    with StopFlag() as stop:
        def stop_requested() -> bool:  # on every process alike, so all of them leave the loop at the same step
            return float(acc.reduce(torch.tensor(float(stop.requested), device=acc.device), "sum")) > 0

        while step < cfg.steps:
            if stop_requested():  # asked during an evaluation: save now, not after one more (long) step
                interrupted = True
                break
            t0 = time.perf_counter()
            short = cfg.mixed_window and is_short_step(step, cfg.short_fraction)
            step_rows = order.rows(rows_done, rows_per_step)
            idx = step_rows[rank * per_rank:(rank + 1) * per_rank]
            batch = model_inputs(rows.ids[idx], rows.starts[idx], L if short else None,
                                 getattr(rows, "targets", None)[idx] if cfg.instruct else None)
            lr = sched.get_last_lr()[0]
            loss = _optimizer_step(acc, model, opt, batch, cfg.micro_batch * (cfg.seq_len // L if short else 1),
                                   cfg.grad_clip)
            sched.step()
            if not math.isfinite(loss):
                raise CtxextError(f"the loss became {loss} at step {step + 1}; lower --lr (now {cfg.peak_lr:g})")
            step += 1
            stepped = True
            rows_done += rows_per_step
            dt_step = time.perf_counter() - t0
            elapsed += dt_step
            tokens = rows_per_step * cfg.seq_len
            rec = {"step": step, "loss": loss, "lr": lr, "tokens": rows_done * cfg.seq_len, "step_tokens": tokens,
                   "step_seconds": round(dt_step, 4), "short": short}
            if cfg.instruct:
                rec["step_padding"] = rows.padding(step_rows)
            history.append(rec)
            bar.update(1)
            bar.set_postfix_str(f"loss {loss:.4f}, lr {lr:.2e}, {tokens / dt_step:,.0f} tok/s", refresh=False)
            if on_step is not None:
                on_step(rec)
            if stop_requested():
                interrupted = True
                break
            if step % cfg.save_every == 0 and step < cfg.steps:
                ckpt.save(out, acc, model, opt, sched, progress_state())
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                run_eval_at(step)
    bar.close()
    if stepped:
        train_peak.append(peak_memory(device))
    ckpt.save(out, acc, model, opt, sched, progress_state())
    if interrupted:
        if main:
            write_reports(out, meta, history, evals, summary())
            say(f"stopped at step {step}; continue with the same command and --resume")
        raise KeyboardInterrupt
    run_eval_at(step)
    final = host.export(plan.export, out / FINAL_DIR, {**summary(), **headline(evals[-1]["records"], cfg.seq_len)}
                        if evals else summary())
    result = summary()
    if main:
        if final is not None:
            v = final["verification"]
            say(f"exported {out / FINAL_DIR}: stock transformers load, max |logit diff| "
                f"{v['max_abs_logit_diff']:.3g} ({'ok' if v['passed'] else 'MISMATCH'})")
            result["export_verification"] = v
        write_reports(out, meta, history, evals, result)
        if final is not None:
            ckpt.record_finished(out, progress_state())
    acc.wait_for_everyone()
    return result


def _optimizer_step(acc: Any, model: Any, opt: Any, batch: dict[str, Any], per_forward: int, grad_clip: float) -> float:
    """One optimizer step over this process's rows, `per_forward` rows per forward; -> the global mean token loss.

    Each forward's summed loss is scaled by world / (scored tokens of the global batch): after the engines average
    gradients over processes, the step is the one a single process would take on the whole global batch."""
    import torch
    from accelerate.utils import DistributedType

    world = acc.num_processes
    n_global = acc.reduce((batch["labels"] != IGNORE).sum().to(acc.device), "sum")
    ddp = acc.distributed_type in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    n_rows = batch["input_ids"].shape[0]
    loss_sum = torch.zeros((), device=acc.device)
    for s in range(0, n_rows, per_forward):
        mb = {k: v[s:s + per_forward].to(acc.device) for k, v in batch.items()}
        last = s + per_forward >= n_rows
        with (acc.no_sync(model) if ddp and not last else contextlib.nullcontext()):  # DDP: all-reduce once
            part, _ = model(**mb)
            acc.backward(part * (world / n_global))
        loss_sum += part.detach()
    if grad_clip:
        acc.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(acc.reduce(loss_sum, "sum") / n_global)


class _Host:
    """The full model on the main process, for evaluation and export: the trained model itself on one process or
    under DDP; under FSDP / DeepSpeed a copy on the main process into which the gathered weights are loaded."""

    def __init__(self, acc: Any, model: Any, lm: Any, cfg: TrainConfig, spec: Any):
        from accelerate.utils import DistributedType

        self.acc, self.model, self.live, self.cfg, self.spec = acc, model, lm, cfg, spec
        self.gather = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        self._copy: Any = None
        self.progress = False  # the evaluations' progress bar (on the main process, when train shows its own)

    def _lm(self) -> Any:
        """The LoadedModel to use now (collective under FSDP / DeepSpeed: every process must call it)."""
        if not self.gather:
            return self.live if self.acc.is_main_process else None
        state = self.acc.get_state_dict(self.model)  # full weights on the main process
        if not self.acc.is_main_process:
            return None
        if self._copy is None:
            self._copy = build_model(replace(self.cfg, grad_checkpointing=False), self.spec)
            self._copy.model.to(self.acc.device)
        self._copy.model.load_state_dict({k.removeprefix("lm."): v for k, v in state.items()})
        return self._copy

    def evaluate(self, spec_arg: str, out: Path, step: int) -> list[dict[str, Any]]:
        lm = self._lm()
        if lm is None:
            records = []
        else:
            with doc_attention.plain_sdpa(lm.model):
                records = evaluate(lm, spec_arg, self.cfg, out, step, progress=self.progress)
        self.acc.wait_for_everyone()
        return records

    def export(self, export_plan: Any, where: Path, figures: dict[str, Any]) -> dict[str, Any] | None:
        """Merge LoRA, write `where` as ctxext export does; the spec carries the run's figures to the model card."""
        import shutil

        import torch

        from ..export import export_loaded
        from .lora import merge_lora

        lm = self._lm()
        result = None
        if lm is not None:
            if self.cfg.lora:
                merge_lora(lm.model)
            lm.model.to("cpu", dtype=torch.float32).eval()
            # training switched the KV cache off (train.setup); the checkpoint keeps the source's setting, or stock
            # forwards return no cache and step-by-step decoding goes quadratic
            lm.model.config.use_cache = lm.info.config.get("use_cache", True)
            meta = {**self.spec.meta, "trained_with": f"ctxext train ({self.cfg.command_line or 'API'})",
                    **{label.format(n=self.cfg.seq_len): figures[k] for k, label in CARD_FIGURES.items()
                       if figures.get(k) is not None}}
            plan = replace(export_plan, spec=replace(export_plan.spec, meta=meta))
            if where.exists():
                shutil.rmtree(where)
            result = export_loaded(lm, plan, where)  # eval mode: doc_attention defers to transformers' SDPA
        self.acc.wait_for_everyone()
        return result
