"""`prepare`: decode a source once into packed stores (store.py), atomically and restartably.

Work is cut into chunks of consecutive images. Workers decode a chunk straight into the
memory-mapped shard rows it owns and return exact partial statistics; the parent merges them
and, every few seconds, saves which chunks are done together with the merged sums in
OUT/.prepare/. A killed run therefore loses at most those seconds: re-running the same command
redoes only the chunks not recorded. Rows already written survive a kill because they live in
the page cache of the shard files; the shards are fsync'ed before the split's manifest is
written, and OUT/dataset.json, the completion marker, is written last of all.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..files import (
    open_memmap_allocated,
    save_npy_atomic,
    save_npz_atomic,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)
from ..progress import progress_bar
from .decode import MIN_SIDE, BadImage, decode_image, resize_center_crop
from .resolve import resolve_source
from .sizing import SizeChoice, choose_size
from .sources import Items, Source, Split
from .stats import StatsAccumulator
from .store import DATASET, FORMAT, MANIFEST, SHARD_BYTES, VERSION, shard_name

WORK = ".prepare"  # in-progress state; removed when the dataset is complete
SAVE_EVERY_S = 5.0


@dataclass(frozen=True)
class PrepareOptions:
    """size None: the images' own size where every one is smaller than 256 and all are alike, else 256
    (sizing.py); the native size for array sources. channels None: RGB for image files, native for arrays."""

    size: int | None = None
    channels: int | None = None
    workers: int = 1
    val_fraction: float = 0.0
    seed: int = 0
    classes: tuple[str, ...] = ()  # keep only these classes (ids or names); empty: all
    devkit: str | None = None
    synsets: str | None = None
    download_dir: str | None = None
    min_side: int = MIN_SIDE
    chunk: int = 64
    shard_bytes: int = SHARD_BYTES
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.size is not None and not 1 <= self.size <= 4096:
            raise DataError(f"--size must be in [1, 4096], got {self.size}")
        if self.channels not in (None, 1, 3):
            raise DataError(f"--channels must be 1 or 3, got {self.channels}")
        if self.workers < 1 or self.chunk < 1:
            raise DataError("--workers and chunk must be >= 1")


def prepare(source_spec: str, out: str | os.PathLike[str], options: PrepareOptions | None = None) -> dict[str, Any]:
    """Prepare every split of `source_spec` under `out`; returns the summary (also in OUT/dataset.json)."""
    opts = options or PrepareOptions()
    source = resolve_source(source_spec, val_fraction=opts.val_fraction, seed=opts.seed, devkit=opts.devkit,
                            synsets=opts.synsets, download_dir=opts.download_dir, workers=opts.workers,
                            progress=opts.progress, classes=list(opts.classes))  # fmt: skip
    if source.kind == "store" and Path(out).resolve() == Path(source_spec).resolve():
        raise DataError(f"{out} is the dataset being read: give another OUT")
    sizing = choose_size(source, opts.size, min_side=opts.min_side, workers=opts.workers, progress=opts.progress)
    channels = opts.channels or source.channels or 3
    root = Path(out)
    plan = make_plan(source, sizing.size, channels, opts)
    lock = _lock_output(root)
    try:
        return _prepare_locked(source, root, sizing, channels, opts, plan)
    finally:
        os.close(lock)


def _lock_output(root: Path) -> int:
    """flock OUT itself (no file is added to it) so that two prepares never write one store; the
    kernel drops the lock when the process dies, so a killed run never leaves OUT locked."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise DataError(f"cannot create or open {root}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataError(f"{root} is being prepared by another process; wait for it or use another OUT") from None
    return fd


