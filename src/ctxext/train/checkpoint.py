"""Checkpoints that resume exactly: weights, optimizer, scheduler, step, data position, RNG states.

Layout of ``OUT/checkpoint`` (replaced atomically at every save)::

    state.pt        full (unsharded) trainable weights + AdamW state, keyed by parameter name; scheduler state
    rng-<rank>.pt   torch / CUDA / numpy / python RNG states of each process
    progress.json   step, rows consumed, loss history so far, the resolved config it was written with

Full state dicts (torch.distributed.checkpoint.state_dict with full_state_dict=True) are gathered to rank 0 and
read back by every rank, which slices its own shard: the same file resumes one process, DDP or FSDP, and on
another number of processes (a shared file system is assumed on several nodes). DeepSpeed keeps its own format
(accelerate's save_state into ``OUT/checkpoint/deepspeed``).
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

CKPT_DIR = "checkpoint"


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


def save(out: Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any, progress: dict[str, Any]) -> Path:
    """Write OUT/checkpoint on every rank (collective); returns its path."""
    from accelerate.utils import DistributedType

    final = out / CKPT_DIR
    tmp = out / f".{CKPT_DIR}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.save_state(str(tmp / "deepspeed"))
    else:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, _raw(optimizer), options=_options())
        if accelerator.is_main_process:
            torch.save({"model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict()},
                       tmp / "state.pt")
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "progress.json").write_text(json.dumps(progress, indent=1) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def load(out: Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore everything `save` wrote; returns progress.json."""
    from accelerate.utils import DistributedType

    path = out / CKPT_DIR
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.load_state(str(path / "deepspeed"))
    else:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        blob = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        set_state_dict(model, _raw(optimizer), model_state_dict=blob["model"], optim_state_dict=blob["optimizer"],
                       options=_options(strict=False))
        scheduler.load_state_dict(blob["scheduler"])
    rng = path / f"rng-{accelerator.process_index}.pt"
    if rng.is_file():  # absent when resuming on more processes than saved: those ranks keep their seeds
        set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((path / "progress.json").read_text())


def read_progress(out: Path) -> dict[str, Any] | None:
    f = out / CKPT_DIR / "progress.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _raw(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
