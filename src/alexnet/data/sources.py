"""What every reader produces: a `Source` (classes + splits of files or arrays), and the file listing they share.

The bottom of alexnet.data: the readers (folders here, arrays.py, cifar.py, imagenet.py) import
it, resolve.py imports them, and nothing here imports any of them. Class index = sorted
class-id order (folder names / wnids), the torchvision/timm convention.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .png .webp .bmp .gif .tif .tiff .ppm .pgm .pbm .pnm .jfif".split()
)
WNID = re.compile(r"^n\d{8}$")


@dataclass
class Split:
    """One split: either files to decode (`paths`) or images already decoded (`images`, (N,H,W,C) uint8)."""

    name: str
    labels: np.ndarray
    paths: list[str] | None = None
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, name: str, idx: np.ndarray) -> Split:
        paths = None if self.paths is None else [self.paths[i] for i in idx]
        images = None if self.images is None else self.images[idx]
        return Split(name, self.labels[idx], paths, images)


@dataclass
class Source:
    """A dataset ready for `prepare`: classes, splits and a description for the manifest."""

    kind: str
    spec: str
    class_ids: list[str]
    class_names: list[str]
    splits: dict[str, Split]
    native_size: int | None = None  # array sources: their own H == W, kept unless --size asks otherwise
    channels: int | None = None  # array sources: their own channels
    info: dict = field(default_factory=dict)  # e.g. verified checksums, devkit used

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)


def list_images(folder: Path) -> list[str]:
    """Image files under `folder` (recursively, following links, hidden entries skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(root, f))
    return sorted(found)


def class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def files_by_class(folder: Path, classes: list[str], split: str) -> Split:
    """A split from `folder/<class>/**/*.<image ext>`; a class folder without images is a DataError."""
    paths: list[str] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        files = list_images(folder / c)
        if not files:
            raise DataError(f"class folder {folder / c} has no images")
        paths += files
        labels += [i] * len(files)
    return Split(split, np.asarray(labels, dtype=np.int64), paths=paths)


def class_tree(path: Path) -> Source:
    """A class-per-folder tree; its train/ val/ test/ subfolders become splits when present."""
    split_dirs = {s: path / s for s in ("train", "val", "test") if (path / s).is_dir()}
    if "train" not in split_dirs:
        split_dirs = {"train": path}
    classes = class_dirs(split_dirs["train"])
    if not classes:
        raise DataError(f"source {path} has no class folders (expected {split_dirs['train']}/<class>/<images>)")
    splits = {}
    for name, d in split_dirs.items():
        present = class_dirs(d)
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise DataError(f"{d} has classes not in train/: {', '.join(unknown[:5])}")
        # val/test may lack some classes; they keep the train class index
        splits[name] = files_by_class(d, [c for c in classes if c in present], name)
        if present != classes:
            remap = np.asarray([classes.index(c) for c in present], dtype=np.int64)
            splits[name].labels = remap[splits[name].labels]
    return Source("folder", str(path), classes, list(classes), splits)


def hold_out(source: Source, fraction: float, seed: int) -> None:
    """Move a stratified `fraction` of train into a new "val" split (same draw for the same seed)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--val-fraction must be in (0, 1), got {fraction}")
    if "val" in source.splits:
        raise DataError(f"source {source.spec} already has a val split; --val-fraction applies only without one")
    train = source.splits["train"]
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in range(source.num_classes):
        members = np.flatnonzero(train.labels == c)
        k = int(round(fraction * len(members)))
        if k and k == len(members):
            k -= 1  # keep at least one training image per class
        val_idx.append(rng.permutation(members)[:k])
    val = np.sort(np.concatenate(val_idx)) if val_idx else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(len(train)), val)
    rest = {k: v for k, v in source.splits.items() if k != "train"}
    source.splits = {"train": train.subset("train", keep), "val": train.subset("val", val), **rest}
    source.info["val_fraction"] = fraction
    source.info["val_seed"] = seed
