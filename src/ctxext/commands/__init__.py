"""One module per `ctxext` command, registered by one line in ctxext.cli.COMMANDS.

Contract: the module docstring's first line is the command's summary in `ctxext --help`;
`add_arguments(parser)` declares the options; `run(args) -> int` does the work and returns the exit
status. Import heavy packages (torch, transformers, matplotlib) inside `run`, never at module level,
so `--help` stays fast. Bad input raises ctxext.errors.CtxextError (printed as one line, exit 2).
`args.command_line` holds the command as typed, for the results' metadata.
"""

import argparse
from pathlib import Path


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
