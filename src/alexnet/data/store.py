"""The packed image store that `alexnet prepare` writes and training reads.

    OUT/dataset.json            written last: splits, source, options (the completion marker)
    OUT/report.tsv              files skipped by prepare: split, path, reason
    OUT/<split>/manifest.json   written last in the split: counts, classes, checksums, statistics
    OUT/<split>/images-00000.npy ...   uint8 (rows, H, W, C) shards, memory-mapped on read
    OUT/<split>/labels.npy      int64 (N,)
    OUT/<split>/rows.npy        only when files were skipped: the shard row of each kept image
    OUT/<split>/stats.npz       mean image, channel mean/std, RGB covariance eigenvalues/vectors

Every file of a split but the manifest has its sha256 in the manifest: `alexnet verify OUT`
(verify_store) rehashes them.

Raw .npy shards rather than a container format: a random batch is one gather per shard from
the page cache, with no decoding (`alexnet bench loader` measures it against decoding JPEGs).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..files import sha256_file
from ..progress import progress_bar
from .sources import Items, Source, Split
from .stats import Stats

FORMAT = "alexnet-store"
VERSION = 1
MANIFEST = "manifest.json"
DATASET = "dataset.json"
PREAD_MIN_BYTES = 16384  # rows this big are read with pread (store.read); smaller ones through the map
SHARD_BYTES = 1 << 30  # 1 GiB shards: few files for ImageNet (~240), one for small datasets


def shard_name(i: int) -> str:
    return f"images-{i:05d}.npy"


class ShardedImages:
    """Array-like (N, H, W, C) uint8 over the store's shards: len, shape, dtype, [int | slice | index array]."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.shape = (len(store), store.size, store.size, store.channels)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= k < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} images")
            return self._store.read(np.asarray([k]))[0]
        if isinstance(key, slice):
            return self._store.read(np.arange(len(self))[key])
        return self._store.read(np.asarray(key))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype)


class Store:
    """One prepared split: images (memory-mapped uint8 NHWC), labels, classes, manifest, statistics."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            hint = " (prepare did not finish: run it again)" if self.path.is_dir() and any(self.path.iterdir()) else ""
            raise DataError(f"{self.path} is not a complete prepared split: no {MANIFEST}{hint}")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {manifest_path}: {exc}") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise DataError(f"{manifest_path}: not an {FORMAT} v{VERSION} store")
        self.size = int(self.manifest["size"])
        self.channels = int(self.manifest["channels"])
        self.class_names: list[str] = list(self.manifest["class_names"])
        self.num_classes = len(self.class_names)
        self._shard_rows = int(self.manifest["shard_rows"])
        self.labels = self._load("labels.npy").astype(np.int64, copy=False)
        self.rows = self._load("rows.npy") if self.manifest.get("rows_file") else None
        self._shards = [self._load(s["file"], mmap=True) for s in self.manifest["shards"]]
        self._row_bytes = self.size * self.size * self.channels
        self._fds: list[int] | None = None
        with np.load(self.path / "stats.npz") as z:
            self.stats = Stats.from_arrays(dict(z))
        self.images = ShardedImages(self)

    def _load(self, name: str, mmap: bool = False) -> np.ndarray:
        try:
            return np.load(self.path / name, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"store {self.path}: cannot read {name}: {exc}") from None

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, n={len(self)}, size={self.size}, channels={self.channels}, classes={self.num_classes})"

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", None) or []:
            os.close(fd)

    def __getstate__(self) -> dict[str, Any]:  # pickles as its path, not as the mapped data
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Images at `indices` as (B, H, W, C) uint8, gathered shard by shard (into `out` when given)."""
        indices = np.asarray(indices, dtype=np.int64)
        if out is None:
            out = np.empty((len(indices), self.size, self.size, self.channels), np.uint8)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} images")
        phys = self.rows[indices] if self.rows is not None else indices
        if self._row_bytes >= PREAD_MIN_BYTES and out.flags.c_contiguous and hasattr(os, "preadv"):
            self._pread(phys, out)
            return out
        if len(self._shards) == 1:
            np.take(self._shards[0], phys, axis=0, out=out)
            return out
        shard, offset = np.divmod(phys, self._shard_rows)
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            out[sel] = self._shards[s][offset[sel]]
        return out

    def _pread(self, phys: np.ndarray, out: np.ndarray) -> None:
        # One pread per image into the caller's buffer: measured 2x faster than gathering
        # through the memory map, whose first touch of each 4 KiB page of a row is a page fault.
        if self._fds is None:
            self._fds = [os.open(self.path / s["file"], os.O_RDONLY) for s in self.manifest["shards"]]
        fds, rb, sr = self._fds, self._row_bytes, self._shard_rows
        bases = [m.offset for m in self._shards]
        flat = out.reshape(len(out), rb)
        for k, p in enumerate(phys.tolist()):
            s, r = divmod(p, sr)
            if os.preadv(fds[s], [flat[k]], bases[s] + r * rb) != rb:
                raise DataError(f"store {self.path}: shard {s} is truncated")

    def verify(self, workers: int = 1) -> None:
        """Recompute every file's sha256 against the manifest; a mismatch or a missing file is a DataError."""
        problems = check_files(self.path, manifest_files(self.manifest), workers=workers)
        if problems:
            raise DataError(f"store {self.path}: " + "; ".join(f"{p.file} is {p.problem}" for p in problems))


