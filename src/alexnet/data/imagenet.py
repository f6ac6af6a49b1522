"""ImageNet (ILSVRC-2012) as people keep it (PAPER.md section 2).

    train/<wnid>/*.JPEG
    val/<wnid>/*.JPEG                      (re-sorted), or
    val/ILSVRC2012_val_00000001.JPEG ...   (flat) + the devkit's ground truth and id -> wnid map

The devkit (ILSVRC2012_devkit_t12) is looked for in --devkit, then inside the source folder.
Its `data/ILSVRC2012_validation_ground_truth.txt` holds one ILSVRC2012_ID per line in sorted
val filename order; `data/meta.mat` (MATLAB, read with scipy) maps ILSVRC2012_ID -> wnid and
words. Those IDs are not in sorted-wnid order (ID 1 is n02119789, kit fox); class indices here
are. A plain text map, `data/meta.txt` with lines "ILSVRC2012_ID wnid [words]", is read
instead when present. Human-readable names come from meta.mat/meta.txt words or from a
LOC_synset_mapping.txt-style file ("n01440764 tench, Tinca tinca").
The archives as downloaded, read without unpacking them, are imagenet_archives.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np

from ..errors import DataError
from .sources import WNID, FileItems, Source, Split, class_dirs, files_by_class, list_images

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"


def looks_like_imagenet(path: Path) -> bool:
    train = path / "train"
    if not train.is_dir():
        return False
    dirs = class_dirs(train)
    return bool(dirs) and all(WNID.match(d) for d in dirs)


def imagenet(path: Path, devkit: str | None = None, synsets: str | None = None) -> Source:
    wnids = class_dirs(path / "train")
    splits = {"train": files_by_class(path / "train", wnids, "train")}
    kit = find_devkit(path, devkit)
    meta = read_meta(kit) if kit is not None else None
    val = path / "val"
    info: dict = {"devkit": str(kit) if kit else None}
    if val.is_dir():
        present = class_dirs(val)
        if present:
            unknown = sorted(set(present) - set(wnids))
            if unknown:
                raise DataError(f"{val} has wnids not in train/: {', '.join(unknown[:5])}")
            split = files_by_class(val, present, "val")
            split.labels = np.asarray([wnids.index(w) for w in present], np.int64)[split.labels]
            splits["val"] = split
            info["val_layout"] = "folders"
        else:
            splits["val"] = flat_val(val, wnids, kit, meta)
            info["val_layout"] = "flat+devkit"
    names, descriptions = class_names(wnids, meta[1] if meta else {}, synsets)
    info["class_descriptions"] = descriptions
    return Source("imagenet", str(path), list(wnids), names, splits, info=info)


def class_names(wnids: list[str], words: dict[str, str], synsets: str | None) -> tuple[list[str], list[str]]:
    """(short names, full descriptions) of the classes, from the devkit's words and a --synsets file."""
    words = dict(words)
    if synsets:
        words.update(read_synsets(Path(synsets), wnids))
    descriptions = [words.get(w, w) for w in wnids]
    return (short_names(descriptions, wnids) if words else list(wnids)), descriptions


def find_devkit(root: Path, devkit: str | None) -> Path | None:
    """The devkit folder (the one holding data/), from --devkit or inside the source."""
    if devkit is not None:
        d = Path(devkit)
        if not d.exists():
            raise DataError(f"devkit {devkit} does not exist")
        if d.is_file():
            return d.parent.parent if d.parent.name == "data" else d.parent
        return d.parent if d.name == "data" else d
    for cand in [root, *sorted(root.glob("ILSVRC2012_devkit*")), root / "devkit"]:
        if (cand / "data").is_dir() and any((cand / "data" / f).exists() for f in (GROUND_TRUTH, "meta.mat", "meta.txt")):
            return cand
    return None


def read_meta(kit: Path) -> tuple[dict[int, str], dict[str, str]] | None:
    """ILSVRC2012_ID -> wnid and wnid -> words, from data/meta.txt or data/meta.mat."""
    txt, mat = kit / "data" / "meta.txt", kit / "data" / "meta.mat"
    if txt.is_file():
        ids, words = {}, {}
        for n, line in enumerate(txt.read_text().splitlines(), 1):
            parts = line.split(None, 2)
            if not parts:
                continue
            if len(parts) < 2 or not parts[0].isdigit() or not WNID.match(parts[1]):
                raise DataError(f"{txt}:{n}: expected 'ILSVRC2012_ID wnid [words]', got {line!r}")
            ids[int(parts[0])] = parts[1]
            words[parts[1]] = parts[2].strip() if len(parts) > 2 else parts[1]
        return ids, words
    if mat.is_file():
        return read_meta_mat(mat)
    return None


