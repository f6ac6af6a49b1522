"""ImageNet (ILSVRC-2012) as image-net.org ships it, read in place: nothing is unpacked to disk.

    ARCHIVES/ILSVRC2012_img_train.tar       1,000 inner nXXXXXXXX.tar files, each one class's JPEGs
    ARCHIVES/ILSVRC2012_img_val.tar         50,000 JPEGs, flat
    ARCHIVES/ILSVRC2012_devkit_t12.tar.gz   data/meta.mat (ILSVRC2012_ID -> wnid, words) and
                                            data/ILSVRC2012_validation_ground_truth.txt

(the folder torchvision's `ImageNet(root)` takes). The two image archives are uncompressed, so
their members are listed once from the tar headers and prepare's workers read each image with
one pread (tars.py). Classes, their order (sorted wnids), names and val labels are what the
unpacked tree gives (imagenet.py), and so is the store. A folder with only some of the files
makes the splits they allow and says what is missing (`info["missing"]`).
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .imagenet import GROUND_TRUTH, class_names, find_devkit, read_meta, read_meta_mat, val_labels
from .sources import WNID, Source, Split
from .tars import TarMembers, image_members, index_nested, list_files, open_tar

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
ARCHIVES = (TRAIN_TAR, VAL_TAR, DEVKIT_TAR)


@dataclass(frozen=True)
class Devkit:
    """What the devkit gives: ILSVRC2012_ID -> wnid and wnid -> words, and the val ground truth (text)."""

    where: str
    wnid_of: dict[int, str]
    words: dict[str, str]
    ground_truth: str | None
    gt_where: str


def find_archives(path: Path) -> list[str]:
    """Which of the three files `path` holds (none: not this layout)."""
    return [a for a in ARCHIVES if (path / a).is_file()]


def imagenet_archives(path: Path, *, devkit: str | None = None, synsets: str | None = None, workers: int = 1,
                      progress: bool = True) -> Source:  # fmt: skip
    """The Source of the archives in `path`; `devkit` (an unpacked devkit folder) stands in for the .tar.gz."""
    present = find_archives(path)
    kit = _devkit(path, devkit, present)
    missing = what_is_missing(path, present, kit)
    splits = {}
    if TRAIN_TAR in present:
        wnids, splits["train"] = train_split(path / TRAIN_TAR, workers=workers, progress=progress)
    else:
        assert kit is not None  # what_is_missing refused the rest
        wnids = sorted(kit.wnid_of.values())  # the devkit's 1,000 leaf synsets: the train classes
    if VAL_TAR in present and kit is not None and kit.ground_truth is not None:
        splits["val"] = val_split(path / VAL_TAR, kit, wnids)
    names, descriptions = class_names(wnids, kit.words if kit else {}, synsets)
    info = {"archives": present, "devkit": kit.where if kit else None, "class_descriptions": descriptions}
    if "val" in splits:
        info["val_layout"] = "archive+devkit"
    if missing:
        info["missing"] = missing
    return Source("imagenet", str(path), wnids, names, splits, info=info)


def what_is_missing(path: Path, present: list[str], kit: Devkit | None) -> str | None:
    """One line saying which split a missing file costs (None when nothing is missing); a DataError
    when what is there makes no split at all."""
    labels_val = kit is not None and kit.ground_truth is not None
    no_kit = f"{DEVKIT_TAR} (or --devkit)" if kit is None else f"{GROUND_TRUTH} in {kit.where}"
    if TRAIN_TAR not in present:
        if VAL_TAR not in present:
            raise DataError(f"{path} holds {' and '.join(present)} but neither {TRAIN_TAR} nor {VAL_TAR}: "
                            "nothing to prepare")  # fmt: skip
        if not labels_val:
            raise DataError(f"{path} lacks {TRAIN_TAR}, and {VAL_TAR} cannot be labelled without {no_kit}: "
                            "nothing to prepare")  # fmt: skip
        return f"{path} lacks {TRAIN_TAR}: val split only"
    wnid_names = "" if kit is not None else ", class names are the wnids"
    if VAL_TAR not in present:
        both = f" and {DEVKIT_TAR}" if kit is None else ""
        return f"{path} lacks {VAL_TAR}{both}: train split only{wnid_names}"
    if not labels_val:
        return f"{path} lacks {no_kit}, which labels {VAL_TAR}: train split only{wnid_names}"
    return None


def train_split(archive: Path, *, workers: int = 1, progress: bool = False) -> tuple[list[str], Split]:
    """(sorted wnids, the train split) from the outer tar of per-class inner tars."""
    with open_tar(archive) as tar:
        inner = list_files(tar, str(archive), os.path.getsize(archive))
    if not inner:
        raise DataError(f"{archive} holds no files (expected one nXXXXXXXX.tar per class)")
    for m in inner:
        stem, ext = os.path.splitext(os.path.basename(m.name))
        if ext != ".tar" or not WNID.match(stem):
            raise DataError(f"{archive} holds {m.name}, not a <wnid>.tar (the train archive holds one nXXXXXXXX.tar per class)")
    inner.sort(key=lambda m: os.path.basename(m.name))
    wnids = [os.path.basename(m.name)[:-4] for m in inner]
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{archive} holds a class's tar twice")
    names: list[str] = []
    offsets, sizes, labels = [], [], []
    for k, (m, (n, o, s)) in enumerate(zip(inner, index_nested(archive, inner, workers=workers, progress=progress))):
        if not n:
            raise DataError(f"{archive}:{m.name} has no images")
        names += n
        offsets.append(o)
        sizes.append(s)
        labels.append(np.full(len(n), k, np.int64))
    items = TarMembers(str(archive), names, np.concatenate(offsets), np.concatenate(sizes))
    return wnids, Split("train", np.concatenate(labels), items)


def val_split(archive: Path, kit: Devkit, wnids: list[str]) -> Split:
    """The flat val tar's images in name order, labelled by the devkit's ground truth."""
    with open_tar(archive) as tar:
        names, offsets, sizes = image_members(tar, str(archive), os.path.getsize(archive))
    if not names:
        raise DataError(f"{archive} has no images")
    assert kit.ground_truth is not None
    labels = val_labels(kit.ground_truth, kit.gt_where, len(names), str(archive), kit.wnid_of, wnids)
    return Split("val", labels, TarMembers(str(archive), names, offsets, sizes))


def _devkit(path: Path, devkit: str | None, present: list[str]) -> Devkit | None:
    if devkit is not None:  # an unpacked devkit, as the tree route takes it
        kit = find_devkit(path, devkit)
        assert kit is not None  # find_devkit raises for a --devkit that does not exist
        meta = read_meta(kit)
        if meta is None:
            raise DataError(f"devkit {kit} has neither data/meta.mat nor data/meta.txt")
        gt = kit / "data" / GROUND_TRUTH
        return Devkit(str(kit), *meta, gt.read_text() if gt.is_file() else None, str(gt))
    if DEVKIT_TAR in present:
        return read_devkit_archive(path / DEVKIT_TAR)
    return None


def read_devkit_archive(archive: Path) -> Devkit:
    """meta.mat and the val ground truth, streamed out of ILSVRC2012_devkit_t12.tar.gz (2.5 MB)."""
    wanted = {"meta.mat": "data/meta.mat", "gt": f"data/{GROUND_TRUTH}"}
    found: dict[str, tuple[str, bytes]] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar:
                for key, suffix in wanted.items():
                    if m.isreg() and (m.name == suffix or m.name.endswith("/" + suffix)):
                        f = tar.extractfile(m)
                        assert f is not None  # a regular file always has a stream
                        found[key] = (f"{archive}:{m.name}", f.read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {archive} as a tar.gz archive: {exc}") from None
    if "meta.mat" not in found:
        raise DataError(f"{archive} lacks {wanted['meta.mat']} (the ILSVRC2012_ID -> wnid map)")
    where, data = found["meta.mat"]
    wnid_of, words = read_meta_mat(io.BytesIO(data), where)
    gt_where, gt = found.get("gt", (f"{archive}:{wanted['gt']}", None))  # type: ignore[assignment]
    try:
        text = gt.decode("ascii") if gt is not None else None
    except UnicodeDecodeError:
        raise DataError(f"{gt_where}: expected one ILSVRC2012_ID (an integer) per line") from None
    return Devkit(str(archive), wnid_of, words, text, gt_where)
