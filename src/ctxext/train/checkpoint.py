"""Checkpoints that resume exactly: weights, optimizer, scheduler, step, data position, RNG states.

Layout of ``OUT/checkpoint``::

    state.pt        full (unsharded) trainable weights + AdamW state, keyed by parameter name; scheduler state
    rng-<rank>.pt   torch / CUDA / numpy / python RNG states of each process
    progress.json   step, rows consumed, loss history so far, the resolved config it was written with

Full state dicts (torch.distributed.checkpoint.state_dict with full_state_dict=True) are gathered to rank 0 and
read back by every rank, which slices its own shard: the same file resumes one process, DDP or FSDP, and on
another number of processes (a shared file system is assumed on several nodes). DeepSpeed keeps its own format
(accelerate's save_state into ``OUT/checkpoint/deepspeed``, which holds no unregistered scheduler) and the
scheduler state in ``scheduler.pt``.

A save writes ``OUT/.checkpoint.tmp`` with progress.json last (so its presence marks a finished save), moves the
previous checkpoint aside to ``OUT/.checkpoint.old``, renames the new one into place and only then deletes the
old one: a process killed at any point leaves at least one complete checkpoint, which `find` picks up.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CtxextError

CKPT_DIR = "checkpoint"
TMP_DIR = f".{CKPT_DIR}.tmp"  # a save in progress; complete once its progress.json exists
OLD_DIR = f".{CKPT_DIR}.old"  # the previous checkpoint, while the new one is renamed into place
PROGRESS = "progress.json"


def find(out: Path) -> Path | None:
    """The newest complete checkpoint in `out`, None when there is none. Usually OUT/checkpoint; after a save
    killed half-way, its finished .checkpoint.tmp (newer than any other: a save starts by deleting the last one)
    or else .checkpoint.old."""
    for name in (TMP_DIR, CKPT_DIR, OLD_DIR):
        if (out / name / PROGRESS).is_file():
            return out / name
    return None


def partial(out: Path) -> list[Path]:
    """Checkpoint folders in `out` that are not complete (a save killed before it wrote progress.json)."""
    return [out / n for n in (CKPT_DIR, TMP_DIR, OLD_DIR) if (out / n).exists() and not (out / n / PROGRESS).is_file()]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True, **kw)


def _settle(out: Path) -> None:
    """(Main process, before a save.) Finish what a killed save left: the newest complete checkpoint becomes
    OUT/checkpoint and the rest is deleted; a kill between any two of these operations leaves one complete."""
    final, best = out / CKPT_DIR, find(out)
    if best is not None and best != final:
        shutil.rmtree(final, ignore_errors=True)  # incomplete
        os.replace(best, final)
    for name in (TMP_DIR, OLD_DIR):
        shutil.rmtree(out / name, ignore_errors=True)


def save(out: Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any, progress: dict[str, Any]) -> Path:
    """Write OUT/checkpoint on every rank (collective); returns its path."""
    from accelerate.utils import DistributedType

    final, tmp, old = out / CKPT_DIR, out / TMP_DIR, out / OLD_DIR
    if accelerator.is_main_process:
        _settle(out)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.save_state(str(tmp / "deepspeed"))
        if accelerator.is_main_process:
            torch.save({"scheduler": scheduler.state_dict()}, tmp / "scheduler.pt")
    else:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, _raw(optimizer), options=_options())
        if accelerator.is_main_process:
            torch.save({"model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict()},
                       tmp / "state.pt")
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        part = tmp / f"{PROGRESS}.part"
        part.write_text(json.dumps(progress, indent=1) + "\n")
        os.replace(part, tmp / PROGRESS)  # last: from here on the new checkpoint is complete
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def record_finished(out: Path, progress: dict[str, Any]) -> None:
    """Rewrite the newest checkpoint's progress.json (main process) with the finished run's state, its final
    evaluation included and `finished` set: the checkpoint was saved before that evaluation and the export, so a
    --resume of a finished run redid both (a whole evaluation at 32k)."""
    path = find(out)
    if path is None:
        return
    part = path / f"{PROGRESS}.part"
    part.write_text(json.dumps({**progress, "finished": True}, indent=1) + "\n")
    os.replace(part, path / PROGRESS)


def load(out: Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore everything `save` wrote, from `find(out)`; returns its progress.json."""
    from accelerate.utils import DistributedType

    path = find(out)
    if path is None:
        raise CtxextError(f"no complete checkpoint in {out}")
    progress = json.loads((path / PROGRESS).read_text())
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.load_state(str(path / "deepspeed"))
        if (path / "scheduler.pt").is_file():
            scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False)["scheduler"])
        else:  # written before scheduler.pt existed: the schedule is a function of the step alone
            _advance(scheduler, progress["step"])
    else:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        blob = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        set_state_dict(model, _raw(optimizer), model_state_dict=blob["model"], optim_state_dict=blob["optimizer"],
                       options=_options(strict=False))
        scheduler.load_state_dict(blob["scheduler"])
    rng = path / f"rng-{accelerator.process_index}.pt"
    if rng.is_file():  # absent when resuming on more processes than saved: those ranks keep their seeds
        set_rng_state(torch.load(rng, weights_only=False))
    return progress


def _advance(scheduler: Any, steps: int) -> None:
    """Step a fresh scheduler `steps` times without an optimizer step (torch warns about the order)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps - scheduler.last_epoch):
            scheduler.step()


def read_progress(out: Path) -> dict[str, Any] | None:
    path = find(out)
    return json.loads((path / PROGRESS).read_text()) if path is not None else None


def _raw(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
