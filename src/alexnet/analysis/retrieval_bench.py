"""Binary codes against exact search, measured in one run: recall@k and the speed-up.

For each method (auto-encoder, LSH baseline) and code length: recall@k of pure Hamming search
against the exact Euclidean neighbours, recall@k after re-ranking a Hamming shortlist by exact
distance, label precision@k (neighbours of the query's class), and the search time per query
of each against exact search, timed alternately after a warm-up (bench.timing.alternate).
Query encoding is inside the timed Hamming search; the database codes are made once up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..bench.timing import alternate
from ..runtime import environment
from .features import FeatureSet
from .hashing import METHODS, BinaryHasher, hamming_search, train_hasher
from .retrieval import exact_search, recall_at_k


def codes_for(fs: FeatureSet, bits: int, method: str = "autoencoder", *, retrain: bool = False,
              progress: bool = False, **train_kw: Any) -> tuple[BinaryHasher, np.ndarray]:  # fmt: skip
    """The hasher and database codes of a feature folder, trained on first use and cached in FEATURES/codes/."""
    folder = fs.path / "codes"
    model_path, codes_path = folder / f"{method}-{bits}.pt", folder / f"{method}-{bits}.npy"
    if not retrain and model_path.is_file() and codes_path.is_file():
        codes = np.load(codes_path)
        if len(codes) == len(fs):
            return BinaryHasher.load(model_path), codes
    hasher = train_hasher(fs.features, bits, method=method, progress=progress, **train_kw)
    codes = hasher.encode(fs.features)
    folder.mkdir(exist_ok=True)
    hasher.save(model_path)
    np.save(codes_path, codes)
    return hasher, codes


def label_precision(neighbors: np.ndarray, db_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Fraction of returned neighbours whose label is the query's."""
    return float((db_labels[neighbors] == query_labels[:, None]).mean())


def benchmark_codes(
    fs: FeatureSet,
    queries: np.ndarray,
    query_labels: np.ndarray | None = None,
    *,
    bits: Sequence[int] = (64, 128, 256),
    methods: Sequence[str] = METHODS,
    k: int = 6,
    shortlist: int = 100,
    repeats: int = 3,
    exclude: np.ndarray | None = None,
    retrain: bool = False,
    progress: bool = False,
    **train_kw: Any,
) -> dict[str, Any]:
    """Recall@k and speed of Hamming search (and Hamming + re-rank) against exact search on `fs`."""
    db = np.ascontiguousarray(fs.features, dtype=np.float32)  # in memory: time the search, not the disk
    q = np.ascontiguousarray(queries, dtype=np.float32)
    truth = exact_search(db, q, k, exclude=exclude)
    candidates = {"exact": lambda: exact_search(db, q, k, exclude=exclude)}
    rows: list[dict[str, Any]] = []
    prepared: list[tuple[str, int, BinaryHasher, np.ndarray]] = []
    for method in methods:
        for b in bits:
            hasher, codes = codes_for(fs, b, method, retrain=retrain, progress=progress, **train_kw)
            prepared.append((method, b, hasher, codes))
            # k + 1 with the exclusion applied afterwards would change nothing measurable; no exclusion
            # here keeps the timed call identical to what `neighbors` runs.
            candidates[f"{method}-{b}"] = lambda h=hasher, c=codes: hamming_search(c, h.encode(q), k)
            candidates[f"{method}-{b}+rerank"] = lambda h=hasher, c=codes: hamming_search(
                c, h.encode(q), k, features=db, queries=q, shortlist=shortlist)  # fmt: skip
    times = alternate(candidates, warmup=1, repeats=repeats)
    exact_ms = 1e3 * times["exact"]["median_s"] / len(q)

    def drop_self(found: np.ndarray, kk: int) -> np.ndarray:
        if exclude is None:
            return found[:, :kk]
        return np.stack([row[row != e][:kk] for row, e in zip(found, exclude)])

    for method, b, hasher, codes in prepared:
        extra = 1 if exclude is not None else 0
        plain = drop_self(hamming_search(codes, hasher.encode(q), k + extra).indices, k)
        rer = drop_self(hamming_search(codes, hasher.encode(q), k + extra, features=db, queries=q,
                                       shortlist=shortlist).indices, k)  # fmt: skip
        row: dict[str, Any] = {
            "method": method, "bits": b, "code_bytes": b // 8,
            "recall": recall_at_k(plain, truth.indices), "recall_rerank": recall_at_k(rer, truth.indices),
            "ms_per_query": 1e3 * times[f"{method}-{b}"]["median_s"] / len(q),
            "ms_per_query_rerank": 1e3 * times[f"{method}-{b}+rerank"]["median_s"] / len(q),
            "train_s": hasher.info.get("train_s"), "saturation": hasher.info.get("saturation"),
        }  # fmt: skip
        row["speedup"] = exact_ms / row["ms_per_query"]
        row["speedup_rerank"] = exact_ms / row["ms_per_query_rerank"]
        if query_labels is not None:
            row["label_precision"] = label_precision(plain, fs.labels, query_labels)
        rows.append(row)
    result: dict[str, Any] = {
        "features": str(fs.path), "layer": fs.layer, "database": len(fs), "dim": fs.dim, "queries": len(q), "k": k,
        "shortlist": shortlist, "exact_ms_per_query": exact_ms, "float32_bytes_per_vector": 4 * fs.dim,
        "rows": rows, "timings": times, "env": environment("cpu"),
    }  # fmt: skip
    if query_labels is not None:
        result["exact_label_precision"] = label_precision(truth.indices, fs.labels, query_labels)
    return result


def format_benchmark(r: dict[str, Any]) -> str:
    """A markdown table of `benchmark_codes`' result."""
    lp = "exact_label_precision" in r
    lines = [
        f"{r['layer']} features: {r['database']} x {r['dim']} database, {r['queries']} queries, k={r['k']}, "
        f"re-rank shortlist {r['shortlist']}; exact search {r['exact_ms_per_query']:.3f} ms/query"
        + (f", label precision@{r['k']} {r['exact_label_precision']:.3f}" if lp else ""),
        "",
        f"| method | bits | bytes/vector | recall@{r['k']} | speed-up | recall@{r['k']} re-ranked | speed-up re-ranked |"
        + (f" label precision@{r['k']} |" if lp else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if lp else ""),
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['method']} | {row['bits']} | {row['code_bytes']} (vs {r['float32_bytes_per_vector']}) | "
            f"{row['recall']:.3f} | {row['speedup']:.1f}x | {row['recall_rerank']:.3f} | {row['speedup_rerank']:.1f}x |"
            + (f" {row['label_precision']:.3f} |" if lp else "")
        )
    return "\n".join(lines)
