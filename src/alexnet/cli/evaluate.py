"""`alexnet evaluate --checkpoint CKPT --data STORE [--ten-crop] [--device auto] [--json]`"""

from __future__ import annotations

import argparse
import json

from ..evaluate import evaluate_checkpoint
from ._args import add_checkpoint_arg, add_device_arg, add_model_parallel_arg, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5 error, per-class accuracy and confusion matrix on a store")
    add_checkpoint_arg(p)
    p.add_argument("--data", required=True, help="a prepared dataset folder or one split of it")
    p.add_argument("--split", default=None, help="split to evaluate (default: val, else test)")
    views = p.add_mutually_exclusive_group()
    views.add_argument("--ten-crop", action="store_true", help="average softmax over the paper's ten crops")
    views.add_argument("--flip", action="store_true", help="average softmax over the centre crop and its mirror")
    p.add_argument("--batch-size", type=positive_int, default=128)
    add_device_arg(p)
    add_model_parallel_arg(p)
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result, store = evaluate_checkpoint(
        args.checkpoint, args.data, split=args.split,
        views="ten-crop" if args.ten_crop else "flip" if args.flip else "center",
        batch_size=args.batch_size, device=args.device, model_parallel=args.model_parallel,
    )  # fmt: skip
    d = result.to_dict()
    if args.json:
        d["class_names"] = store.class_names
        print(json.dumps(d, indent=2))
        return 0
    print(f"{d['n']} images, {d['views']} view(s): top-1 error {d['top1_error']:.4f} "
          f"(accuracy {d['top1_accuracy']:.4f}), top-5 error {d['top5_error']:.4f}, loss {d['loss']:.4f}")  # fmt: skip
    width = max(len(n) for n in store.class_names)
    for name, acc in zip(store.class_names, d["per_class_accuracy"]):
        print(f"  {name:<{width}}  {acc:.4f}")
    return 0
