"""`alexnet probe SOURCE --data STORE [--layer fc7] [--per-class N] [--seeds S] [--cache DIR] [--json]`"""

from __future__ import annotations

import argparse
import json

from ..analysis.probe import probe
from ._args import add_checkpoint_arg, add_device_arg, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="the linear probe: logistic regression on one layer's features (fc7 by default), test accuracy",
        description="Fit a logistic regression on SOURCE's LAYER features of STORE's training images (its L2 weight "
        "chosen on the val split, or a held-out tenth of the training split), then report test accuracy, overall "
        "and per class. --per-class N trains on N images a class, drawn anew for each seed.",
    )
    add_checkpoint_arg(p, positional=True, help="the trained net: a checkpoint, a run folder or imported weights")
    p.add_argument("--data", required=True, help="a prepared dataset folder with train and test splits")
    p.add_argument("--layer", default="fc7", help="layer whose features are classified (default fc7; pool5, fc6, ...)")
    p.add_argument("--per-class", type=positive_int, default=None, help="training images per class (default: all)")
    p.add_argument("--seeds", type=positive_int, default=1, help="draws of the --per-class subset (default 1)")
    p.add_argument("--views", choices=("center", "flip"), default="center", help="features of the centre crop, or "
                   "the mean over it and its mirror")  # fmt: skip
    p.add_argument("--cache", metavar="DIR", help="keep the extracted features here and reuse them on the next probe")
    p.add_argument("--batch-size", type=positive_int, default=256)
    add_device_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = probe(args.checkpoint, args.data, layer=args.layer, per_class=args.per_class, seeds=args.seeds,
                   views=args.views, cache=args.cache, device=args.device, batch_size=args.batch_size,
                   progress=not args.no_progress)  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    size = f"{args.per_class} images a class" if args.per_class else "all training images"
    print(f"linear probe of {result.layer} ({result.dim} features), {size}, L2 chosen on {result.val_split}:")
    for r in result.results:
        print(f"  seed {r.seed}: test accuracy {r.test_accuracy:.4f} (L2 {r.l2:g}, validation {r.val_accuracy:.4f}, "
              f"{r.train_images} training images, {r.seconds:.1f} s)")  # fmt: skip
    spread = f" +- {result.std_test_accuracy:.4f}" if len(result.results) > 1 else ""
    print(f"test accuracy {result.mean_test_accuracy:.4f}{spread}")
    per = [sum(r.per_class_accuracy[k] for r in result.results) / len(result.results) for k in range(len(result.class_names))]
    print("per class: " + ", ".join(f"{n} {a:.3f}" for n, a in zip(result.class_names, per)))
    return 0
