"""`weibo-sentiment` command line: a thin layer over the library API.

One module per command family, each adding its subcommands to the parser and holding the functions that run
and print them (the layout of torchtune's `_cli`); `options` holds the option groups several commands share.
The library is imported inside the run functions, so that `--help` and argument errors come back fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from ..errors import UserError
from . import evaluate, feedback, models, predict, select, serve, train


def quiet_libraries() -> None:
    # Our own log lines say what happens; transformers' load reports and per-shard bars are noise here.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers|peft")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weibo-sentiment",
        description="Chinese Weibo sentiment with GPT-2 + LoRA: train, evaluate, predict.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library log messages too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # the order `--help` lists the commands in
    for family in (train, evaluate, predict, models, serve, feedback, select):
        family.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not args.verbose:
        quiet_libraries()
    try:
        return args.func(args)
    except UserError as e:
        if not getattr(e, "echo", False):  # an echo: another process of a torchrun job has said it already
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
