"""One module per `ctxext` command, registered by one line in ctxext.cli.COMMANDS.

Contract: the module docstring's first line is the command's summary in `ctxext --help`;
`add_arguments(parser)` declares the options; `run(args) -> int` does the work and returns the exit
status. Import heavy packages (torch, transformers, matplotlib) inside `run`, never at module level,
so `--help` stays fast. Bad input raises ctxext.errors.CtxextError (printed as one line, exit 2).
`args.command_line` holds the command as typed, for the results' metadata.
"""

import argparse
from pathlib import Path


def check_dependent(args: argparse.Namespace, rules: tuple[tuple[str, str, str, str], ...]) -> None:
    """Refuse an option given without the one it acts with (it would be accepted and do nothing). rules: (dest,
    dest it needs, its flag, the needed flag); an option counts as given when it is not None/False, so such options
    default to None and the command fills the real default in."""
    from ..errors import CtxextError

    for dest, needs, flag, needed in rules:
        if getattr(args, dest) not in (None, False) and not getattr(args, needs):
            raise CtxextError(f"{flag} acts only with {needed}; add {needed} or drop {flag}")


def out_folder(text: str) -> str:
    """argparse type of an --out folder: refused at parse time when it, or a folder above it, is a file, or when the
    nearest existing folder cannot be written (each command crashed on it after loading weights, eval after
    computing a cell, which was lost)."""
    import tempfile

    path = Path(text).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise argparse.ArgumentTypeError(f"{p} is a file; choose a folder" if p == path else
                                                 f"{text} lies under {p}, which is a file; choose a folder")
            try:  # a real write: permission bits say nothing of read-only mounts or immutable folders (or root)
                tempfile.TemporaryFile(dir=p).close()
            except OSError as e:
                raise argparse.ArgumentTypeError(f"{text}: cannot write in {p} ({e.strerror or e})") from None
            break
    return text


def out_file(text: str) -> str:
    """argparse type of an --out file (synth-qa's .jsonl): its folder must be one that can be written."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file path")
    out_folder(str(path.parent))
    return text
