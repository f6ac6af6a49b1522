"""Image retrieval as the paper's Fig. 4 does it: queries, their nearest training images by fc7
distance (or by short binary codes), described and drawn. Used by `alexnet neighbors`,
`alexnet visualize neighbors` and the explorer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..figures import neighbors_grid
from .features import FeatureSet, image_features, open_features
from .hashing import hamming_search
from .retrieval import Neighbors, exact_search
from .retrieval_bench import codes_for

METHODS = ("exact", "hamming")


@dataclass
class Queries:
    """Query vectors (Q, D), a description of each, their images on demand, and the database row
    each must not find (its own image, when the queries come from the database's store; -1: none)."""

    vectors: np.ndarray
    described: list[dict[str, Any]]
    images: Callable[[], list[np.ndarray]]
    exclude: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray | None:
        return np.array([d["label"] for d in self.described]) if self.described and "label" in self.described[0] else None


def queries(database: FeatureSet, *, images: Sequence[str] | None = None, features: str | os.PathLike[str] | None = None,
            count: int | None = None, checkpoint: str | os.PathLike[str] | None = None) -> Queries:  # fmt: skip
    """Queries from image files or from the rows of a feature folder (exactly one of the two)."""
    if (images is None) == (features is None):
        raise ConfigError("give query images or a query feature folder, not both or neither")
    if images is not None:
        return image_queries(database, images, checkpoint)
    return feature_queries(database, open_features(features), count)  # type: ignore[arg-type]


def image_queries(database: FeatureSet, paths: Sequence[str], checkpoint: str | os.PathLike[str] | None = None) -> Queries:
    """Image files as queries, their features computed with `checkpoint` (default: the database's own)."""
    ckpt = checkpoint or database.meta["checkpoint"]
    vectors, images = image_features(ckpt, list(paths), layer=database.layer, views=database.meta.get("views", "center"))
    return Queries(vectors, [{"query": str(p)} for p in paths], lambda: list(images))


def feature_queries(database: FeatureSet, queries: FeatureSet, count: int | None = None) -> Queries:
    """Rows of another feature folder as queries (`count` of them drawn with seed 0, or all)."""
    if queries.layer != database.layer or queries.dim != database.dim:
        raise ConfigError(f"query features are {queries.layer} ({queries.dim}-d), the database {database.layer} ({database.dim}-d)")
    rows = np.arange(len(queries))
    if count is not None:
        if count < 1:
            raise ConfigError(f"--num-queries must be >= 1, got {count}")
        rows = np.sort(np.random.default_rng(0).choice(len(queries), min(count, len(queries)), replace=False))
    names = queries.class_names
    described = [{"query_row": int(r), "store_index": int(queries.indices[r]), "label": int(queries.labels[r]),
                  "class": names[queries.labels[r]] if names else None} for r in rows]  # fmt: skip
    exclude = None
    if queries.meta.get("store") == database.meta.get("store"):  # the same images: a query must not find itself
        pos = {int(i): n for n, i in enumerate(database.indices)}
        exclude = np.array([pos.get(int(queries.indices[r]), -1) for r in rows], np.int64)
    vectors = np.asarray(queries.features[rows], np.float32)
    return Queries(vectors, described, lambda: list(queries.open_store().read(queries.indices[rows])), exclude)


def search(database: FeatureSet, vectors: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
           method: str = "exact", backend: str = "torch", bits: int = 128, codes: str = "autoencoder",
           shortlist: int = 0, retrain_codes: bool = False, code_epochs: int = 20,
           progress: bool = False) -> Neighbors:  # fmt: skip
    """The k nearest database rows of each query vector: exact Euclidean, or by Hamming distance
    between binary codes (trained on first use and cached beside the features, hashing.py),
    re-ranked by exact distance over a `shortlist` when it is larger than k."""
    if k < 1:
        raise ConfigError(f"-k must be >= 1, got {k}")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "exact":
        return exact_search(database.features, vectors, k, backend=backend, exclude=exclude)
    hasher, db_codes = codes_for(database, bits, codes, retrain=retrain_codes, progress=progress, epochs=code_epochs)
    extra = 0 if exclude is None else 1
    found = hamming_search(db_codes, hasher.encode(vectors), k + extra, features=database.features, queries=vectors,
                           shortlist=shortlist)  # fmt: skip
    if exclude is None:
        return found
    keep = [np.flatnonzero(row != e)[:k] for row, e in zip(found.indices, exclude)]
    return Neighbors(np.stack([r[m] for r, m in zip(found.indices, keep)]),
                     np.stack([d[m] for d, m in zip(found.distances, keep)]))  # fmt: skip


def describe(database: FeatureSet, found: Neighbors) -> list[list[dict[str, Any]]]:
    """Per query, its neighbours: database row, store index, label, class name, distance."""
    names = database.class_names
    return [[{"row": int(r), "store_index": int(database.indices[r]), "label": int(database.labels[r]),
              "class": names[database.labels[r]] if names else None, "distance": float(x)}
             for r, x in zip(rows, dist)] for rows, dist in zip(found.indices, found.distances)]  # fmt: skip


def draw(out: str | os.PathLike[str], database: FeatureSet, found: Neighbors, queries: Queries) -> Path:
    """Fig. 4: the queries in the first column, their neighbours after (at most 16 queries)."""
    if len(queries.described) > 16:
        raise ConfigError(f"a grid draws at most 16 queries, got {len(queries.described)}; pass --num-queries")
    store = database.open_store()
    names = database.class_names
    nb_images = [list(store.read(database.indices[row])) for row in found.indices]
    nb_labels = [[names[database.labels[r]] if names else str(database.labels[r]) for r in row] for row in found.indices]
    q_labels = [d.get("class") or d.get("query", "").rsplit("/", 1)[-1] for d in queries.described]
    return neighbors_grid(queries.images(), nb_images, out, query_labels=q_labels, neighbor_labels=nb_labels)
