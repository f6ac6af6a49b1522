"""`alexnet neighbors --features TRAIN (--query IMAGE... | --query-features Q) [-k 6] [--json] [--grid OUT.png]`

Also `--method hamming --bits 128` (search by binary codes, trained on first use and cached in
TRAIN/codes/) and `--benchmark --bits 64 128 256` (recall@k and speed-up against exact search).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np


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
    p.add_argument("--num-queries", type=int, default=None, help="use this many rows of Q, drawn at random (seed 0)")
    p.add_argument("--checkpoint", default=None, help="for --query: the model (default: the one TRAIN was made with)")
    p.add_argument("-k", type=int, default=6, help="neighbours per query (default 6)")
    p.add_argument("--method", choices=("exact", "hamming"), default="exact")
    p.add_argument("--backend", choices=("torch", "faiss"), default="torch", help="exact search backend")
    p.add_argument("--codes", choices=("autoencoder", "lsh"), default="autoencoder", help="binary code method")
    p.add_argument("--bits", type=int, nargs="+", default=[128], help="code length(s) (64-256 typical)")
    p.add_argument("--shortlist", type=int, default=0,
                   help="hamming: re-rank this many Hamming neighbours by exact distance (0: none)")  # fmt: skip
    p.add_argument("--retrain-codes", action="store_true", help="train the binary codes again, ignoring the cache")
    p.add_argument("--code-epochs", type=int, default=20, help="auto-encoder training epochs")
    p.add_argument("--benchmark", action="store_true",
                   help="compare binary codes (auto-encoder and LSH, each --bits) with exact search")  # fmt: skip
    p.add_argument("--grid", metavar="OUT.png", help="also draw the queries and their neighbours")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _queries(args: argparse.Namespace, fs: Any) -> tuple[np.ndarray, list[dict[str, Any]], Any, np.ndarray | None]:
    """Query vectors, a description of each, a way to get their images, and rows of TRAIN to exclude."""
    from ..analysis.features import image_features, open_features
    from ..errors import ConfigError

    if args.query:
        ckpt = args.checkpoint or fs.meta["checkpoint"]
        feats, images = image_features(ckpt, args.query, layer=fs.layer, views=fs.meta.get("views", "center"))
        return feats, [{"query": p} for p in args.query], lambda: list(images), None
    qfs = open_features(args.query_features)
    if qfs.layer != fs.layer or qfs.dim != fs.dim:
        raise ConfigError(f"query features are {qfs.layer} ({qfs.dim}-d), the database {fs.layer} ({fs.dim}-d)")
    rows = np.arange(len(qfs))
    if args.num_queries is not None:
        if args.num_queries < 1:
            raise ConfigError(f"--num-queries must be >= 1, got {args.num_queries}")
        rows = np.sort(np.random.default_rng(0).choice(len(qfs), min(args.num_queries, len(qfs)), replace=False))
    names = qfs.class_names
    desc = [{"query_row": int(r), "store_index": int(qfs.indices[r]), "label": int(qfs.labels[r]),
             "class": names[qfs.labels[r]] if names else None} for r in rows]  # fmt: skip
    exclude = None
    if qfs.meta.get("store") == fs.meta.get("store"):  # same images: a query must not find itself
        pos = {int(i): n for n, i in enumerate(fs.indices)}
        exclude = np.array([pos.get(int(qfs.indices[r]), -1) for r in rows], np.int64)
    return np.asarray(qfs.features[rows], np.float32), desc, lambda: list(qfs.open_store().read(qfs.indices[rows])), exclude


def run(args: argparse.Namespace) -> int:
    from ..analysis.features import open_features
    from ..errors import ConfigError

    if args.k < 1:
        raise ConfigError(f"-k must be >= 1, got {args.k}")
    fs = open_features(args.features)
    queries, desc, query_images, exclude = _queries(args, fs)
    if args.benchmark:
        return _benchmark(args, fs, queries, desc, exclude)
    if len(args.bits) != 1:
        raise ConfigError("several --bits only make sense with --benchmark")
    found = _search(args, fs, queries, exclude)
    names = fs.class_names
    results = []
    for d, idx, dist in zip(desc, found.indices, found.distances):
        nbs = [{"row": int(r), "store_index": int(fs.indices[r]), "label": int(fs.labels[r]),
                "class": names[fs.labels[r]] if names else None, "distance": float(x)} for r, x in zip(idx, dist)]  # fmt: skip
        results.append({**d, "neighbors": nbs})
    if args.grid:
        _grid(args.grid, fs, found.indices, desc, query_images)
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


def _search(args: argparse.Namespace, fs: Any, queries: np.ndarray, exclude: np.ndarray | None) -> Any:
    from ..analysis.retrieval import Neighbors, exact_search

    if args.method == "exact":
        return exact_search(fs.features, queries, args.k, backend=args.backend, exclude=exclude)
    from ..analysis.hashing import hamming_search
    from ..analysis.retrieval_bench import codes_for

    hasher, codes = codes_for(fs, args.bits[0], args.codes, retrain=args.retrain_codes, progress=not args.no_progress,
                              epochs=args.code_epochs)  # fmt: skip
    extra = 0 if exclude is None else 1
    found = hamming_search(codes, hasher.encode(queries), args.k + extra, features=fs.features, queries=queries,
                           shortlist=args.shortlist)  # fmt: skip
    if exclude is None:
        return found
    keep = [np.flatnonzero(row != e)[: args.k] for row, e in zip(found.indices, exclude)]
    return Neighbors(np.stack([r[m] for r, m in zip(found.indices, keep)]),
                     np.stack([d[m] for d, m in zip(found.distances, keep)]))  # fmt: skip


def _grid(out: str, fs: Any, indices: np.ndarray, desc: list[dict[str, Any]], query_images: Any) -> None:
    from ..errors import ConfigError
    from ..figures import neighbors_grid

    if len(desc) > 16:
        raise ConfigError(f"--grid draws at most 16 queries, got {len(desc)}; pass --num-queries")
    store = fs.open_store()
    names = fs.class_names
    nb_images = [list(store.read(fs.indices[row])) for row in indices]
    nb_labels = [[names[fs.labels[r]] if names else str(fs.labels[r]) for r in row] for row in indices]
    q_labels = [d.get("class") or d.get("query", "").rsplit("/", 1)[-1] for d in desc]
    neighbors_grid(query_images(), nb_images, out, query_labels=q_labels, neighbor_labels=nb_labels)


def _benchmark(args: argparse.Namespace, fs: Any, queries: np.ndarray, desc: list[dict[str, Any]],
               exclude: np.ndarray | None) -> int:  # fmt: skip
    from ..analysis.retrieval_bench import benchmark_codes, format_benchmark

    labels = np.array([d["label"] for d in desc]) if desc and "label" in desc[0] else None
    result = benchmark_codes(fs, queries, labels, bits=args.bits, k=args.k, shortlist=args.shortlist or 100,
                             exclude=exclude, retrain=args.retrain_codes, progress=not args.no_progress,
                             epochs=args.code_epochs)  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else format_benchmark(result))
    return 0
