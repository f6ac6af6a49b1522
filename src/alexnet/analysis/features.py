"""Activations of a named layer for every image of a store, written as memory-mapped arrays.

    FEATURES/
      features.npy   (N, D) float16 or float32, opened with mmap on read
      labels.npy     (N,) int64, the store's labels of those images
      indices.npy    (N,) int64, the rows of the store they came from
      meta.json      layer, checkpoint, store, split, class names, dtype (written last: the
                     completion marker)

The folder is built beside its destination and renamed into place at the end, so a killed
extraction never leaves a folder that looks finished. The images go through the checkpoint's
own preprocessing (`eval_views`), exactly as at validation during training.
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
from torch import Tensor, nn

from ..errors import ConfigError, DataError

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

    def open_store(self) -> Any:
        """The store the features were taken from (for showing the images); a DataError if it moved."""
        from ..data import open_store

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


@torch.no_grad()
def layer_features(model: nn.Module, views: Tensor, layer: str) -> Tensor:
    """(B, V, C, H, W) normalized views -> (B, D) float32: the layer's activations, flattened, mean over V."""
    from ..models import activations

    b, v = views.shape[:2]
    out = activations(model, views.reshape(b * v, *views.shape[2:]), [layer])[layer]
    return out.reshape(b, v, -1).float().mean(dim=1)


def _resolve_split(data: str | os.PathLike[str], split: str | None) -> tuple[Any, str]:
    from ..data import open_dataset, open_store

    path = Path(data)
    if (path / "manifest.json").is_file():
        if split not in (None, path.name):
            raise ConfigError(f"{path} is one split ({path.name}); --split {split} does not apply")
        return open_store(path), path.name
    splits = open_dataset(path)
    name = split or "train"  # the retrieval database of Fig. 4 is the training set
    if name not in splits:
        raise DataError(f"{path} has no split {name!r} (found: {', '.join(splits)})")
    return splits[name], name


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

    `data` is a prepared dataset folder (then `split`, default "train") or one split's folder.
    `views`: "center" (the checkpoint's centre crop) or "flip" (mean over it and its mirror).
    """
    from ..checkpoint import Preprocess, load_checkpoint, model_from_checkpoint
    from ..runtime import resolve_device
    from ..transforms import eval_views

    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if views not in FEATURE_VIEWS:
        raise ConfigError(f"views must be one of {', '.join(FEATURE_VIEWS)}, got {views!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    dest = Path(out)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise ConfigError(f"{dest} exists and is not empty; choose another --out or pass --overwrite")
    store, split_name = _resolve_split(data, split)
    ckpt = load_checkpoint(checkpoint)
    pp = Preprocess.from_dict(ckpt["preprocess"])
    if store.channels != pp.in_chans:
        raise DataError(f"the store has {store.channels}-channel images, the model takes {pp.in_chans}")
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt).to(dev).eval()
    make_views = eval_views(pp, ckpt.get("mean_image"), dev, views)

    n_all = len(store)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    if limit is not None and limit < n_all:
        indices = np.sort(np.random.default_rng(0).choice(n_all, size=limit, replace=False))
    else:
        indices = np.arange(n_all, dtype=np.int64)
    if len(indices) == 0:
        raise DataError(f"{store.path} is empty")
    probe = layer_features(model, make_views(torch.from_numpy(store.read(indices[:1])).permute(0, 3, 1, 2).to(dev)), layer)
    dim = probe.shape[1]

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        feats = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=DTYPES[dtype], shape=(len(indices), dim))
        bar = None
        if progress:
            from ..progress import progress_bar

            bar = progress_bar(total=len(indices), unit="img", desc=f"features {layer}")
        t0 = time.perf_counter()
        starts = range(0, len(indices), batch_size)
        # Reading the next batch from the memory-mapped store overlaps with the forward pass.
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(store.read, indices[0:batch_size])
            for s in starts:
                images = pending.result()
                if s + batch_size < len(indices):
                    pending = pool.submit(store.read, indices[s + batch_size : s + 2 * batch_size])
                x = torch.from_numpy(images).permute(0, 3, 1, 2).to(dev, non_blocking=True)
                feats[s : s + len(images)] = layer_features(model, make_views(x), layer).cpu().numpy()
                if bar is not None:
                    bar.update(len(images))
        if bar is not None:
            bar.close()
        feats.flush()
        del feats
        np.save(tmp / "labels.npy", store.labels[indices].astype(np.int64))
        np.save(tmp / "indices.npy", indices.astype(np.int64))
        meta = {
            "format": FORMAT, "version": VERSION, "layer": layer, "dim": int(dim), "count": int(len(indices)),
            "dtype": dtype, "views": views, "checkpoint": str(Path(checkpoint).resolve()), "arch": ckpt["arch"],
            "store": str(Path(store.path).resolve()), "split": split_name, "store_size": n_all,
            "class_names": list(store.class_names), "seconds": round(time.perf_counter() - t0, 3),
            "device": str(dev),
        }  # fmt: skip
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_features(dest)


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
    from ..data.decode import BadImage
    from ..predict import Predictor

    pred = Predictor(checkpoint, device=device, views=views)
    images = []
    for p in paths:
        try:
            images.append(pred.load(p))
        except FileNotFoundError:
            raise DataError(f"query image not found: {p}") from None
        except (BadImage, OSError) as exc:
            raise DataError(f"query image {p} is not a readable image ({exc})") from None
    batch = torch.stack(images)
    feats = layer_features(pred.model, pred.views(batch.to(pred.device)), layer)
    return feats.cpu().numpy(), batch.numpy()
