"""Nearest training images by Euclidean distance between feature vectors (the paper's Fig. 4).

Exact search streams the database in chunks of bounded size (so a memory-mapped array of
millions of 4096-d vectors never has to fit in memory) and keeps a running top-k per query.
Inside a chunk, squared distances come from one matrix product, |q|^2 - 2 q.x + |x|^2; the
final k candidates of each query then get their distance recomputed directly in float64, so
the reported distances are exact and the order among them is right. faiss's flat L2 index is
the optional alternative backend (`backend="faiss"`), used only where it is installed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError

BACKENDS = ("torch", "faiss")
_CHUNK_BYTES = 64 << 20  # float32 bytes of database read per chunk: 4096 rows of fc7
_SPARE = 8


@dataclass
class Neighbors:
    """`indices[i, j]` is the database row of query i's j-th nearest neighbour, `distances` their L2 distances."""

    indices: np.ndarray  # (Q, k) int64
    distances: np.ndarray  # (Q, k) float32


def _read_only_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing `a`'s memory, which may be a read-only memmap: this search only reads it,
    so torch's warning about non-writable arrays (and a copy of every chunk) are not needed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401  (optional: pip install faiss-cpu)
    except ImportError:
        return False
    return True


def _as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ConfigError(f"queries have shape {q.shape}; the database vectors have dimension {dim}")
    return q


def exact_search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    backend: str = "torch",
    exclude: np.ndarray | None = None,
    chunk_rows: int | None = None,
    query_block: int = 1024,
) -> Neighbors:
    """The k database rows nearest each query (Euclidean), best first.

    database: (N, D) array, typically a memmap (float16 or float32), read `chunk_rows` at a time.
    exclude: optional (Q,) database row per query to leave out (-1: none), for queries taken from
    the database itself.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    n, dim = database.shape
    q = _as_queries(queries, dim)
    if not 1 <= k <= n - (1 if exclude is not None else 0):
        raise ConfigError(f"k must be between 1 and the database size ({n}), got {k}")
    if backend == "faiss":
        return _faiss_search(database, q, k, exclude)
    rows = chunk_rows or max(1, _CHUNK_BYTES // (4 * dim))
    # A few spare candidates go to the float64 refinement, so float32 rounding and ties at the
    # cut-off cannot push out a true neighbour (ties end up lower row first).
    keep = min(n - (1 if exclude is not None else 0), k + _SPARE)
    qt = _read_only_tensor(q)
    q_sq = (qt * qt).sum(1)
    best_d = torch.full((len(q), keep), float("inf"))
    best_i = torch.full((len(q), keep), -1, dtype=torch.int64)
    excl = None if exclude is None else torch.as_tensor(np.asarray(exclude, dtype=np.int64))
    for start in range(0, n, rows):
        x = _read_only_tensor(np.asarray(database[start : start + rows], dtype=np.float32))
        x_sq = (x * x).sum(1)
        for qs in range(0, len(q), query_block):
            qe = min(qs + query_block, len(q))
            d2 = torch.addmm(x_sq[None], qt[qs:qe], x.T, alpha=-2.0).add_(q_sq[qs:qe, None])  # (Qb, rows)
            if excl is not None:
                local = excl[qs:qe] - start
                hit = (local >= 0) & (local < len(x))
                d2[hit.nonzero()[:, 0], local[hit]] = float("inf")
            cd, ci = torch.topk(d2, min(keep, len(x)), dim=1, largest=False)
            merged_d = torch.cat([best_d[qs:qe], cd], 1)
            merged_i = torch.cat([best_i[qs:qe], ci + start], 1)
            top = torch.topk(merged_d, keep, dim=1, largest=False)
            best_d[qs:qe] = top.values
            best_i[qs:qe] = merged_i.gather(1, top.indices)
    found = _refine(database, q, best_i.numpy())
    return Neighbors(found.indices[:, :k], found.distances[:, :k])


def _refine(database: np.ndarray, q: np.ndarray, idx: np.ndarray, block: int = 64) -> Neighbors:
    """Exact float64 distances for each query's candidates, re-sorted (ties: lower row first)."""
    dist = np.empty(idx.shape, np.float64)
    for s in range(0, len(idx), block):  # blocks keep the (queries, candidates, D) temporary small
        part = idx[s : s + block]
        flat = part.reshape(-1)
        order = np.argsort(flat, kind="stable")
        vecs = np.empty((len(flat), q.shape[1]), np.float64)
        vecs[order] = np.asarray(database[flat[order]], dtype=np.float64)  # sorted reads are kinder to a memmap
        diff = vecs.reshape(*part.shape, -1) - q[s : s + block, None, :].astype(np.float64)
        dist[s : s + block] = np.sqrt(np.einsum("qkd,qkd->qk", diff, diff))
    perm = np.lexsort((idx, dist), axis=-1)
    return Neighbors(np.take_along_axis(idx, perm, 1), np.take_along_axis(dist, perm, 1).astype(np.float32))


def rank_candidates(database: np.ndarray, query: np.ndarray, rows: np.ndarray, k: int) -> Neighbors:
    """The k of `rows` nearest one query (D,), ranked as exact_search's last step ranks (float64
    distances, ties: lower row first): its answer whenever `rows` holds every row that can be in it."""
    found = _refine(database, np.asarray(query, np.float32).reshape(1, -1), np.asarray(rows, np.int64)[None])
    return Neighbors(found.indices[:, :k], found.distances[:, :k])


def _faiss_search(database: np.ndarray, q: np.ndarray, k: int, exclude: np.ndarray | None) -> Neighbors:
    try:
        import faiss  # optional: pip install faiss-cpu
    except ImportError:
        raise ConfigError("backend faiss asked for but faiss is not installed (pip install faiss-cpu)") from None
    n, dim = database.shape
    index = faiss.IndexFlatL2(dim)
    rows = max(1, _CHUNK_BYTES // (4 * dim))
    for start in range(0, n, rows):
        index.add(np.ascontiguousarray(database[start : start + rows], dtype=np.float32))
    keep = min(n - (1 if exclude is not None else 0), k + _SPARE)
    _, idx = index.search(q, keep + (1 if exclude is not None else 0))
    if exclude is not None:
        mask = idx != np.asarray(exclude)[:, None]
        idx = np.stack([row[m][:keep] for row, m in zip(idx, mask)])
    found = _refine(database, q, idx.astype(np.int64))
    return Neighbors(found.indices[:, :k], found.distances[:, :k])


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int | None = None) -> float:
    """Mean over queries of |found[:, :k] & truth[:, :k]| / k: how many true neighbours a search returns."""
    k = k or truth.shape[1]
    if found.shape[1] < k or truth.shape[1] < k or len(found) != len(truth):
        raise ValueError(f"need (Q, >= {k}) arrays of the same Q, got {found.shape} and {truth.shape}")
    hits = [len(np.intersect1d(f[:k], t[:k])) for f, t in zip(found, truth)]
    return float(np.mean(hits)) / k
