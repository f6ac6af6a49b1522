"""The `alexnet` command. Each subcommand lives in its own module with `register(subparsers)`.

This is the only place that reads sys.argv, and user mistakes (AlexNetError) become one line
on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import AlexNetError

# subcommand -> module under alexnet.cli; the order is the order of `alexnet --help`.
COMMANDS = {
    "summary": "summary",
    "prepare": "prepare",
    "verify": "verify",
    "train": "train",
    "evaluate": "evaluate",
    "predict": "predict",
    "features": "features",
    "neighbors": "neighbors",
    "visualize": "visualize",
    "experiment": "experiment",
    "export": "export",
    "import-weights": "import_weights",
    "bench": "bench",
}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="alexnet", description="AlexNet (Krizhevsky, Sutskever and Hinton, 2012): models, data, training, analyses."
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module_name}":
                raise
            continue  # not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..runtime import tune_allocator

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
