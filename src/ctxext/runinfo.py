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


def merged_machines(old: dict | None, now: dict | None) -> list[dict]:
    """The machines of a results file that merges runs: `old`'s (its `machines`, else its `machine`), then `now`
    when it is another (platform, processor and core count decide)."""
    old = old or {}
    seen = list(old.get("machines") or ([old["machine"]] if old.get("machine") else []))
    key = lambda m: (m.get("platform"), m.get("processor"), m.get("cpu_count"))  # noqa: E731
    if now and key(now) not in {key(m) for m in seen}:
        seen.append(now)
    return seen


def device_slug(device: str) -> str:
    """A device's name as it goes into a results file name: "NVIDIA H200" -> "nvidia-h200", "cpu" -> "cpu"."""
    return device.replace(" ", "-").lower()


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests of the options argv sets, whatever their value (one typed equal to its default counts too): argv
    is parsed again into a namespace whose every dest holds a marker, which argparse leaves where nothing is given."""
    marker = object()
    ns = argparse.Namespace(**{a.dest: marker for a in parser._actions if a.dest != argparse.SUPPRESS})
    parser.parse_known_args(argv, namespace=ns)
    return {k for k, v in vars(ns).items() if v is not marker}


def override_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace, values: dict[str, object],
                      argv: list[str] | None = None) -> None:
    """Set each option in values that the user did not give (a benchmark's --quick). With argv (the command line
    args was parsed from), an option typed on it is kept even when it equals its default; without, an option at
    its default value counts as not given."""
    given = given_options(parser, argv) if argv is not None else None
    for key, value in values.items():
        if given is not None and key in given:
            continue
        if given is not None or getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)


def refuse_other_setup(earlier: list[dict], now: dict, keys: tuple[str, ...] = ("model", "scaling")) -> None:
    """A benchmark merging its rows into a results file (keyed by length and variant, headed by one model in the
    README): refuse, as a one-line exit, a file whose runs had another model or scaling."""
    for m in earlier:
        differ = [f"{k} {m.get(k)!r} there, {now.get(k)!r} here" for k in keys if m.get(k) != now.get(k)]
        if differ:
            raise SystemExit(f"the results file holds runs of another setup ({'; '.join(differ)}): give this run its "
                             "own --out (or the same --model and --scaling)")
