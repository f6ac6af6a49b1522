"""`alexnet neighbors --features TRAIN (--query IMAGE... | --query-features Q) [-k 6] [--json] [--grid OUT.png]`

Also `--method hamming --bits 128` (search by binary codes, trained on first use and cached in
TRAIN/codes/) and `--benchmark --bits 64 128 256` (recall@k and speed-up against exact search).
"""

from __future__ import annotations

import argparse
import json

from ..analysis import neighbors
from ..analysis.features import open_features
from ..analysis.retrieval_bench import benchmark_codes, format_benchmark
from ..errors import ConfigError
from ._args import add_checkpoint_arg, non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "neighbors",
        help="nearest training images by fc7 distance (Fig. 4); binary codes and their benchmark",
        description="Queries are image files (their features computed with the checkpoint the features came "
        "from) or rows of another feature folder. When the query features come from the same store as "
        "TRAIN, each query's own image is left out of its neighbours.",
    )
    p.add_argument("--features", required=True, metavar="TRAIN", help="feature folder of the database (alexnet features)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", nargs="+", metavar="IMAGE", help="query image files")
    q.add_argument("--query-features", metavar="Q", help="feature folder whose rows are the queries")
    p.add_argument("--num-queries", type=positive_int, default=None, help="use this many rows of Q, drawn at random (seed 0)")
    add_checkpoint_arg(p, required=False, help="for --query: the model (default: the one TRAIN was made with)")
    p.add_argument("-k", type=positive_int, default=6, help="neighbours per query (default 6)")
    p.add_argument("--method", choices=("exact", "hamming"), default="exact")
    p.add_argument("--backend", choices=("torch", "faiss"), default="torch", help="exact search backend")
    p.add_argument("--codes", choices=("autoencoder", "lsh"), default="autoencoder", help="binary code method")
    p.add_argument("--bits", type=positive_int, nargs="+", default=[128], help="code length(s) (64-256 typical)")
    p.add_argument("--shortlist", type=non_negative_int, default=0,
                   help="hamming: re-rank this many Hamming neighbours by exact distance (0: none)")  # fmt: skip
    p.add_argument("--retrain-codes", action="store_true", help="train the binary codes again, ignoring the cache")
    p.add_argument("--code-epochs", type=positive_int, default=20, help="auto-encoder training epochs")
    p.add_argument("--benchmark", action="store_true",
                   help="compare binary codes (auto-encoder and LSH, each --bits) with exact search")  # fmt: skip
    p.add_argument("--grid", metavar="OUT.png", help="also draw the queries and their neighbours")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fs = open_features(args.features)
    queries = neighbors.queries(fs, images=args.query, features=args.query_features, count=args.num_queries,
                                checkpoint=args.checkpoint)  # fmt: skip
    if args.benchmark:
        result = benchmark_codes(fs, queries.vectors, queries.labels, bits=args.bits, k=args.k,
                                 shortlist=args.shortlist or 100, exclude=queries.exclude, retrain=args.retrain_codes,
                                 progress=not args.no_progress, epochs=args.code_epochs)  # fmt: skip
        print(json.dumps(result, indent=2) if args.json else format_benchmark(result))
        return 0
    if len(args.bits) != 1:
        raise ConfigError("several --bits only make sense with --benchmark")
    found = neighbors.search(fs, queries.vectors, args.k, exclude=queries.exclude, method=args.method,
                             backend=args.backend, bits=args.bits[0], codes=args.codes, shortlist=args.shortlist,
                             retrain_codes=args.retrain_codes, code_epochs=args.code_epochs,
                             progress=not args.no_progress)  # fmt: skip
    results = [{**d, "neighbors": nbs} for d, nbs in zip(queries.described, neighbors.describe(fs, found))]
    if args.grid:
        neighbors.draw(args.grid, fs, found, queries)
    if args.json:
        print(json.dumps({"features": str(fs.path), "layer": fs.layer, "method": args.method, "k": args.k,
                          "results": results, **({"grid": args.grid} if args.grid else {})}, indent=2))  # fmt: skip
        return 0
    unit = "hamming" if args.method == "hamming" and args.shortlist <= args.k else "L2"
    for r in results:
        head = r.get("query") or f"row {r['query_row']} ({r['class'] or r['label']})"
        print(head + ": " + ", ".join(f"{n['store_index']} {n['class'] or n['label']} ({unit} {n['distance']:.3g})"
                                      for n in r["neighbors"]))  # fmt: skip
    if args.grid:
        print(f"grid: {args.grid}")
    return 0