def read_meta_mat(mat: Path | IO[bytes], where: str | None = None) -> tuple[dict[int, str], dict[str, str]]:
    """The devkit's meta.mat (a path, or a file object read from the devkit's archive, named `where`):
    a `synsets` struct array (ILSVRC2012_ID, WNID, words, gloss, num_children, children,
    wordnet_height, num_train_images); the leaves (num_children 0) are the 1000 classes."""
    # Imported here for start-up time: scipy.io takes ~0.3 s to import and only this file format needs it.
    import scipy.io

    try:
        synsets = scipy.io.loadmat(str(mat) if isinstance(mat, Path) else mat, squeeze_me=True)["synsets"]
        ids, words = {}, {}
        for s in np.atleast_1d(synsets):  # squeeze_me leaves a 0-d record for a single synset
            if int(s["num_children"]) == 0:
                ids[int(s["ILSVRC2012_ID"])] = str(s["WNID"])
                words[str(s["WNID"])] = str(s["words"])
    except (scipy.io.matlab.MatReadError, OSError, ValueError, TypeError, KeyError, IndexError, NotImplementedError) as exc:
        raise DataError(f"cannot read {where or mat} as the devkit's meta.mat (a 'synsets' struct array): {exc!r}") from None
    if not ids:
        raise DataError(f"{where or mat}: no leaf synsets (num_children == 0)")
    return ids, words


def flat_val(val: Path, wnids: list[str], kit: Path | None, meta: tuple | None) -> Split:
    files = list_images(val)
    if not files:
        raise DataError(f"{val} has neither <wnid>/ folders nor images")
    gt = kit / "data" / GROUND_TRUTH if kit else None
    if gt is None or not gt.is_file():
        raise DataError(f"{val} is flat: need the devkit's data/{GROUND_TRUTH} (give --devkit PATH)")
    if meta is None:
        raise DataError(f"{val} is flat: need the devkit's data/meta.mat or data/meta.txt to map ids to wnids")
    labels = val_labels(gt.read_text(), str(gt), len(files), str(val), meta[0], wnids)
    return Split("val", labels, FileItems(files))


def val_labels(ground_truth: str, gt_where: str, n_images: int, images_where: str, wnid_of: dict[int, str],
               wnids: list[str]) -> np.ndarray:  # fmt: skip
    """Class indices (into sorted `wnids`) of the val images in name order, from the ground truth's
    ILSVRC2012_IDs (one per line) and the devkit's ID -> wnid map."""
    tokens = ground_truth.split()
    if not all(t.isdigit() for t in tokens):
        raise DataError(f"{gt_where}: expected one ILSVRC2012_ID (an integer) per line")
    ids = [int(t) for t in tokens]
    if len(ids) != n_images:
        raise DataError(f"{gt_where} has {len(ids)} labels but {images_where} has {n_images} images")
    index = {w: i for i, w in enumerate(wnids)}
    try:
        return np.asarray([index[wnid_of[i]] for i in ids], np.int64)
    except KeyError as exc:
        raise DataError(f"{gt_where}: id or wnid {exc} is not among the train classes") from None


def read_synsets(path: Path, class_ids: list[str]) -> dict[str, str]:
    """id -> words from a 'wnid words, more words' file (LOC_synset_mapping.txt); all class_ids must be there."""
    if not path.is_file():
        raise DataError(f"synset list {path} does not exist")
    words = {}
    for line in path.read_text().splitlines():
        parts = line.split(None, 1)
        if parts:
            words[parts[0]] = parts[1].strip() if len(parts) > 1 else parts[0]
    missing = [c for c in class_ids if c not in words]
    if missing:
        raise DataError(f"synset list {path} lacks {len(missing)} classes, e.g. {missing[0]}")
    return words


def names_from_synsets(path: Path, class_ids: list[str]) -> list[str]:
    words = read_synsets(path, class_ids)
    return short_names([words[c] for c in class_ids], class_ids)


def short_names(descriptions: list[str], ids: list[str]) -> list[str]:
    """First synonym of each description; ImageNet repeats some ("crane", "maillot"), so those get their id."""
    first = [d.split(",")[0].strip() for d in descriptions]
    counts: dict[str, int] = {}
    for f in first:
        counts[f] = counts.get(f, 0) + 1
    return [f if counts[f] == 1 else f"{f} ({i})" for f, i in zip(first, ids)]
