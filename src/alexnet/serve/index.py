"""The explorer's neighbour index: fc7 features of the training images (the paper's Fig. 4),
built on first use with `extract_features`, cached beside the checkpoint and searched exactly.

    RUN/explorer/fc7-train/             for a run folder
    CKPT.pt.explorer/fc7-train/         for a checkpoint file
      features.npy labels.npy indices.npy meta.json    (analysis.features' folder)
      explorer.json                    what it was built from; a different one means rebuild

A query must answer in tens of milliseconds (docs/benchmarks.md, "Explorer"), but an exact scan
of 60,000 x 4096 features is memory-bound: ~1 GB of float32 per query, over 100 ms on two cores,
and `neighbors.search`'s streaming scan of the float16 memmap takes 1.4-2.4 s. So the index keeps
a bfloat16 copy of the database in memory (half the bytes) and narrows in three steps:

1. every row: q.x from the bfloat16 copies (one matrix-vector product), with a per-row bound on
   its error (`NeighborIndex.bf16_slack`); a row stays when the lower end of its distance^2 is
   within the k-th smallest upper end, so no true neighbour can drop out;
2. the rows left (~1-2% of them): q.x in float32 from the float16 values, bound D * 2^-24;
3. the rows left (~k): ranked by `neighbors.search` (float64 distances).

The answer is therefore exactly `neighbors.search`'s over the whole folder, rows and distances, as
`alexnet neighbors` gives it. Databases over `memory` bytes of bfloat16 are searched by
`neighbors.search` alone (exact, streaming, slower).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis import neighbors
from ..analysis.features import FeatureSet, extract_features, open_features
from ..analysis.retrieval import Neighbors
from ..data.store import MANIFEST, Store
from ..errors import AlexNetError, DataError

FINGERPRINT = "explorer.json"
INDEX_MEMORY = 2 << 30  # bfloat16 bytes kept in memory for the fast scan (60,000 x 4096 is 0.5 GB)
MARGIN = 1.25  # the bounds below are worst cases; a margin covers the float64 arithmetic on them


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
    """Exact k-nearest search over a feature folder, narrowed by the bfloat16 scan above."""

    def __init__(self, fs: FeatureSet, memory: int = INDEX_MEMORY, chunk_rows: int = 4096) -> None:
        self.fs = fs
        n, d = fs.features.shape
        self.gamma = accumulation_error(d)
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
        self._order = np.argsort(fs.indices, kind="stable")  # store index -> database row, by binary search
        self._sorted = np.asarray(fs.indices)[self._order]

    def __len__(self) -> int:
        return len(self.fs)

    def row_of(self, store_index: int) -> int:
        """The database row of a store image (-1 when the database does not hold it)."""
        pos = int(np.searchsorted(self._sorted, store_index))
        return int(self._order[pos]) if pos < len(self._sorted) and self._sorted[pos] == store_index else -1

    def search(self, query: np.ndarray, k: int, exclude: int = -1) -> tuple[list[dict[str, Any]], int]:
        """The k database rows nearest `query` (D,), best first (neighbors.describe's dicts), and how
        many rows `neighbors.search` ranked. `exclude`: a database row to leave out (-1: none)."""
        n = len(self)
        k = min(k, n - (exclude >= 0))
        q = np.asarray(query, np.float32).reshape(-1)
        if self.scan is None:
            found = neighbors.search(self.fs, q[None], k, exclude=None if exclude < 0 else np.array([exclude]))
            return neighbors.describe(self.fs, found)[0], n
        qt = torch.from_numpy(q)
        q_sq = float(qt.double().square().sum())
        # 1: every row, bfloat16 products
        qb = qt.bfloat16()
        dots = torch.mv(self.scan, qb).double().numpy()
        every = np.arange(n)
        rows = self._narrow(every, dots, self.bf16_slack(qt, qb, dots), q_sq, k, exclude)
        # 2: the rows left, float32 products of the float16 values
        dots = torch.mv(_float32(self.fs.features[rows]), qt).double().numpy()
        slack = MARGIN * self.gamma * np.sqrt(q_sq) * self.norms[rows]
        rows = rows[self._narrow(np.arange(len(rows)), dots, slack, q_sq, k, -1, rows)]
        # 3: the candidates, ranked exactly (float64 distances) by the project's own search
        sub = replace(self.fs, features=np.asarray(self.fs.features[rows]), labels=self.fs.labels[rows],
                      indices=self.fs.indices[rows])  # fmt: skip
        found = neighbors.search(sub, q[None], k)
        return neighbors.describe(self.fs, Neighbors(rows[found.indices], found.distances))[0], len(rows)

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
                of: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """The `rows` whose distance^2 can still be among the k smallest, given q.x to within
        `slack` (per row of `rows`). `of`: the database rows `rows` index, when a subset."""
        db = rows if of is None else of
        approx = self.sq_norms[db] + q_sq - 2.0 * dots
        margin = 2.0 * slack + 1e-12 * (self.sq_norms[db] + q_sq)  # (+ the float64 sum's own rounding)
        upper, lower = approx + margin, approx - margin
        if exclude >= 0:
            upper[exclude] = lower[exclude] = np.inf
        cutoff = np.partition(upper, k - 1)[k - 1]  # the k-th smallest true distance^2 is at most this
        return rows[lower <= cutoff]


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
            index = NeighborIndex(fs, self.memory)
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
            tmp = self.folder / f".{FINGERPRINT}.tmp"
            tmp.write_text(json.dumps(want, indent=1) + "\n")
            os.replace(tmp, self.folder / FINGERPRINT)
            return fs
        finally:
            os.close(lock_fd)
