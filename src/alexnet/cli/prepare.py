"""`alexnet prepare SOURCE OUT [--size 256] [--classes A,B,...] [--workers N] [--json]`"""

from __future__ import annotations

import argparse
import json
import os

from ..data.prepare import PrepareOptions, prepare
from ._args import positive_int

SOURCE_HELP = (
    "a folder (ImageNet train/<wnid>/ + val/; ImageNet's archives as downloaded, read in place: "
    "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, ILSVRC2012_devkit_t12.tar.gz; "
    "a class-per-folder tree, idx files, cifar-10-batches-py), "
    "fashion-mnist[:PATH], cifar10[:PATH] (cifar-10-python.tar.gz or its folder; without PATH: downloaded, "
    "md5 checked), synthetic[:classes=10,per_class=50,size=32,channels=3,seed=0], "
    "or a prepared dataset (read as stored: for --classes or another --size)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="decode a dataset once into a packed uint8 store with labels and statistics")
    p.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    p.add_argument("out", metavar="OUT", help="output folder: OUT/<split>/ for each split, OUT/dataset.json last")
    p.add_argument("--size", type=positive_int, default=None,
                   help="short side to SIZE, then the central SIZE x SIZE crop (default 256; the images' own size "
                        "when every image is smaller and all share one short side; native for idx/CIFAR/synthetic)")  # fmt: skip
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 (gray) or 3 (RGB); default: RGB, or native")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, help="decoding processes (default: all cores)")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out this stratified fraction of train as 'val' (sources without a val split)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction draw")
    p.add_argument("--classes", type=class_list, default=(), metavar="A,B,...",
                   help="keep only these classes (folder names, wnids or class names), renumbered in the source's order; "
                        "SOURCE may be a prepared dataset, e.g. half of CIFAR-10's classes")  # fmt: skip
    p.add_argument("--devkit", default=None,
                   help="ImageNet devkit folder (holds data/ with the val ground truth, meta.mat or meta.txt); "
                        "with the archives, used instead of ILSVRC2012_devkit_t12.tar.gz")  # fmt: skip
    p.add_argument("--synsets", default=None, help="class names from a 'wnid name, synonyms' file (LOC_synset_mapping.txt)")
    p.add_argument("--download-dir", default=None, help="where fashion-mnist and cifar10 are downloaded (default: the alexnet cache folder)")
    p.add_argument("--min-side", type=positive_int, default=PrepareOptions.min_side, help="skip images whose short side is smaller")
    p.add_argument("--overwrite", action="store_true", help="replace a different, complete prepared dataset in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts = PrepareOptions(
        size=args.size, channels=args.channels, workers=args.workers, val_fraction=args.val_fraction, seed=args.seed,
        classes=args.classes, devkit=args.devkit, synsets=args.synsets, download_dir=args.download_dir, min_side=args.min_side,
        overwrite=args.overwrite, progress=not args.no_progress,
    )  # fmt: skip
    result = prepare(args.source, args.out, opts)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    state = "already complete" if result.get("already_complete") else f"done in {result['seconds']:.1f} s"
    for name, s in result["splits"].items():
        speed = f", {s['images_per_s']:.0f} images/s" if s.get("images_per_s") else ""
        print(f"{name}: {s['count']} images, {s['skipped']} skipped{speed} -> {s['path']}")
    print(f"{result['out']}: {result['kind']} {result['size']}x{result['size']}x{result['channels']}{size_note(result)}, "
          f"{result['num_classes']} classes, {result['skipped']} files skipped (see {result['report']}); {state}")  # fmt: skip
    if result.get("missing"):
        print(result["missing"])
    return 0


def class_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    if not names:
        raise argparse.ArgumentTypeError("give class names separated by commas")
    return names


def size_note(result: dict) -> str:
    """Why the store has its size, when --size did not say: native (and why) or the paper's default."""
    reason, detail = result.get("size_from"), result.get("size_detail")
    if reason == "native":
        return f" (native size: {detail}; --size to change)" if detail else " (native size)"
    if reason == "default":
        return " (default size: short side to 256)"
    return ""
