"""`alexnet bench {lrn,train,infer,loader,step,layers,serve} [...] [--json]`"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from ..bench import ABOVE, KINDS
from ..runtime import cpu_info
from ._args import device, non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed benchmarks against plain-PyTorch baselines, measured in one run")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    for kind, name in {**{k: f"alexnet.bench.{k}" for k in KINDS}, **ABOVE}.items():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        kp = kinds.add_parser(kind, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(kp)
        _shared_types(kp)
        kp.add_argument("--json", action="store_true", help="print the result as JSON")
        kp.set_defaults(func=run, bench_module=module)


# Integer flags of the bench kinds that count something (a kind has some of them): at least 1;
# --warmup may be 0.
COUNTS = ("batch", "batch_size", "repeats", "steps", "images", "classes", "decode_images", "store_batches", "size", "crop")


def _shared_types(kp: argparse.ArgumentParser) -> None:
    """The CLI's checked types for the flags the bench modules (a lower layer, which cannot import
    the CLI) declare as plain ints and strings: counts, --warmup and --device. Their --device keeps
    its default, cpu: the baselines and the peak probe are CPU figures."""
    types = {**dict.fromkeys(COUNTS, positive_int), "warmup": non_negative_int, "device": device}
    for action in kp._actions:  # argparse has no public way to change a declared argument's type
        if action.dest in types:
            action.type = types[action.dest]


def run(args: argparse.Namespace) -> int:
    result = args.bench_module.run(args)
    # Every figure names its CPU: the output's first line says which one (stderr under --json, whose
    # stdout is the JSON document; the document's env holds the same under "cpu").
    print(f"bench {args.kind} on {cpu_info().describe()}", file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(args.bench_module.format_result(result))
    return 0
