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
    """argparse type of an --out folder: refused at parse time when it, or a folder above it, is a file (each command
    crashed on it after loading weights, eval after computing its cells)."""
    path = Path(text)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise argparse.ArgumentTypeError(f"{p} is a file; choose a folder" if p == path else
                                                 f"{text} lies under {p}, which is a file; choose a folder")
            break
    return text
