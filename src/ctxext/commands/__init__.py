"""One module per `ctxext` command, registered by one line in ctxext.cli.COMMANDS.

Contract: the module docstring's first line is the command's summary in `ctxext --help`;
`add_arguments(parser)` declares the options; `run(args) -> int` does the work and returns the exit
status. Import heavy packages (torch, transformers, matplotlib) inside `run`, never at module level,
so `--help` stays fast. Bad input raises ctxext.errors.CtxextError (printed as one line, exit 2).
`args.command_line` holds the command as typed, for the results' metadata.
"""
