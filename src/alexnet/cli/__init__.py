"""The `alexnet` command. Each subcommand lives in its own module with `register(subparsers)` and `run(args)`.

This is the only place that reads sys.argv, and user mistakes (AlexNetError) become one line
on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import AlexNetError
from ..runtime import tune_allocator
from . import (bench, evaluate, experiment, export, features, import_weights, neighbors, predict, prepare, serve, summary,
               train, verify, visualize)  # fmt: skip

# The subcommands, in the order of `alexnet --help`.
COMMANDS = (summary, prepare, verify, train, evaluate, predict, features, neighbors, visualize, experiment, export,
            import_weights, bench, serve)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet", description="AlexNet (Krizhevsky, Sutskever and Hinton, 2012): models, data, training, analyses."
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_allocator()  # before any tensor is allocated (see runtime.py)
    try:
        return int(args.func(args) or 0)
    except AlexNetError as exc:
        print(f"alexnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
