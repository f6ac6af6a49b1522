"""What every reader produces: a `Source` (classes + splits), the items protocol a split's images
follow, and the file listing the readers share.

The bottom of alexnet.data: the readers (folders here, arrays.py, cifar.py, imagenet.py,
imagenet_archives.py; tars.py reads members of tar archives) import it, resolve.py imports
them, and nothing here imports any of them (only decode.py's BadImage). Class index = sorted
class-id order (folder names / wnids), the torchvision/timm convention.

A split's images are `Items`: a sequence whose `read(i)` gives image i either as the bytes of
an encoded file, which prepare decodes (files on disk, members of an archive), or as an
(H, W, C) uint8 array of pixels (idx files, CIFAR batches, synthetic images). Prepare and
sizing use nothing else of a split's images, so a new way of holding them is one new `Items` class.
"""

from __future__ import annotations

import hashlib
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import DataError
from .decode import BadImage

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .png .webp .bmp .gif .tif .tiff .ppm .pgm .pbm .pnm .jfif".split()
)
WNID = re.compile(r"^n\d{8}$")
Index = slice | np.ndarray  # what Items.take accepts: a chunk (slice) or a subset (int array)


class Items(ABC):
    """A split's images in order: `read(i)` is image i as encoded file bytes or as (H, W, C) uint8 pixels.

    Implementations are small to pickle once `take` has cut them to a chunk: prepare sends each
    worker only its chunk's items.
    """

    encoded: ClassVar[bool] = True  # read() gives file bytes to decode; False: pixel arrays

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, i: int) -> bytes | np.ndarray:
        """Image i; an image that cannot be read raises BadImage with the reason for the report."""

    @abstractmethod
    def name(self, i: int) -> str:
        """What report.tsv and the manifest call image i (a path, archive:member, or the index)."""

    @abstractmethod
    def take(self, idx: Index) -> Items:
        """These images, in this order."""

    @abstractmethod
    def fingerprint(self, h: hashlib._Hash) -> None:
        """Feed `h` what identifies these images (prepare's plan digest: resume or redo)."""

    def head(self, i: int, n: int) -> bytes:
        """The first `n` bytes of encoded image i (its header, for sizing without decoding)."""
        data = self.read(i)
        assert isinstance(data, bytes), "head() is for encoded items"
        return data[:n]


class FileItems(Items):
    """Image files on disk, by path."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> bytes:
        return read_file(self.paths[i])

    def head(self, i: int, n: int) -> bytes:
        return read_file(self.paths[i], n)

    def name(self, i: int) -> str:
        return self.paths[i]

    def take(self, idx: Index) -> FileItems:
        return FileItems(self.paths[idx] if isinstance(idx, slice) else [self.paths[i] for i in idx])

    def fingerprint(self, h: hashlib._Hash) -> None:
        h.update("\0".join(self.paths).encode())


class ArrayItems(Items):
    """Images already decoded: an (N, H, W, C) uint8 array."""

    encoded = False

    def __init__(self, images: np.ndarray) -> None:
        assert images.ndim == 4 and images.dtype == np.uint8, (images.shape, images.dtype)
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def read(self, i: int) -> np.ndarray:
        return self.images[i]

    def name(self, i: int) -> str:
        return str(i)

    def take(self, idx: Index) -> ArrayItems:
        return ArrayItems(self.images[idx])

    def fingerprint(self, h: hashlib._Hash) -> None:
        h.update(np.ascontiguousarray(self.images).data)


def read_file(path: str, n: int = -1) -> bytes:
    """The bytes of an image file (its first `n` when n >= 0); unreadable files raise BadImage with the reason."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except PermissionError:
        raise BadImage("unreadable (permission denied)") from None
    except FileNotFoundError:
        raise BadImage("broken symlink" if os.path.islink(path) else "file vanished") from None
    except OSError as exc:
        raise BadImage(f"unreadable ({exc.strerror or exc})") from None


@dataclass
class Split:
    """One split: its images (`items`) and their class indices."""

    name: str
    labels: np.ndarray
    items: Items

    def __post_init__(self) -> None:
        assert len(self.labels) == len(self.items), (self.name, len(self.labels), len(self.items))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, name: str, idx: np.ndarray) -> Split:
        return Split(name, self.labels[idx], self.items.take(idx))


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


def is_image_name(name: str) -> bool:
    """Whether a relative path names an image file that listings keep: an image extension, no hidden part."""
    parts = name.split("/")
    return not any(p.startswith(".") for p in parts) and os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS


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
    return Split(split, np.asarray(labels, dtype=np.int64), FileItems(paths))


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


def select_classes(source: Source, wanted: list[str]) -> None:
    """Keep only the classes in `wanted` (class ids or names), in the source's own class order,
    renumbered from 0; every split keeps just their images. An unknown class is a DataError."""
    index = {**{n: i for i, n in enumerate(source.class_names)}, **{c: i for i, c in enumerate(source.class_ids)}}
    unknown = [w for w in wanted if w not in index]
    if unknown:
        raise DataError(f"--classes: {', '.join(map(repr, unknown[:5]))} not among the {source.num_classes} classes of "
                        f"{source.spec} ({', '.join(source.class_names[:10])}{', ...' if source.num_classes > 10 else ''})")  # fmt: skip
    keep = sorted({index[w] for w in wanted})
    if not keep:
        raise DataError("--classes names no class")
    remap = np.full(source.num_classes, -1, np.int64)
    remap[keep] = np.arange(len(keep))
    for name, split in source.splits.items():
        rows = np.flatnonzero(remap[split.labels] >= 0)
        sub = split.subset(name, rows)
        sub.labels = remap[sub.labels]
        source.splits[name] = sub
    descriptions = source.info.get("class_descriptions")
    if isinstance(descriptions, list) and len(descriptions) == source.num_classes:
        source.info["class_descriptions"] = [descriptions[i] for i in keep]
    source.class_ids = [source.class_ids[i] for i in keep]
    source.class_names = [source.class_names[i] for i in keep]
    source.info["classes"] = list(source.class_ids)


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
