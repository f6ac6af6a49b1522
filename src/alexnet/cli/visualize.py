"""`alexnet visualize {kernels,neighbors,predictions,curves} ... --out FIG.png`"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis import neighbors
from ..analysis.experiments.fig3 import describe_towers
from ..analysis.features import open_features
from ..data.store import open_split
from ..errors import AlexNetError, DataError
from ..figures import conv1_kernels, predictions_grid, training_curves
from ..inference import Predictor
from ..train.rundir import RunDir
from ._args import add_checkpoint_arg, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="figures: conv1 kernels (Fig. 3), neighbours (Fig. 4), top-5 bars, curves")
    kinds = p.add_subparsers(dest="figure", metavar="FIGURE")
    kinds.required = True

    k = kinds.add_parser("kernels", help="conv1's kernels as colour images, the two towers side by side (Fig. 3), "
                         "and how colourful each half is")
    add_checkpoint_arg(k)
    k.add_argument("--towers", type=positive_int, default=None, help="groups to split the kernels into (default: from conv2)")
    k.set_defaults(func=_kernels)

    n = kinds.add_parser("neighbors", help="query images and their nearest training images by fc7 distance (Fig. 4)")
    n.add_argument("--features", required=True, metavar="TRAIN", help="feature folder of the training images")
    q = n.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", nargs="+", metavar="IMAGE", help="query image files")
    q.add_argument("--query-features", metavar="Q", help="feature folder whose rows are the queries")
    n.add_argument("--num-queries", type=positive_int, default=8, help="rows of Q drawn at random, seed 0 (default 8)")
    n.add_argument("-k", type=positive_int, default=6, help="neighbours per query (default 6)")
    add_checkpoint_arg(n, required=False, help="for --query: the model (default: the features' own)")
    n.set_defaults(func=_neighbors)

    pr = kinds.add_parser("predictions", help="test images with their top-5 predictions as bars")
    add_checkpoint_arg(pr)
    pr.add_argument("--data", required=True, help="a prepared dataset folder or one split of it")
    pr.add_argument("--split", default=None, help="split (default: val, else test)")
    pr.add_argument("--count", type=positive_int, default=12, help="images, drawn at random (default 12)")
    pr.add_argument("--seed", type=int, default=0)
    pr.set_defaults(func=_predictions)

    c = kinds.add_parser("curves", help="training curves of a run folder (error and loss, lr drops marked)")
    c.add_argument("--run", required=True, help="run folder (metrics.jsonl)")
    c.set_defaults(func=_curves)

    for sp in (k, n, pr, c):
        sp.add_argument("--out", required=True, metavar="FIG.png", help="PNG file to write")


def _done(path: Path) -> int:
    print(f"wrote {path}")
    return 0


def _kernels(args: argparse.Namespace) -> int:
    weight, towers = Predictor.load(args.checkpoint, device="cpu").conv1()
    code = _done(conv1_kernels(weight, args.out, towers=args.towers or towers))
    if weight.shape[1] == 3 and len(weight) % 2 == 0:  # Fig. 3's question: is one tower the colour one?
        print(describe_towers(weight))
    return code


def _neighbors(args: argparse.Namespace) -> int:
    fs = open_features(args.features)
    queries = neighbors.queries(fs, images=args.query, features=args.query_features, count=args.num_queries,
                                checkpoint=args.checkpoint)  # fmt: skip
    found = neighbors.search(fs, queries.vectors, args.k, exclude=queries.exclude)
    return _done(neighbors.draw(args.out, fs, found, queries))


def _predictions(args: argparse.Namespace) -> int:
    predictor = Predictor.load(args.checkpoint, device="cpu")
    images, top, truth = predictor.sample(open_split(args.data, args.split), args.count, seed=args.seed)
    return _done(predictions_grid(images, top, args.out, truth=truth))


def _curves(args: argparse.Namespace) -> int:
    run = RunDir(args.run)
    metrics = run.metrics()
    if not metrics:
        raise DataError(f"{args.run} has no metrics.jsonl records: not a run folder, or nothing logged yet")
    title = ""
    try:
        cfg = run.read_config()
        title = f"{cfg.get('model', {}).get('arch', '')} on {Path(str(cfg.get('data_path', ''))).name}"
    except AlexNetError:  # a metrics file without its config.yaml still makes a plot, untitled
        pass
    return _done(training_curves(metrics, args.out, title=title))