def _prepare_locked(source: Source, root: Path, sizing: SizeChoice, channels: int, opts: PrepareOptions,
                    plan: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    size = sizing.size
    done = _claim_output(root, plan, opts.overwrite)
    if done is not None:
        done["already_complete"] = True
        return done
    t0 = time.perf_counter()
    summaries = {}
    for name, split in source.splits.items():
        summaries[name] = prepare_split(split, root / name, source, size, channels, opts, plan)
    report = ["split\tpath\treason"]
    for name, s in summaries.items():
        report += [f"{name}\t{p}\t{r}" for p, r in s.pop("skipped_files")]
    write_bytes_atomic(root / "report.tsv", ("\n".join(report) + "\n").encode())
    result = {
        "format": FORMAT, "version": VERSION, "out": str(root), "source": source.spec, "kind": source.kind,
        "size": size, "size_from": sizing.reason, "size_detail": sizing.detail, "channels": channels,
        "num_classes": source.num_classes, "splits": summaries,
        "skipped": sum(s["skipped"] for s in summaries.values()), "report": str(root / "report.tsv"),
        "seconds": round(time.perf_counter() - t0, 3), "plan": plan["digest"],
    }  # fmt: skip
    if source.info.get("missing"):  # a split the source could not make, and why (ImageNet's archives)
        result["missing"] = source.info["missing"]
    write_json_atomic(root / DATASET, result)  # the completion marker: last
    shutil.rmtree(root / WORK, ignore_errors=True)
    return result


def make_plan(source: Source, size: int, channels: int, opts: PrepareOptions) -> dict[str, Any]:
    """What the output must contain; its digest decides between resuming and redoing."""
    h = hashlib.sha256(json.dumps([FORMAT, VERSION, source.kind, size, channels, source.class_ids,
                                   opts.min_side, opts.chunk, opts.shard_bytes]).encode())  # fmt: skip
    for name, split in source.splits.items():
        h.update(name.encode())
        h.update(split.labels.tobytes())
        split.items.fingerprint(h)
    return {"digest": h.hexdigest(), "source": source.spec, "size": size, "channels": channels}


def _claim_output(root: Path, plan: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Make `root` ours for this plan: the finished summary if already done, else None (resume or start)."""
    marker, work = root / DATASET, root / WORK
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except (OSError, ValueError):
            done = {}
        if done.get("plan") == plan["digest"] and not overwrite:
            return done
        if not overwrite:
            raise DataError(f"{root} already holds a different prepared dataset ({done.get('source')}); "
                            "use --overwrite or another OUT")  # fmt: skip
        marker.unlink()  # first, so an interrupted redo never looks complete
    elif root.exists() and any(root.iterdir()) and not (work / "plan.json").is_file():
        raise DataError(f"{root} exists and is not an alexnet prepare output; refusing to write into it")
    if (work / "plan.json").is_file():
        old = json.loads((work / "plan.json").read_text())
        if old.get("digest") == plan["digest"]:
            return None  # resume
    if root.exists():
        for child in root.iterdir():  # ours (checked above): redo from scratch
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / "plan.json", plan)
    return None


# ---------------------------------------------------------------- one split


def prepare_split(split: Split, path: Path, source: Source, size: int, channels: int, opts: PrepareOptions,
                  plan: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    if (path / MANIFEST).is_file():  # finished by an earlier run of this same plan
        m = json.loads((path / MANIFEST).read_text())
        return _split_summary(m)
    path.mkdir(parents=True, exist_ok=True)
    n = len(split)
    # decoded arrays are cheap per image: big chunks keep the per-chunk overhead negligible
    chunk = opts.chunk if split.items.encoded else max(opts.chunk, 2048)
    shard_rows = max(1, opts.shard_bytes // (size * size * channels))
    shards = [(shard_name(i), min(shard_rows, n - i * shard_rows)) for i in range(-(-n // shard_rows))]
    state_path = path.parent / WORK / f"{split.name}.state.npz"
    state = _load_state(state_path, n, chunk, size, channels)
    if state is None:
        for name, rows in shards:
            open_memmap_allocated(path / name, np.uint8, (rows, size, size, channels))  # reserved now, filled below
        state = _new_state(n, chunk, size, channels)
    t0 = time.perf_counter()
    pending = [k for k in range(len(state["done"])) if not state["done"][k]]
    with progress_bar(total=n, initial=n - _pending_images(pending, n, chunk), unit="img", desc=f"prepare {split.name}",
                      file=sys.stderr, disable=None if opts.progress else True) as bar:  # fmt: skip
        last_save = time.perf_counter()
        for k, ok, skips, acc in _run_chunks(split, path, pending, chunk, shard_rows, size, channels, opts):
            start = k * chunk
            state["ok"][start : start + len(ok)] = ok
            state["skips"] += skips
            state["acc"].merge(acc)
            state["done"][k] = True
            bar.update(len(ok))
            if time.perf_counter() - last_save > SAVE_EVERY_S:
                _save_state(state_path, state)
                last_save = time.perf_counter()
    _save_state(state_path, state)
    manifest = _finish_split(split, path, source, size, channels, shards, shard_rows, state, plan)
    manifest_seconds = time.perf_counter() - t0
    summary = _split_summary(manifest)
    summary["seconds"] = round(manifest_seconds, 3)
    summary["images_per_s"] = round(_pending_images(pending, n, chunk) / max(manifest_seconds, 1e-9), 1)
    return summary


def _split_summary(m: dict[str, Any]) -> dict[str, Any]:
    return {"count": m["count"], "skipped": len(m["skipped"]), "skipped_files": [tuple(s) for s in m["skipped"]],
            "path": m["path"]}  # fmt: skip


def _pending_images(pending: list[int], n: int, chunk: int) -> int:
    return sum(min(chunk, n - k * chunk) for k in pending)


def _new_state(n: int, chunk: int, size: int, channels: int) -> dict[str, Any]:
    return {"done": np.zeros(-(-n // chunk), bool), "ok": np.zeros(n, bool), "skips": [],
            "acc": StatsAccumulator(size, channels)}  # fmt: skip


def _save_state(path: Path, state: dict[str, Any]) -> None:
    skips = state["skips"]
    save_npz_atomic(path, {"done": state["done"], "ok": state["ok"], **state["acc"].state(),
                           "skip_index": np.asarray([s[0] for s in skips], np.int64),
                           "skip_reason": np.asarray([s[1] for s in skips], dtype=str)})  # fmt: skip


def _load_state(path: Path, n: int, chunk: int, size: int, channels: int) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            d = dict(z)
        state = {"done": d["done"], "ok": d["ok"], "acc": StatsAccumulator.from_state(d),
                 "skips": list(zip(d["skip_index"].tolist(), d["skip_reason"].tolist()))}  # fmt: skip
    except (OSError, ValueError, KeyError):
        return None  # a state file cut short: start the split again
    if len(state["ok"]) != n or len(state["done"]) != -(-n // chunk):
        return None
    return state


def _finish_split(split: Split, path: Path, source: Source, size: int, channels: int, shards: list, shard_rows: int,
                  state: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    ok = state["ok"]
    kept = np.flatnonzero(ok)
    if len(kept) == 0:
        reasons = sorted({r for _, r in state["skips"]})[:3]
        raise DataError(f"split {split.name}: none of its {len(split)} images could be decoded ({'; '.join(reasons)})")
    labels = split.labels[kept]
    for name, _ in shards:  # rows written through mmaps in other processes: on disk before the manifest
        with open(path / name, "rb+") as f:
            os.fsync(f.fileno())
    stats = state["acc"].finalize()
    save_npy_atomic(path / "labels.npy", labels)
    save_npz_atomic(path / "stats.npz", stats.to_arrays())
    rows_file = None
    if len(kept) < len(split):
        save_npy_atomic(path / "rows.npy", kept.astype(np.int64))
        rows_file = {"file": "rows.npy", "sha256": sha256_file(path / "rows.npy")}
    counts = np.bincount(labels, minlength=source.num_classes)
    skipped = sorted(state["skips"])
    manifest = {
        "format": FORMAT, "version": VERSION, "split": split.name, "path": str(path),
        "source": {"spec": source.spec, "kind": source.kind, **{k: v for k, v in source.info.items() if k != "class_descriptions"}},
        "count": int(len(kept)), "size": size, "channels": channels, "dtype": "uint8", "layout": "NHWC",
        "num_classes": source.num_classes, "class_names": source.class_names, "class_ids": source.class_ids,
        "class_descriptions": source.info.get("class_descriptions"),
        "counts_per_class": {n: int(c) for n, c in zip(source.class_names, counts)},
        "shard_rows": shard_rows,
        "shards": [{"file": f, "rows": r, "sha256": sha256_file(path / f)} for f, r in shards],
        "labels": {"file": "labels.npy", "sha256": sha256_file(path / "labels.npy")},
        "rows_file": rows_file,
        "stats_file": {"file": "stats.npz", "sha256": sha256_file(path / "stats.npz")},
        "stats": stats.summary(),
        "skipped": [[split.items.name(i), r] for i, r in skipped],
        "plan": plan["digest"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }  # fmt: skip
    write_json_atomic(path / MANIFEST, manifest)
    return manifest


# ---------------------------------------------------------------- decoding chunks


@dataclass(frozen=True)
class ChunkTask:
    """One chunk for a worker: decode `items` into rows start.. of the split's shards in folder `out`."""

    chunk: int  # its number in the split's list of chunks
    start: int  # the split index (and store row) of items[0]
    items: Items  # this chunk's images only: the task is pickled to a worker
    out: str
    shard_rows: int
    size: int
    channels: int
    min_side: int


def _run_chunks(split: Split, path: Path, pending: list[int], chunk: int, shard_rows: int, size: int, channels: int,
                opts: PrepareOptions):  # type: ignore[no-untyped-def]  # fmt: skip
    def task(k: int) -> ChunkTask:
        lo, hi = k * chunk, min((k + 1) * chunk, len(split))
        return ChunkTask(k, lo, split.items.take(slice(lo, hi)), str(path), shard_rows, size, channels, opts.min_side)

    # arrays: no decoding worth a process pool
    if not split.items.encoded or opts.workers == 1 or len(pending) <= 1:
        with _Writer() as writer:
            for k in pending:
                yield writer.run(task(k))
        return
    # fork: workers need only numpy/Pillow, and start in milliseconds instead of re-importing torch
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(opts.workers) as pool:
        yield from pool.imap_unordered(_pool_task, (task(k) for k in pending))


_WORKER_WRITER: _Writer | None = None


def _pool_task(t: ChunkTask) -> tuple:
    global _WORKER_WRITER
    if _WORKER_WRITER is None:
        _WORKER_WRITER = _Writer()
    return _WORKER_WRITER.run(t)


class _Writer:
    """Decodes chunks into shard rows; keeps the shards of the current split mapped."""

    def __init__(self) -> None:
        self._maps: dict[str, np.ndarray] = {}

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._maps.clear()

    def _shard(self, path: str, i: int) -> np.ndarray:
        key = os.path.join(path, shard_name(i))
        if key not in self._maps:
            if len(self._maps) > 8:
                self._maps.clear()
            self._maps[key] = np.lib.format.open_memmap(key, mode="r+")
        return self._maps[key]

    def run(self, t: ChunkTask) -> tuple:
        """(chunk, ok per image, [(split index, reason)] of the skipped, their statistics)."""
        n, size, channels = len(t.items), t.size, t.channels
        buf = np.empty((n, size, size, channels), np.uint8)
        ok = np.zeros(n, bool)
        skips = []
        for j in range(n):
            try:
                image = t.items.read(j)
                if isinstance(image, np.ndarray):
                    buf[j] = convert_array(image, size, channels)
                else:
                    buf[j] = decode_image(image, size, channels, min_side=t.min_side)
                ok[j] = True
            except BadImage as exc:
                skips.append((t.start + j, str(exc)))
        acc = StatsAccumulator(size, channels)
        acc.add(buf[ok])
        for j in np.flatnonzero(ok):
            s, r = divmod(t.start + int(j), t.shard_rows)
            self._shard(t.out, s)[r] = buf[j]
        return t.chunk, ok, skips, acc


def convert_array(img: np.ndarray, size: int, channels: int) -> np.ndarray:
    """An (H, W, C) uint8 source image to (size, size, channels): resized/cropped and gray <-> RGB."""
    if img.shape[-1] != channels:
        if channels == 3:
            img = np.repeat(img, 3, axis=-1)
        else:  # ITU-R 601 luma, as Pillow's convert("L")
            img = ((img[..., :1] * 299.0 + img[..., 1:2] * 587.0 + img[..., 2:3] * 114.0) / 1000.0).round().astype(np.uint8)
    if img.shape[0] != size or img.shape[1] != size:
        img = resize_center_crop(img, size)
    return img

