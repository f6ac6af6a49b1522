"""The explorer's neighbour index: fc7 features of the training images (the paper's Fig. 4),
built on first use with `extract_features`, cached beside the checkpoint and searched exactly.

    RUN/explorer/fc7-train/             for a run folder
    CKPT.pt.explorer/fc7-train/         for a checkpoint file
      features.npy labels.npy indices.npy meta.json    (analysis.features' folder)
      explorer.json                    what it was built from; a different one means rebuild
      projection-32-128.npz            the first pass's projection of features.npy (projection.py)

A query must answer in milliseconds (docs/benchmarks.md, "Explorer"), but an exact scan of
60,000 x 4096 features is memory-bound: ~1 GB of float32 per query, over 100 ms on two cores, and
`neighbors.search`'s streaming scan of the float16 memmap takes 1-2 s. So the index narrows first,
never dropping a row that could be among the k nearest:

1. every row: a lower bound on its distance^2 from a projection onto 32 principal directions
   plus the residual's norm (projection.py: one (N, 33) product, 8 MB);
2. the 64 (or 2k) rows of the smallest bounds: exact distances (float32 products of the float16
   values, bound D * 2^-24 |q| |x|); the k-th smallest of their upper ends is a cut: the k nearest
   rows of the whole database are all at or under it;
3. the rows whose bound is under the cut (fc7: hundreds): the bound again from 128 directions,
   then exact distances for those still under it (fc7: ~150 rows in all, median);
4. the rows left (~k): ranked as `neighbors.search` ranks (float64 distances).

The answer is therefore exactly `neighbors.search`'s over the whole folder, rows and distances, as
`alexnet neighbors` gives it. Where the bound prunes too little (vectors without structure, such
as random noise: more than an eighth of the rows left), the index scans instead: a bfloat16 copy
of the database in memory, q.x for every row with a per-row bound on its error
(`NeighborIndex.bf16_slack`), then float32 and float64 for the ~1-2% it leaves (`scan_search`,
the index's only search before the projection). Databases over `memory` bytes of bfloat16 are
searched by `neighbors.search` alone (exact, streaming, slower).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import sys
import shutil
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis import neighbors
from ..analysis.features import FeatureSet, extract_features, open_features
from ..analysis.retrieval import rank_candidates
from ..data.store import MANIFEST, Store
from ..errors import AlexNetError, DataError, DiskFullError
from ..files import write_text_atomic
from .projection import DIMS, Projection, file_stamp, float64_slack

FINGERPRINT = "explorer.json"
INDEX_MEMORY = 2 << 30  # bfloat16 bytes kept in memory for the fast scan (60,000 x 4096 is 0.5 GB)
MARGIN = 1.25  # the bounds below are worst cases; a margin covers the float64 arithmetic on them
FIRST_ROWS = 64  # rows of the smallest lower bounds computed first (or 2k): their k-th distance sets the cut
EXACT_CHUNK = 2 << 20  # float32 bytes of rows converted at a time for exact products (measured best: cache-sized)
SCAN_SHARE = 1 / 8  # more rows than this share left after the cut: the bfloat16 scan is cheaper
HOPELESS_SHARE = 1 / 2  # more left by the first level: to the scan at once (fc7: at most 8% left, docs/benchmarks.md)


def accumulation_error(dim: int) -> float:
    """|fl(q.x) - q.x| <= this * sum |q_i x_i| for a float32 accumulation of `dim` products (Higham's gamma_D)."""
    u = dim * 2.0**-24
    return u / (1 - u)


def cache_folder(source: str | os.PathLike[str], layer: str, split: str) -> Path:
    """Where the feature index of `source` (a run folder or a checkpoint file) lives."""
    src = Path(source)
    base = src / "explorer" if src.is_dir() else src.parent / f"{src.name}.explorer"
    return base / f"{layer}-{split}"


def checkpoint_file(source: str | os.PathLike[str]) -> Path:
    """The file Predictor.load reads for `source`: a run folder's best.pt, else its last.pt."""
    src = Path(source)
    if src.is_dir():
        for name in ("best.pt", "last.pt"):
            if (src / name).is_file():
                return src / name
    return src


def fingerprint(source: str | os.PathLike[str], store: Store, layer: str) -> dict[str, Any]:
    """What an index depends on: the checkpoint file (path, size, mtime) and the store (its
    manifest, which holds the sha256 of every file of the split)."""
    ckpt = checkpoint_file(source).resolve()
    st = ckpt.stat()
    manifest = hashlib.sha256((store.path / MANIFEST).read_bytes()).hexdigest()
    return {"checkpoint": str(ckpt), "checkpoint_size": st.st_size, "checkpoint_mtime_ns": st.st_mtime_ns,
            "store": str(store.path.resolve()), "store_manifest_sha256": manifest, "layer": layer}  # fmt: skip


def cached(folder: Path, want: dict[str, Any]) -> FeatureSet | None:
    """The index in `folder` when it was built from exactly `want`, else None."""
    try:
        have = json.loads((folder / FINGERPRINT).read_text())
        return open_features(folder) if have == want else None
    except (OSError, ValueError, AlexNetError):
        return None


@dataclass
class IndexStatus:
    state: str  # "absent", "building", "ready", "failed", "unavailable"
    message: str = ""
    started: float | None = None
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"state": self.state, "message": self.message, "count": self.count}
        if self.started is not None:
            d["seconds"] = round(time.time() - self.started, 1)
        return d