@dataclass(frozen=True)
class FileProblem:
    """A store file that does not match its manifest: problem is "missing" or "corrupt (sha256 mismatch)"."""

    path: Path
    problem: str

    @property
    def file(self) -> str:
        return self.path.name


def manifest_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The {"file", "sha256"} entries a split's manifest vouches for: shards, labels, statistics, rows."""
    files = [*manifest["shards"], manifest["labels"], manifest["stats_file"]]
    if manifest.get("rows_file"):
        files.append(manifest["rows_file"])
    return files


def check_files(folder: Path, files: list[dict[str, Any]], *, workers: int = 1,
                on_done: Callable[[int], None] | None = None) -> list[FileProblem]:  # fmt: skip
    """Hash `files` (manifest entries under `folder`) in `workers` threads; the ones that fail, in manifest order.

    Threads suffice: hashlib releases the GIL while it hashes, so N threads hash N files at once.
    on_done(bytes) is called as each file finishes (for a progress bar).
    """

    def check(entry: dict[str, Any]) -> FileProblem | None:
        path = folder / entry["file"]
        try:
            got = sha256_file(path)
            size = path.stat().st_size
        except FileNotFoundError:
            got, size = None, 0
        except OSError as exc:
            return FileProblem(path, f"unreadable ({exc.strerror or exc})")
        if on_done is not None:
            on_done(size)
        if got is None:
            return FileProblem(path, "missing")
        return None if got == entry["sha256"] else FileProblem(path, "corrupt (sha256 mismatch)")

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [p for p in pool.map(check, files) if p is not None]


