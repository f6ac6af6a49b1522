"""`alexnet summary --arch NAME [--input 224] [--json]`"""

from __future__ import annotations

import argparse
import json

from ..models import create_model, list_models
from ..summary import summarize
from ._args import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="per-layer shapes, parameters, multiply-adds and neurons of a model")
    p.add_argument("--arch", default="alexnet", help=f"model name ({', '.join(list_models())})")
    p.add_argument("--input", type=positive_int, default=None, help="input side in pixels (default: the model's own)")
    p.add_argument("--num-classes", type=positive_int, default=None, help="classes (default: the model's own)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = create_model(args.arch, num_classes=args.num_classes)
    summary = summarize(model, input_size=args.input, arch=args.arch)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.format())
    return 0
