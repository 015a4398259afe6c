"""`ctxext <command>`: a thin dispatcher. Each command is one module in ctxext.commands with
`add_arguments(parser)` and `run(args) -> int`; only the module of the command given is imported,
so `ctxext plan --help` stays fast. Adding a command is one line in COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from types import ModuleType

from . import __version__
from .errors import CtxextError, did_you_mean

COMMANDS: dict[str, str] = {
    "plan": "ctxext.commands.plan",
    "export": "ctxext.commands.export",
    "eval": "ctxext.commands.eval",
    "train": "ctxext.commands.train",
    "search": "ctxext.commands.search",
    "synth-qa": "ctxext.commands.synth_qa",
    "demo": "ctxext.commands.demo",
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name])


def _summary(name: str, mod: ModuleType) -> str:
    """First docstring line, without a leading '`ctxext NAME`: '."""
    first = (mod.__doc__ or "").strip().partition("\n\n")[0]  # the first paragraph: a line can wrap mid-sentence
    return " ".join(first.split()).removeprefix(f"`ctxext {name}`:").strip()


class _Parser(argparse.ArgumentParser):
    """Option errors in one line, as ctxext's own (argparse printed the whole usage block first)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s sub-parser only (all commands when None, for `ctxext --help`)."""
    parser = _Parser(
        prog="ctxext", description="Extend the context window of pretrained language models.",
        epilog="`ctxext COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"ctxext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [command] if command else list(COMMANDS):
        mod = _load(name)
        p = sub.add_parser(name, help=_summary(name, mod), description=(mod.__doc__ or "").strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        if command is not None and command not in COMMANDS:
            raise CtxextError(f"unknown command '{command}'{did_you_mean(command, list(COMMANDS))}; "
                              f"accepted: {', '.join(COMMANDS)}")
        parser = build_parser(command)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        args.command_line = "ctxext " + shlex.join(argv)
        return int(args._run(args) or 0)
    except CtxextError as e:
        print(f"ctxext: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctxext: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a file system refusal found late (a disk that filled, a folder made read-only meanwhile)
        print(f"ctxext: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