def verify_store(path: str | os.PathLike[str], *, workers: int = 4, progress: bool = False) -> dict[str, Any]:
    """Check a prepared dataset (OUT) or one split (OUT/<split>) against its manifests' sha256 checksums.

    Returns {"path", "ok", "splits", "files", "bytes", "problems": [{"file", "problem"}], "seconds"},
    file paths relative to `path`. Only a path that is no store at all is a DataError.
    """
    t0 = time.perf_counter()
    root = Path(path)
    if (root / MANIFEST).is_file():
        split_dirs = {root.name: root}
    elif (root / DATASET).is_file():
        try:
            split_dirs = {name: root / name for name in json.loads((root / DATASET).read_text())["splits"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"cannot read {root / DATASET}: {exc}") from None
    elif root.is_dir():
        raise DataError(f"{path} is not a prepared store (no {DATASET} or {MANIFEST}; an unfinished prepare?)")
    else:
        raise DataError(f"store {path} does not exist")
    problems: list[FileProblem] = []
    jobs = []
    for folder in split_dirs.values():
        try:
            jobs.append((folder, manifest_files(json.loads((folder / MANIFEST).read_text()))))
        except FileNotFoundError:
            problems.append(FileProblem(folder / MANIFEST, "missing"))
        except (OSError, ValueError, KeyError, TypeError):
            problems.append(FileProblem(folder / MANIFEST, "corrupt (not a readable manifest)"))
    sizes = [(folder / f["file"]).stat().st_size for folder, files in jobs for f in files if (folder / f["file"]).is_file()]
    with progress_bar(total=sum(sizes), unit="B", unit_scale=True, desc="verify",
                      disable=None if progress else True) as bar:  # fmt: skip
        for folder, files in jobs:
            problems += check_files(folder, files, workers=workers, on_done=bar.update)
    base = root if (root / DATASET).is_file() else root.parent
    return {
        "path": str(root), "ok": not problems, "splits": list(split_dirs),
        "files": sum(len(files) for _, files in jobs), "bytes": sum(sizes),
        "problems": [{"file": str(p.path.relative_to(base)), "problem": p.problem} for p in problems],
        "seconds": round(time.perf_counter() - t0, 3),
    }  # fmt: skip


def open_store(path: str | os.PathLike[str]) -> Store:
    """Open one prepared split (OUT/<split>); a missing or unfinished one is a DataError."""
    if not Path(path).is_dir():
        raise DataError(f"store {path} does not exist")
    return Store(path)


def open_dataset(path: str | os.PathLike[str]) -> dict[str, Store]:
    """Open every split of a prepared dataset (OUT): split name -> Store, in the order prepare wrote them."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"prepared dataset {path} does not exist (run: alexnet prepare SOURCE {path})")
    marker = root / DATASET
    if not marker.is_file():
        raise DataError(f"{path} is not a complete prepared dataset: no {DATASET} (run alexnet prepare again)")
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {marker}: {exc}") from None
    return {name: Store(root / name) for name in meta["splits"]}


class StoreItems(Items):
    """Images of a prepared split, by row: a store read again as a source (a class subset, another size)."""

    encoded = False

    def __init__(self, path: str, rows: np.ndarray) -> None:
        self.path, self.rows = path, np.asarray(rows, np.int64)
        self._store: Store | None = None

    def __getstate__(self) -> dict[str, Any]:  # the path and rows, not the mapped store
        return {"path": self.path, "rows": self.rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["rows"])  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, i: int) -> np.ndarray:
        if self._store is None:
            self._store = Store(self.path)
        return self._store.read(self.rows[i : i + 1])[0]

    def name(self, i: int) -> str:
        return f"{self.path}:{self.rows[i]}"

    def take(self, idx: Any) -> StoreItems:
        return StoreItems(self.path, self.rows[idx])

    def fingerprint(self, h: Any) -> None:
        manifest = json.loads((Path(self.path) / MANIFEST).read_text())
        h.update(json.dumps([manifest["shards"], manifest["labels"]], sort_keys=True).encode())
        h.update(self.rows.tobytes())


def is_dataset(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a complete prepared dataset (what `alexnet prepare` wrote)."""
    return (Path(path) / DATASET).is_file()


def store_source(path: str | os.PathLike[str]) -> Source:
    """A prepared dataset as a source for `prepare`: its splits, classes and pixels as stored, so that
    a class subset (`--classes`) or another size is one more `alexnet prepare` away."""
    splits = open_dataset(path)
    first = next(iter(splits.values()))
    ids = list(first.manifest.get("class_ids") or first.class_names)
    info: dict[str, Any] = {"store": str(Path(path).resolve())}
    if first.manifest.get("class_descriptions"):
        info["class_descriptions"] = first.manifest["class_descriptions"]
    return Source("store", str(path), ids, list(first.class_names),
                  {name: Split(name, st.labels.copy(), StoreItems(str(st.path), np.arange(len(st)))) for name, st in splits.items()},
                  native_size=first.size, channels=first.channels, info=info)  # fmt: skip


def open_split(path: str | os.PathLike[str], split: str | None = None, default: tuple[str, ...] = ("val", "test")) -> Store:
    """One split: `path` itself when it is a split's folder, else split `split` of the dataset at
    `path`, else the first of `default` it has. A missing split is a DataError naming those found."""
    root = Path(path)
    if (root / MANIFEST).is_file():
        if split not in (None, root.name):
            raise DataError(f"{root} is one split ({root.name}); --split {split} does not apply")
        return open_store(root)
    splits = open_dataset(root)
    for name in [split] if split else default:
        if name in splits:
            return splits[name]
    wanted = repr(split) if split else " or ".join(map(repr, default))
    raise DataError(f"{root} has no split {wanted} (found: {', '.join(splits)})")
