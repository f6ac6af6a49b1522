"""Fig. 4 (section 6.1): the training images nearest a test image by fc7 distance are of its class,
though far from it in pixels; and the paper's suggestion, short binary codes, against exact search.

For test queries (drawn with seed 0) the database is the training split: precision@k (the share
of the k nearest with the query's class) by fc7 Euclidean distance and by raw-pixel distance,
the mean pixel distance from a query to each kind of neighbour (and to a random training image),
the figure (queries in the first column, neighbours after), and recall@k of Hamming search with
auto-encoder and LSH codes against exact fc7 search, with the speed-up (analysis/hashing.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ...data import Store
from ...errors import DataError
from ...figures import neighbors_grid
from ..features import FeatureSet, extract_features, open_features
from ..retrieval import exact_search
from ..retrieval_bench import benchmark_codes, format_benchmark, label_precision
from .common import Context, footer, header, pm, summary, write_outputs


class FlatPixels:
    """A store's images as (N, H*W*C) float32 rows, read on demand: the raw-pixel "features"."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.shape = (len(store), store.size * store.size * store.channels)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        return self.store.read(rows).reshape(len(rows), -1).astype(np.float32)


def precision_at_k(neighbors: np.ndarray, db_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Mean over queries of the share of their first k neighbours whose label is the query's."""
    return label_precision(np.asarray(neighbors)[:, :k], np.asarray(db_labels), np.asarray(query_labels))


def _features(ctx: Context, run: Path, split: str, limit: int | None) -> FeatureSet:
    folder = run / "explorer" / f"fc7-{split}-{limit or 'all'}"  # beside the run, as the explorer keeps its index
    try:
        fs = open_features(folder)
        if fs.meta.get("checkpoint") == str((run / "last.pt").resolve()):
            return fs
    except DataError:  # not there yet, or left unfinished: extract again
        shutil.rmtree(folder, ignore_errors=True)
    return extract_features(run / "last.pt", ctx.data, folder, layer="fc7", split=split, limit=limit, dtype="float32",
                            device="cpu", overwrite=True, progress=ctx.progress)  # fmt: skip


def run_retrieval(ctx: Context) -> dict[str, Any]:
    k, n_queries, bits = ctx.exp.options["k"], ctx.exp.options["queries"], ctx.exp.options["bits"]
    train_store = ctx.train_store
    arm = next(iter(ctx.exp.arms))
    pixels = FlatPixels(train_store)
    per_seed, first = [], None
    ctx.prefetch(ctx.arm_runs())  # its one arm
    for seed in range(ctx.seeds):
        rec = ctx.run(ctx.config(arm, seed), arm)
        run = Path(rec["run"])
        db = _features(ctx, run, "train", None)
        queries = _features(ctx, run, "test" if "test" in ctx.splits else "val", n_queries)
        q_store = queries.open_store()
        fc7 = exact_search(db.features, queries.features, k)
        row = {"seed": seed, "run": str(run), "test_error": rec.get("test_error"),
               "fc7_precision": precision_at_k(fc7.indices, db.labels, queries.labels, k)}  # fmt: skip
        if first is None:
            q_pixels = q_store.read(queries.indices).reshape(len(queries), -1).astype(np.float32)
            pix = exact_search(pixels, q_pixels, k)
            random_rows = np.random.default_rng(0).choice(len(pixels), len(queries))
            first = {"db": db, "queries": queries, "q_store": q_store, "fc7": fc7, "pix": pix, "q_pixels": q_pixels,
                     "pixel_precision": precision_at_k(pix.indices, train_store.labels, queries.labels, k),
                     "pixel_distance": {
                         "fc7 neighbours": _mean_distance(pixels, q_pixels, fc7.indices),
                         "pixel neighbours": float(pix.distances.mean()),
                         "random training images": _mean_distance(pixels, q_pixels, random_rows[:, None]),
                     }}  # fmt: skip
        per_seed.append(row)
    codes = benchmark_codes(first["db"], np.asarray(first["queries"].features, np.float32), first["queries"].labels,
                            bits=bits, k=k, progress=ctx.progress)  # fmt: skip
    results = ctx.finish({
        "k": k, "queries": len(first["queries"]), "database": len(first["db"]), "classes": train_store.num_classes,
        "seeds_runs": per_seed,
        "fc7_precision": summary([r["fc7_precision"] for r in per_seed]), "pixel_precision": first["pixel_precision"],
        "pixel_distance": first["pixel_distance"], "codes": codes,
    })  # fmt: skip
    folder = ctx.out / ctx.exp.name
    write_outputs(folder, results, format_retrieval(results))
    _draw(first, train_store, folder, k)
    return results


def _mean_distance(pixels: FlatPixels, q_pixels: np.ndarray, rows: np.ndarray) -> float:
    d = [np.linalg.norm(pixels[np.asarray(r)] - q, axis=1).mean() for q, r in zip(q_pixels, rows)]
    return float(np.mean(d))


def _draw(first: dict[str, Any], train_store: Store, folder: Path, k: int, count: int = 8) -> None:
    q = first["queries"]
    names = train_store.class_names
    shown = np.linspace(0, len(q) - 1, min(count, len(q))).astype(int)  # spread: stores keep a class's images together
    q_images = list(first["q_store"].read(q.indices[shown]))
    q_labels = [names[int(label)] for label in q.labels[shown]]
    for kind, found in (("fc7", first["fc7"]), ("pixels", first["pix"])):
        rows = found.indices[shown, :k]
        neighbors_grid(q_images, [list(train_store.read(r)) for r in rows], folder / f"neighbors-{kind}.png",
                       query_labels=q_labels,
                       neighbor_labels=[[names[int(train_store.labels[i])] for i in r] for r in rows])  # fmt: skip


def format_retrieval(results: dict[str, Any]) -> str:
    k = results["k"]
    d = results["pixel_distance"]
    lines = [*header(results),
             f"{results['queries']} test queries against {results['database']} training images:", "",
             f"| neighbours by | precision@{k} (same class) | mean pixel distance to the query |", "|---|---|---|",
             f"| fc7 (Euclidean) | {pm(results['fc7_precision'], 100.0, '%', 1)} | {d['fc7 neighbours']:.0f} |",
             f"| raw pixels (Euclidean) | {100 * results['pixel_precision']:.1f}% | {d['pixel neighbours']:.0f} |",
             f"| (a random training image) | {100 / results['classes']:.1f}% (chance) | {d['random training images']:.0f} |",
             "", "Binary codes against exact fc7 search (seed 0):", "", format_benchmark(results["codes"])]  # fmt: skip
    return "\n".join([*lines, "", footer(results)])
