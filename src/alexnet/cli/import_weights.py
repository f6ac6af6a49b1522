"""`alexnet import-weights SOURCE --out CKPT [--format torchvision|caffe-npy] [--json]`"""

from __future__ import annotations

import argparse
import json

from ..interop.download import KNOWN_WEIGHTS
from ..interop.importer import FORMATS, import_weights


def register(sub: argparse._SubParsersAction) -> None:
    known = "; ".join(f"{w.name}: {w.description}" for w in KNOWN_WEIGHTS.values())
    p = sub.add_parser(
        "import-weights", help="convert published AlexNet weights (torchvision, Caffe bvlc_alexnet.npy) to a checkpoint",
        description=f"SOURCE is a file, a URL or a known name, downloaded once into the cache ({known}).",
    )  # fmt: skip
    p.add_argument("source", metavar="SOURCE", help=f"weights file, URL, or one of: {', '.join(KNOWN_WEIGHTS)}")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--format", choices=FORMATS, default=None, help="input format (default: detected from the file)")
    p.add_argument("--cache-dir", default=None, help="where downloads go (default: $ALEXNET_CACHE or ~/.cache/alexnet)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = import_weights(args.source, args.out, format=args.format, cache=args.cache_dir)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        names = ", ImageNet class names" if result.class_names else ""
        print(f"wrote {result.out}: {result.arch}, {result.num_classes} classes{names} "
              f"(from {result.format} {result.source}, sha256 {result.sha256[:12]})")  # fmt: skip
    return 0
