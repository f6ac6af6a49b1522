"""CIFAR-10 in its official form: the python batches of cifar-10-python.tar.gz (Krizhevsky 2009).

    cifar10            download the archive from the authors' page (md5 checked) into the cache
    cifar10:PATH       a local copy: the .tar.gz itself, the extracted cifar-10-batches-py
                       folder, or a folder holding either

Each batch is a pickled dict: b"data" uint8 (N, 3072), each row a 32x32 image as its R, G
and B planes; b"labels" N ints. batches.meta holds b"label_names". The archive is read in
place (members streamed out of the tar, never extracted to disk), and the pickles go through
a restricted unpickler, so a hostile file cannot run code.
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import DataError
from ..files import cache_dir, load_array_pickle
from .download import fetch
from .sources import ArrayItems, Source, Split

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published on the authors' page
ARCHIVE = "cifar-10-python.tar.gz"
BATCHES = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"
SIDE = 32


def find_cifar(path: Path) -> Path | None:
    """The folder holding the batches (`path` or `path/cifar-10-batches-py`), or None."""
    for cand in (path, path / BATCHES):
        if (cand / "data_batch_1").is_file() and (cand / TEST_BATCH).is_file():
            return cand
    return None


def cifar10(path: Path | None = None, *, download_dir: str | None = None, url: str | None = None,
            progress: bool = True) -> Source:  # fmt: skip
    """CIFAR-10 from a local archive or batches folder, or (path None) downloaded from `url` (default
    CIFAR10_URL) into download_dir (default: the cache folder), md5 checked."""
    info: dict[str, Any] = {}
    if path is None:
        url = url or CIFAR10_URL
        path = download_cifar10(Path(download_dir) if download_dir else cache_dir("cifar10"), url, progress=progress)
        info["url"] = url
    if path.is_dir() and find_cifar(path) is None and (path / ARCHIVE).is_file():
        path = path / ARCHIVE
    if path.is_file():
        info.update(archive=str(path), md5=_md5(path))
        info["official_archive"] = info["md5"] == CIFAR10_MD5
        batches = read_archive(path)
    elif path.is_dir() and (folder := find_cifar(path)) is not None:
        batches = read_folder(folder)
        path = folder
    else:
        raise DataError(f"{path} is neither {ARCHIVE} nor a {BATCHES} folder (data_batch_1..5, test_batch, batches.meta)")
    return source_from_batches(batches, str(path), info)


def download_cifar10(folder: Path, url: str | None = None, *, progress: bool = True) -> Path:
    """`folder/cifar-10-python.tar.gz`, fetched unless present; a wrong md5 is refused (DataError)."""
    return fetch(url or CIFAR10_URL, folder, ARCHIVE, known_hash=f"md5:{CIFAR10_MD5}", progress=progress)


def read_folder(folder: Path) -> dict[str, dict]:
    """Batch name -> unpickled dict, for the batches present in an extracted folder."""
    batches = {}
    for name in [*TRAIN_BATCHES, TEST_BATCH, META]:
        if (folder / name).is_file():
            try:
                with open(folder / name, "rb") as f:
                    batches[name] = _unpickle(f, folder / name)
            except OSError as exc:
                raise DataError(f"cannot read CIFAR batch {folder / name}: {exc.strerror or exc}") from None
    return batches


def read_archive(archive: Path) -> dict[str, dict]:
    """Batch name -> unpickled dict, streamed out of the .tar.gz (members matched by file name)."""
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META}
    batches = {}
    try:
        with tarfile.open(archive, "r|*") as tar:  # one forward pass through the gzip stream
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in wanted:
                    f = tar.extractfile(member)
                    assert f is not None  # a regular file always has a stream
                    batches[name] = _unpickle(f, Path(f"{archive}:{member.name}"))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {archive} as a tar archive: {exc}") from None
    return batches


def _unpickle(f: IO[bytes], where: Path) -> dict:
    try:
        batch = load_array_pickle(f, encoding="bytes")  # CIFAR batches are Python 2 pickles: str stays bytes
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, zlib.error) as exc:
        raise DataError(f"cannot read CIFAR batch {where}: {exc}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where}: not a CIFAR batch (a pickled dict), got {type(batch).__name__}")
    return batch


def source_from_batches(batches: dict[str, dict], spec: str, info: dict[str, Any]) -> Source:
    """The Source of the ten classes: train from data_batch_1..5 (those present, at least one), test from test_batch."""
    train = [b for b in TRAIN_BATCHES if b in batches]
    if not train or TEST_BATCH not in batches:
        raise DataError(f"{spec}: needs data_batch_1..5 and {TEST_BATCH}; found {', '.join(sorted(batches)) or 'none'}")
    names = [f"class{i}" for i in range(10)]
    if META in batches:
        try:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in batches[META][b"label_names"]]
        except (KeyError, TypeError) as exc:
            raise DataError(f"{spec}: {META} lacks b'label_names' ({exc})") from None
    splits = {"train": _split("train", [(b, batches[b]) for b in train], len(names), spec),
              "test": _split("test", [(TEST_BATCH, batches[TEST_BATCH])], len(names), spec)}  # fmt: skip
    info["batches"] = train + [TEST_BATCH]
    return Source("cifar10", spec, list(names), list(names), splits, native_size=SIDE, channels=3, info=info)


def _split(name: str, batches: list[tuple[str, dict]], num_classes: int, spec: str) -> Split:
    images, labels = [], []
    for bname, b in batches:
        try:
            data = np.asarray(b[b"data"])
            lab = np.asarray(b[b"labels"], np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{spec}: {bname} is not a CIFAR batch (needs b'data' and b'labels': {exc})") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE or lab.shape != (len(data),):
            raise DataError(f"{spec}: {bname} has data {data.dtype} {data.shape} and {lab.shape} labels; "
                            f"expected uint8 (N, {3 * SIDE * SIDE}) and N labels")  # fmt: skip
        if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
            raise DataError(f"{spec}: {bname} has labels outside 0..{num_classes - 1}")
        images.append(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))  # R, G, B planes -> (N, H, W, C)
        labels.append(lab)
    return Split(name, np.concatenate(labels), ArrayItems(np.ascontiguousarray(np.concatenate(images))))


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()
