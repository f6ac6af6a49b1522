"""What several commands take, spelt and checked one way: the parser, the checkpoint, the device,
counts and ports.

- The checkpoint is `--checkpoint CKPT` (a checkpoint file or a run folder) in every command: a
  flag reads the same whatever else a command takes positionally (predict's IMAGE..., prepare's
  SOURCE OUT) and whether it is required (evaluate) or not (neighbors). `serve` and `export`,
  which took it positionally, still do (`alexnet serve RUN` is in scripts and the Makefile).
- The device defaults to `auto`: CUDA when there is one, else the CPU. On a laptop without a GPU
  that is the CPU it would have used anyway; on a GPU machine it is the GPU its owner bought, and
  `predict` and `serve` then give the same numbers as `evaluate` and `features` on the same
  machine. `--device cpu` keeps a command off the GPU. (`bench` keeps `cpu`: its baselines and
  peak are CPU figures, docs/benchmarks.md.)
- Counts are checked when parsed (`positive_int`, `non_negative_int`, `port`), and every parse
  error is one line and exit status 2, like every other user mistake.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

import torch

from ..errors import ConfigError

CHECKPOINT_HELP = "checkpoint file or run folder (best.pt, else last.pt)"


class UsageError(ConfigError):
    """A command line argparse refuses; `prog` is the (sub)command it belongs to."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (UsageError, which `main` prints; exit status 2) and
    which runs `after_parse` checks, for what argparse cannot say (a flag or a positional)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after_parse: list[Callable[[Parser, argparse.Namespace], None]] = []

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        for check in self.after_parse:
            check(self, ns)
        return ns, extras

    def error(self, message: str) -> NoReturn:
        # "argument --topk: must be >= 1, got 0" -> "--topk must be >= 1, got 0"
        message = re.sub(r"^argument (\S+): (must be .*)", r"\1 \2", message)
        raise UsageError(message, self.prog)


# ---------------------------------------------------------------- types
def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text[:40]!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a count: images, steps, neighbours, workers)."""
    value = _integer(text, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (0 meaning none: warm-up rounds, a step limit)."""
    value = _integer(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (a size limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text[:40]!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text[:40]}")
    return value


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free one) to 65535."""
    value = _integer(text, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {value}")
    return value


def device(text: str) -> str:
    """An argparse type: "auto" or a torch device name (cpu, cuda, cuda:1, mps); whether that device
    is present is checked when it is used (runtime.resolve_device)."""
    if text != "auto":
        try:
            torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N or mps, got {text[:40]!r}") from None
    return text


# ---------------------------------------------------------------- shared arguments
class _Once(argparse.Action):
    """Stores the value; the same value may come twice (a flag and its positional alias), two different ones not."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        if values is None:  # an absent optional positional
            return
        old = getattr(ns, self.dest, None)
        if old is not None and old != values:
            parser.error(f"two checkpoints given ({old} and {values}): give one, as --checkpoint CKPT")
        setattr(ns, self.dest, values)


def add_checkpoint_arg(p: argparse.ArgumentParser, *, required: bool = True, positional: bool = False,
                       help: str = CHECKPOINT_HELP) -> None:  # fmt: skip
    """`--checkpoint CKPT` as `args.checkpoint`; `positional`: also a bare CKPT, as `serve` and
    `export` took it before."""
    p.add_argument("--checkpoint", metavar="CKPT", action=_Once, default=None, help=help)
    if positional:
        p.add_argument("checkpoint", nargs="?", metavar="CKPT", action=_Once, default=None,
                       help="the same as --checkpoint CKPT (the older spelling)")  # fmt: skip
    if required:
        assert isinstance(p, Parser), "a command's parser comes from cli.build_parser"
        p.after_parse.append(_require_checkpoint)


def _require_checkpoint(p: Parser, ns: argparse.Namespace) -> None:
    if ns.checkpoint is None:
        p.error("the following arguments are required: --checkpoint CKPT")


def add_device_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", type=device, default=default,
                   help=f"auto (CUDA when there is one, else the CPU), cpu, cuda or cuda:N (default {default})")  # fmt: skip


def add_model_parallel_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-parallel", metavar="DEV0,DEV1", help="the paper's two-tower split over two devices")
