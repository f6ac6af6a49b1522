"""The `alexnet` command. Each subcommand lives in its own module of this package, with
`register(subparsers)` and `run(args)`; a module is a command by being here (helpers start with
"_"), so adding a command is one module and its test. `alexnet --help` lists them by name.

This is the only place that reads sys.argv, and user mistakes (AlexNetError, and command lines
argparse refuses) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from .. import __version__
from ..errors import AlexNetError
from ..runtime import tune_allocator
from ._args import Parser, UsageError


def _commands() -> tuple[ModuleType, ...]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return tuple(importlib.import_module(f"{__name__}.{name}") for name in names)


COMMANDS = _commands()  # every command module, by name


def build_parser() -> Parser:
    parser = Parser(
        prog="alexnet", description="AlexNet (Krizhevsky, Sutskever and Hinton, 2012): models, data, training, analyses."
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.register(sub)
    return parser


def parse(parser: Parser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line's namespace. A command's key=value overrides may come anywhere on the line,
    after a flag too (argparse keeps a positional list together and calls later items unrecognised)."""
    args, extras = parser.parse_known_args(argv)
    if extras and isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extras):
        args.overrides += extras
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse(parser, argv)
    except UsageError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return 2
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
