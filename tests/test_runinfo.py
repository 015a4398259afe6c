"""ctxext.runinfo: a benchmark's --quick replaces only the options the user left at their defaults."""

import argparse

from ctxext.runinfo import override_defaults


def test_override_defaults_keeps_options_given_on_the_command_line():
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--out", default="full.json")
    args = p.parse_args(["--trials", "7"])
    override_defaults(p, args, {"length": 4096, "trials": 2, "out": "quick.json"})
    assert (args.length, args.trials, args.out) == (4096, 7, "quick.json")
