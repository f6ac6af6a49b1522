"""Activations of a named layer for every image of a store, written as memory-mapped arrays.

    FEATURES/
      features.npy   (N, D) float16 or float32, opened with mmap on read
      labels.npy     (N,) int64, the store's labels of those images
      indices.npy    (N,) int64, the rows of the store they came from
      meta.json      layer, checkpoint, store, split, class names, dtype (written last: the
                     completion marker)

The folder is built beside its destination and renamed into place at the end, so a killed
extraction never leaves a folder that looks finished. The images go through the checkpoint's
own preprocessing (inference.Predictor), exactly as at validation during training.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Store
from ..data.decode import BadImage
from ..data.store import open_split, open_store
from ..errors import ConfigError, DataError
from ..files import open_memmap_allocated
from ..inference import Predictor
from ..progress import progress_bar

FORMAT = "alexnet-features"
VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
FEATURE_VIEWS = ("center", "flip")


@dataclass
class FeatureSet:
    """An extracted feature folder: `features` is a read-only memmap (N, D)."""

    path: Path
    features: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [])

    @property
    def layer(self) -> str:
        return str(self.meta["layer"])

    def open_store(self) -> Store:
        """The store the features were taken from (for showing the images); a DataError if it moved."""
        return open_store(self.meta["store"])


def open_features(path: str | os.PathLike[str]) -> FeatureSet:
    """Open a folder written by `extract_features`; a missing or unfinished one is a DataError."""
    root = Path(path)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{root} is not a feature folder (no meta.json; make one with `alexnet features`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {meta_path}: {exc}") from None
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise DataError(f"{meta_path}: not an {FORMAT} v{VERSION} folder")
    try:
        feats = np.load(root / "features.npy", mmap_mode="r", allow_pickle=False)
        labels = np.load(root / "labels.npy", allow_pickle=False)
        indices = np.load(root / "indices.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"feature folder {root} is damaged: {exc}") from None
    if feats.ndim != 2 or len(feats) != len(labels) or len(labels) != len(indices):
        raise DataError(f"feature folder {root} is damaged: shapes {feats.shape}, {labels.shape}, {indices.shape}")
    return FeatureSet(root, feats, labels, indices, meta)


def extract_features(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    layer: str = "fc7",
    split: str | None = None,
    dtype: str = "float16",
    views: str = "center",
    batch_size: int = 256,
    limit: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = False,
) -> FeatureSet:
    """Write `layer`'s activations for every image of a store (or `limit` of them, drawn with seed 0).

    `data` is a prepared dataset folder (then `split`, default "train": the retrieval database of
    Fig. 4) or one split's folder. `views`: "center" (the checkpoint's centre crop) or "flip"
    (mean over it and its mirror).
    """
    _check_options(dtype, views, batch_size, limit)
    dest = Path(out)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise ConfigError(f"{dest} exists and is not empty; choose another --out or pass --overwrite")
    store = open_split(data, split, default=("train",))
    predictor = Predictor.load(checkpoint, device=device)
    predictor.check_store(store)

    n_all = len(store)
    if limit is not None and limit < n_all:
        indices = np.sort(np.random.default_rng(0).choice(n_all, size=limit, replace=False))
    else:
        indices = np.arange(n_all, dtype=np.int64)
    if len(indices) == 0:
        raise DataError(f"{store.path} is empty")
    dim = predictor.features(store.read(indices[:1]), layer, views).shape[1]

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        t0 = time.perf_counter()
        feats = open_memmap_allocated(tmp / "features.npy", DTYPES[dtype], (len(indices), dim))
        bar = progress_bar(total=len(indices), unit="img", desc=f"features {layer}") if progress else None
        _fill(feats, predictor, store, indices, layer, views, batch_size, bar)
        del feats
        np.save(tmp / "labels.npy", store.labels[indices].astype(np.int64))
        np.save(tmp / "indices.npy", indices.astype(np.int64))
        meta = {
            "format": FORMAT, "version": VERSION, "layer": layer, "dim": int(dim), "count": int(len(indices)),
            "dtype": dtype, "views": views, "checkpoint": str(Path(checkpoint).resolve()), "arch": predictor.arch,
            "store": str(Path(store.path).resolve()), "split": store.path.name, "store_size": n_all,
            "class_names": list(store.class_names), "seconds": round(time.perf_counter() - t0, 3),
            "device": str(predictor.device),
        }  # fmt: skip
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_features(dest)


def _check_options(dtype: str, views: str, batch_size: int, limit: int | None) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if views not in FEATURE_VIEWS:
        raise ConfigError(f"views must be one of {', '.join(FEATURE_VIEWS)}, got {views!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")


def _fill(feats: np.ndarray, predictor: Predictor, store: Store, indices: np.ndarray, layer: str, views: str,
          batch_size: int, bar: Any) -> None:  # fmt: skip
    # Reading the next batch from the memory-mapped store overlaps with the forward pass.
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(store.read, indices[0:batch_size])
        for s in range(0, len(indices), batch_size):
            images = pending.result()
            if s + batch_size < len(indices):
                pending = pool.submit(store.read, indices[s + batch_size : s + 2 * batch_size])
            feats[s : s + len(images)] = predictor.features(images, layer, views).numpy()
            if bar is not None:
                bar.update(len(images))
    if bar is not None:
        bar.close()
    feats.flush()


def image_features(
    checkpoint: str | os.PathLike[str],
    paths: Sequence[str],
    *,
    layer: str = "fc7",
    views: str = "center",
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Features of image files, preprocessed as the checkpoint records: ((Q, D) float32, (Q, C, S, S) uint8).

    An unreadable file is a DataError naming it.
    """
    predictor = Predictor.load(checkpoint, device=device)
    images = []
    for p in paths:
        try:
            images.append(predictor.read_image(p))
        except FileNotFoundError:
            raise DataError(f"query image not found: {p}") from None
        except (BadImage, OSError) as exc:
            raise DataError(f"query image {p} is not a readable image ({exc})") from None
    batch = torch.stack(images)
    return predictor.features(batch, layer, views).numpy(), batch.numpy()
