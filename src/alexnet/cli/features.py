"""`alexnet features --checkpoint CKPT --data STORE [--split train] --layer fc7 --out FEATURES [--device auto]`"""

from __future__ import annotations

import argparse
import json

from ..analysis.features import extract_features
from ._args import add_checkpoint_arg, add_device_arg, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features",
        help="activations of a named layer (fc7: the paper's 4096-d vector) for a whole store, memory-mapped",
        description="Write FEATURES/features.npy (N, D), labels.npy, indices.npy and meta.json. Layers: paper names "
        "(conv1..conv5, pool5, fc6, fc7, fc8: outputs after the nonlinearity) or module paths.",
    )
    add_checkpoint_arg(p)
    p.add_argument("--data", required=True, help="a prepared dataset folder or one split of it")
    p.add_argument("--split", default=None, help="split of a dataset folder (default train: the retrieval database)")
    p.add_argument("--layer", default="fc7", help="layer name (default fc7)")
    p.add_argument("--out", required=True, help="feature folder to create")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="storage type (default float16: half the disk, fc7 keeps ~3 significant digits)")  # fmt: skip
    p.add_argument("--views", choices=("center", "flip"), default="center",
                   help="centre crop, or the mean of the centre crop and its mirror")  # fmt: skip
    p.add_argument("--limit", type=positive_int, default=None, help="only this many images, drawn at random (seed 0)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    add_device_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the folder's metadata as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fs = extract_features(
        args.checkpoint, args.data, args.out, layer=args.layer, split=args.split, dtype=args.dtype,
        views=args.views, batch_size=args.batch_size, limit=args.limit, device=args.device,
        overwrite=args.overwrite, progress=not args.no_progress,
    )  # fmt: skip
    if args.json:
        print(json.dumps({k: v for k, v in fs.meta.items() if k != "class_names"}, indent=2))
    else:
        m = fs.meta
        print(f"{m['count']} x {m['dim']} {m['dtype']} {m['layer']} features of {m['split']} "
              f"({m['seconds']:.1f} s, {m['count'] / max(m['seconds'], 1e-9):.0f} images/s) -> {fs.path}")  # fmt: skip
    return 0
