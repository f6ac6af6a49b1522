"""`alexnet predict --checkpoint CKPT IMAGE... [--topk 5] [--device auto] [--json]`"""

from __future__ import annotations

import argparse
import json
import sys

from ..inference import Predictor
from ._args import add_checkpoint_arg, add_device_arg, add_model_parallel_arg, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes of image files, with the checkpoint's test preprocessing")
    add_checkpoint_arg(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=positive_int, default=5, help="classes per image (default 5)")
    p.add_argument("--views", choices=("center", "flip", "ten-crop"), default="center",
                   help="centre crop (default), centre + mirror, or the paper's ten crops")  # fmt: skip
    add_device_arg(p)
    add_model_parallel_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    predictor = Predictor.load(args.checkpoint, device=args.device, model_parallel=args.model_parallel)
    results = predictor.predict(args.images, args.topk, views=args.views)
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"alexnet predict: error: {r.path}: {r.error}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            if r.top is not None:
                print(r.path + ": " + ", ".join(f"{c} {p:.3f}" for c, p in r.top))
    return 1 if failed else 0
