"""Facts recorded next to every result: versions and machine."""

from __future__ import annotations

import argparse
import os
import platform
import sys


def versions() -> dict[str, str]:
    import torch
    import transformers

    from . import __version__

    return {"ctxext": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0]}


def machine() -> dict[str, object]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}


def device_slug(device: str) -> str:
    """A device's name as it goes into a results file name: "NVIDIA H200" -> "nvidia-h200", "cpu" -> "cpu"."""
    return device.replace(" ", "-").lower()


def override_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace, values: dict[str, object]) -> None:
    """Set each option in values that was left at its default (a benchmark's --quick), keeping those the user gave."""
    for key, value in values.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)
