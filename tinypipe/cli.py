"""The `tinypipe` command line.

Heavy libraries (torch, diffusers, transformers) are imported inside the commands, so `--help`
starts fast.
"""

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__


def _demo(arguments: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(arguments.output))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `tinypipe` and its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="tinypipe",
        description="Fine-tune diffusion and causal-LM models and ship each result as a self-describing repo.",
    )
    parser.add_argument("--version", action="version", version=f"tinypipe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="Run the offline demo on the built-in tiny model.",
                               description="Run the offline demo on the built-in tiny model and write its repo.")
    demo.add_argument("--output", default="demo-output", help="Folder the demo writes its repo into (default: demo-output).")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `tinypipe` console script."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if not hasattr(arguments, "handler"):
        parser.print_help()
        return 2
    from .errors import TinypipeError

    try:
        return arguments.handler(arguments)
    except TinypipeError as error:
        print(f"tinypipe: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