class NeighborIndex:
    """Exact k-nearest search over a feature folder: the projection's lower bounds choose the rows
    to compute, the bfloat16 scan takes over where they prune too little (see the module's doc)."""

    def __init__(self, fs: FeatureSet, memory: int = INDEX_MEMORY, chunk_rows: int = 4096, *,
                 dims: tuple[int, ...] = DIMS, cache: Path | None = None) -> None:  # fmt: skip
        """`dims`: the projection's levels (projection.DIMS; (): none, the bfloat16 scan alone);
        `cache`: a folder to keep the projection in (the feature folder itself), built there on first use."""
        self.fs = fs
        n, d = fs.features.shape
        self.gamma = accumulation_error(d)
        self.f64 = float64_slack(d)
        self.sq_norms = np.empty(n, np.float64)  # |x|^2 of the stored (float16) rows, exactly
        self.scan = torch.empty((n, d), dtype=torch.bfloat16) if n * d * 2 <= memory else None
        self.b_norms = np.empty(n, np.float64)  # |x_b| of the bfloat16 copies
        self.e_norms = np.empty(n, np.float64)  # |x - x_b|: what rounding to bfloat16 lost, per row
        for s in range(0, n, chunk_rows):  # one pass over the (memory-mapped) features
            part = _float32(fs.features[s : s + chunk_rows])
            e = s + len(part)
            self.sq_norms[s:e] = part.double().square().sum(1).numpy()
            if self.scan is not None:
                self.scan[s:e] = part
                rounded = self.scan[s:e].double()
                self.b_norms[s:e] = rounded.norm(dim=1).numpy()
                self.e_norms[s:e] = (part.double() - rounded).norm(dim=1).numpy()
        self.norms = np.sqrt(self.sq_norms)
        with warnings.catch_warnings():  # the stored rows, as a tensor over the same (read-only) memory
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self._stored = torch.from_numpy(np.asarray(fs.features))
        self.projection = None if self.scan is None or not dims else self._projection(tuple(dims), chunk_rows, cache)
        self._order = np.argsort(fs.indices, kind="stable")  # store index -> database row, by binary search
        self._sorted = np.asarray(fs.indices)[self._order]

    def _projection(self, dims: tuple[int, ...], chunk_rows: int, cache: Path | None) -> Projection:
        if cache is None:
            return Projection.build(self.fs.features, dims, chunk_rows)
        path = cache / f"projection-{'-'.join(map(str, dims))}.npz"
        stamp = file_stamp(cache / "features.npy")
        proj = Projection.load(path, stamp, len(self))
        if proj is None:
            proj = Projection.build(self.fs.features, dims, chunk_rows)
            try:
                proj.save(path, stamp)
            except DiskFullError as exc:  # a cache: the search works without it, built again next start
                print(f"alexnet serve: {exc}; the projection stays in memory only", file=sys.stderr)
        return proj

    def __len__(self) -> int:
        return len(self.fs)

    def row_of(self, store_index: int) -> int:
        """The database row of a store image (-1 when the database does not hold it)."""
        pos = int(np.searchsorted(self._sorted, store_index))
        return int(self._order[pos]) if pos < len(self._sorted) and self._sorted[pos] == store_index else -1

    def search(self, query: np.ndarray, k: int, exclude: int = -1) -> tuple[list[dict[str, Any]], int]:
        """The k database rows nearest `query` (D,), best first (neighbors.describe's dicts), and how
        many rows had their distance computed from their stored values (the rest were ruled out by a
        bound). `exclude`: a database row to leave out (-1: none)."""
        n = len(self)
        k = min(k, n - (exclude >= 0))
        q = np.asarray(query, np.float32).reshape(-1)
        if self.scan is not None and self.projection is None:
            return self.scan_search(q, k, exclude)
        if self.scan is None or self.projection is None:
            found = neighbors.search(self.fs, q[None], k, exclude=None if exclude < 0 else np.array([exclude]))
            return neighbors.describe(self.fs, found)[0], n
        q_sq = float(np.square(q, dtype=np.float64).sum())
        query = self.projection.query(q)
        lower = self.projection.lower_bounds(query)  # (N,) <= every row's distance^2
        if exclude >= 0:
            lower[exclude] = np.inf
        # 1: the rows of the smallest bounds, exactly; their k-th distance^2 is at most `cutoff`
        first = max(FIRST_ROWS, 2 * k)
        if first < n - (exclude >= 0):
            head = np.sort(torch.topk(torch.from_numpy(lower), first, largest=False, sorted=False).indices.numpy())
        else:
            head = np.flatnonzero(np.arange(n) != exclude)
        upper_h, lower_h = self._exact(head, q, q_sq)
        cutoff = np.partition(upper_h, k - 1)[k - 1]
        # 2: every other row whose bound does not rule it out, at each level of the projection
        more = lower <= cutoff
        more[head] = False
        rest = np.flatnonzero(more)
        for level in range(1, len(self.projection.dims)):
            if len(rest) > n * HOPELESS_SHARE:  # structureless vectors: finer levels will not save the scan
                break
            rest = rest[self.projection.lower_bounds(query, level, rest) <= cutoff]
        if len(rest) > n * SCAN_SHARE:  # the bounds prune too little (structureless vectors)
            keep = np.zeros(n, bool)
            keep[head] = keep[rest] = True
            return self.scan_search(q, k, exclude, keep)
        upper_r, lower_r = self._exact(rest, q, q_sq)
        rows, up, low = np.concatenate([head, rest]), np.concatenate([upper_h, upper_r]), np.concatenate([lower_h, lower_r])
        cutoff = np.partition(up, k - 1)[k - 1]
        return self._rank(np.sort(rows[low <= cutoff]), q, k), len(rows)

    def scan_search(self, query: np.ndarray, k: int, exclude: int = -1, keep: np.ndarray | None = None
                    ) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        """`search` by the bfloat16 scan of every row (the index before the projection, and its
        fallback); `keep`: (N,) rows still possible, when a bound already ruled others out."""
        n = len(self)
        k = min(k, n - (exclude >= 0))
        q = np.asarray(query, np.float32).reshape(-1)
        assert self.scan is not None
        qt = torch.from_numpy(q)
        q_sq = float(qt.double().square().sum())
        # 1: every row, bfloat16 products
        qb = qt.bfloat16()
        dots = torch.mv(self.scan, qb).double().numpy()
        every = np.arange(n)
        rows = self._narrow(every, dots, self.bf16_slack(qt, qb, dots), q_sq, k, exclude, keep=keep)
        # 2: the rows left, float32 products of the float16 values
        upper, lower = self._exact(rows, q, q_sq)
        return self._rank(rows[lower <= np.partition(upper, k - 1)[k - 1]], q, k), len(rows)

    def _exact(self, rows: np.ndarray, q: np.ndarray, q_sq: float) -> tuple[np.ndarray, np.ndarray]:
        """Upper and lower bounds of |q - x|^2 for `rows` (ascending) from float32 products of their
        float16 values (error <= gamma_D |q| |x|), wide enough to hold its float64 value too."""
        qt, at = torch.from_numpy(q), torch.from_numpy(rows)
        step = max(1, EXACT_CHUNK // (4 * len(q)))
        dots = torch.cat([torch.mv(self._stored.index_select(0, at[s : s + step]).float(), qt)
                          for s in range(0, len(rows), step)] or [torch.empty(0)]).double().numpy()  # fmt: skip
        slack = MARGIN * self.gamma * math.sqrt(q_sq) * self.norms[rows]
        return self._bounds(rows, dots, slack, q_sq)

    def _bounds(self, rows: np.ndarray, dots: np.ndarray, slack: np.ndarray, q_sq: float) -> tuple[np.ndarray, np.ndarray]:
        approx = self.sq_norms[rows] + q_sq - 2.0 * dots
        margin = 2.0 * slack + self.f64 * (self.sq_norms[rows] + q_sq)  # (+ the float64 sums' own rounding)
        return approx + margin, approx - margin

    def _rank(self, rows: np.ndarray, q: np.ndarray, k: int) -> list[dict[str, Any]]:
        """The candidates ranked exactly as `neighbors.search` ranks its own (float64 distances)."""
        return neighbors.describe(self.fs, rank_candidates(self.fs.features, q, rows, k))[0]

    def bf16_slack(self, q: torch.Tensor, qb: torch.Tensor, dots: np.ndarray) -> np.ndarray:
        """Per row, a bound on |dots - q.x| for dots = fl(q_b . x_b) (bfloat16 inputs, float32
        accumulation, a bfloat16 result): q.x = q_b.x_b + e_q.x_b + q.e_x with e_q = q - q_b and
        e_x = x - x_b, so the error is at most |e_q| |x_b| + |q| |e_x| (Cauchy-Schwarz; |e_x| is
        known per row) + gamma_D |q_b| |x_b| (the accumulation) + 2^-8 |q_b.x_b| (the result's
        rounding, bounded through |dots|). A quarter of the plain 3 * 2^-8 |q| |x| on fc7 features."""
        e_q = float((q.double() - qb.double()).norm())
        q_norm, qb_norm = float(q.double().norm()), float(qb.double().norm())
        total = e_q * self.b_norms + q_norm * self.e_norms + self.gamma * qb_norm * self.b_norms
        rounding = 2.0**-8 / (1 - 2.0**-8) * (np.abs(dots) + total)
        return MARGIN * (total + rounding)

    def _narrow(self, rows: np.ndarray, dots: np.ndarray, slack: np.ndarray, q_sq: float, k: int, exclude: int,
                keep: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """The `rows` (every row) whose distance^2 can still be among the k smallest, given q.x to
        within `slack`; `keep`: (N,) False where another bound already ruled a row out."""
        upper, lower = self._bounds(rows, dots, slack, q_sq)
        if exclude >= 0:
            upper[exclude] = lower[exclude] = np.inf
        cutoff = np.partition(upper, k - 1)[k - 1]  # the k-th smallest true distance^2 is at most this
        return rows[(lower <= cutoff) & (True if keep is None else keep)]


def _float32(a: np.ndarray) -> torch.Tensor:
    """float16/float32 rows (maybe a read-only memmap) -> a new float32 tensor; torch converts
    float16 several times faster than numpy, and only reads the array here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32, copy=True)


class IndexBuilder:
    """The neighbour index of one checkpoint and store: opened from the cache, or built once in a
    background thread on first use (the server goes on answering meanwhile)."""

    def __init__(self, source: str | os.PathLike[str], data: str | os.PathLike[str], store: Store, layer: str = "fc7",
                 *, device: str = "cpu", memory: int = INDEX_MEMORY, progress: bool = True) -> None:  # fmt: skip
        self.source, self.data, self.store, self.layer = Path(source), Path(data), store, layer
        self.device, self.memory, self.progress = device, memory, progress
        self.folder = cache_folder(source, layer, store.path.name)
        self.status = IndexStatus("absent", f"not built yet: the first neighbours request builds it ({len(store):,} images)")
        self.index: NeighborIndex | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ready(self) -> NeighborIndex | None:
        """The index when it can be searched; otherwise starts opening or building it (once) and returns None."""
        with self._lock:
            if self.index is not None or self.status.state == "failed":
                return self.index
            if self._thread is None:
                self.status = IndexStatus("building", f"opening or building the {self.layer} index of {len(self.store):,} "
                                          f"{self.store.path.name} images", time.time(), len(self.store))  # fmt: skip
                self._thread = threading.Thread(target=self._build, name="explorer-index", daemon=True)
                self._thread.start()
        return None

    def wait(self, timeout: float | None = None) -> NeighborIndex | None:
        """Start (if needed) and wait for the index: for scripts, benchmarks and tests."""
        self.ready()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.index

    def _build(self) -> None:
        try:
            want = fingerprint(self.source, self.store, self.layer)
            fs = cached(self.folder, want)
            if fs is None:
                fs = self._extract(want)
            index = NeighborIndex(fs, self.memory, cache=self.folder)
            with self._lock:
                self.index = index
                self.status = IndexStatus("ready", f"{len(fs):,} {self.layer} vectors of {self.store.path.name} "
                                          f"({self.folder})", count=len(fs))  # fmt: skip
        except (AlexNetError, OSError, ValueError, RuntimeError) as exc:
            with self._lock:
                self.status = IndexStatus("failed", f"building the {self.layer} index failed: {exc}")

    def _extract(self, want: dict[str, Any]) -> FeatureSet:
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.folder.parent / ".build.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DataError(f"another process is building {self.folder}; restart this server when it is done") from None
            for stale in self.folder.parent.glob(f".{self.folder.name}.*.tmp"):  # left by a killed build
                shutil.rmtree(stale, ignore_errors=True)
            fs = extract_features(checkpoint_file(self.source), self.data, self.folder, layer=self.layer,
                                  split=self.store.path.name, device=self.device, overwrite=True,
                                  progress=self.progress)  # fmt: skip
            write_text_atomic(self.folder / FINGERPRINT, json.dumps(want, indent=1) + "\n")
            return fs
        finally:
            os.close(lock_fd)
