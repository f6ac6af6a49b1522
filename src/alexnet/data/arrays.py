"""Sources that are already pixel arrays: idx files (Fashion-MNIST, MNIST) and synthetic images (CIFAR-10: cifar.py)."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import cache_dir
from .download import fetch
from .sources import ArrayItems, Source, Split

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# sha256 of the *decompressed* idx bytes. Debian recompressed the .gz files, so the upstream
# archive md5s do not match them; the content does (computed from dataset-fashion-mnist 0.0~git20200523).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
IDX_SPLITS = {"train": "train", "test": "t10k"}


# ---------------------------------------------------------------- idx (Fashion-MNIST, MNIST)


def find_idx(folder: Path) -> dict[str, Path] | None:
    """stem -> file (.gz or raw) for the four idx files in `folder`, or None if any is missing."""
    found = {}
    for stem in FASHION_MNIST_SHA256:
        for cand in (folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")):
            if cand.is_file():
                found[stem] = cand
                break
    return found if len(found) == 4 else None


def read_idx_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when they are gzip (by content, not by name)."""
    try:
        data = Path(path).read_bytes()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """An idx file (big-endian header: 0, 0, type 0x08 = ubyte, ndim; then dims) -> uint8 array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{name} is not an idx ubyte file")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"{name}: {len(data)} bytes, header says {expected}")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def idx_folder(folder: Path, *, require_fashion: bool = False) -> Source:
    files = find_idx(folder)
    if files is None:
        raise DataError(f"{folder} lacks the idx files ({', '.join(FASHION_MNIST_SHA256)}, .gz or raw)")
    blobs = {stem: read_idx_bytes(p) for stem, p in files.items()}
    digests = {stem: hashlib.sha256(b).hexdigest() for stem, b in blobs.items()}
    fashion = digests == FASHION_MNIST_SHA256
    if require_fashion and not fashion:
        bad = [s for s in digests if digests[s] != FASHION_MNIST_SHA256[s]]
        raise DataError(f"{folder}: {', '.join(bad)} differ from Fashion-MNIST (sha256 of the decompressed content)")
    splits, side = {}, 0
    for split, prefix in IDX_SPLITS.items():
        images = parse_idx(blobs[f"{prefix}-images-idx3-ubyte"], f"{prefix}-images")
        labels = parse_idx(blobs[f"{prefix}-labels-idx1-ubyte"], f"{prefix}-labels").astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not match")
        splits[split] = Split(split, labels, ArrayItems(images[:, :, :, None]))
        if split == "train":
            side = int(images.shape[1])
    n_classes = int(max(s.labels.max() for s in splits.values())) + 1
    names = FASHION_MNIST_CLASSES if fashion else [str(i) for i in range(n_classes)]
    ids = [str(i) for i in range(len(names))]
    info = {"sha256_decompressed": digests, "verified_fashion_mnist": fashion, "files": {k: str(v) for k, v in files.items()}}
    return Source("fashion-mnist" if fashion else "idx", str(folder), ids, list(names), splits,
                  native_size=side, channels=1, info=info)  # fmt: skip


def fashion_mnist(path: str | None, *, download_dir: str | None = None, base_url: str = FASHION_MNIST_URL,
                  progress: bool = True) -> Source:  # fmt: skip
    """Fashion-MNIST from `path`, else Debian's package, else downloaded (content checked) into download_dir."""
    if path:
        if not Path(path).is_dir():
            raise DataError(f"fashion-mnist folder {path} does not exist")
        return idx_folder(Path(path), require_fashion=True)
    if find_idx(DEBIAN_FASHION_MNIST) is not None:
        return idx_folder(DEBIAN_FASHION_MNIST, require_fashion=True)
    target = Path(download_dir) if download_dir else cache_dir("fashion-mnist")
    download_fashion_mnist(target, base_url, progress=progress)
    return idx_folder(target, require_fashion=True)


def download_fashion_mnist(target: Path, base_url: str = FASHION_MNIST_URL, *, progress: bool = False) -> None:
    """Fetch the four .gz files that are not already present and correct; a content mismatch is a DataError.

    The check is on the decompressed content (FASHION_MNIST_SHA256), not pooch's hash of the
    archive: the same check then holds for Debian's recompressed files and for any mirror.
    """
    for stem, digest in FASHION_MNIST_SHA256.items():
        dest = target / f"{stem}.gz"
        if dest.is_file() and _content_sha256(dest) == digest:
            continue
        dest.unlink(missing_ok=True)  # present but wrong: fetch() would keep a file it has no hash for
        url = base_url.rstrip("/") + f"/{stem}.gz"
        try:
            fetch(url, target, dest.name, progress=progress)
        except DataError as exc:
            raise DataError(f"{exc}; install the Debian package dataset-fashion-mnist or give fashion-mnist:PATH") from None
        got = _content_sha256(dest)
        if got != digest:
            dest.unlink()
            what = f"sha256 {got[:12]}..." if got else "a broken gzip stream"
            raise DataError(f"downloaded {url} has the wrong content ({what}, expected sha256 {digest[:12]}...)")


def _content_sha256(path: Path) -> str | None:
    """sha256 of the decompressed bytes; None for a broken gzip stream."""
    try:
        return hashlib.sha256(read_idx_bytes(path)).hexdigest()
    except DataError:
        return None


# ---------------------------------------------------------------- synthetic

SYNTHETIC_DEFAULTS = {"classes": 10, "per_class": 50, "test_per_class": 10, "size": 32, "channels": 3, "seed": 0}


def synthetic(arg: str, spec: str) -> Source:
    """Gratings whose orientation, frequency and colour depend on the class, with random phase and noise.

    Keys: classes, per_class, test_per_class, size, channels, seed (e.g. synthetic:classes=10,size=32).
    """
    opts = dict(SYNTHETIC_DEFAULTS)
    for item in filter(None, arg.split(",")):
        key, eq, value = item.partition("=")
        if key not in opts or not eq:
            raise DataError(f"synthetic: unknown option {item!r} (keys: {', '.join(opts)})")
        try:
            opts[key] = int(value)
        except ValueError:
            raise DataError(f"synthetic: {key} must be an integer, got {value!r}") from None
    if opts["channels"] not in (1, 3) or opts["classes"] < 1 or opts["size"] < 4 or opts["per_class"] < 1:
        raise DataError(f"synthetic: need channels 1 or 3, classes >= 1, size >= 4, per_class >= 1 (got {opts})")
    rng = np.random.default_rng(opts["seed"])
    splits = {}
    for name, per in (("train", opts["per_class"]), ("test", opts["test_per_class"])):
        if per > 0:
            labels = np.repeat(np.arange(opts["classes"]), per)
            images = synthetic_images(labels, opts["classes"], opts["size"], opts["channels"], rng)
            splits[name] = Split(name, labels, ArrayItems(images))
    names = [f"class{i}" for i in range(opts["classes"])]
    return Source("synthetic", spec, names, list(names), splits, native_size=opts["size"],
                  channels=opts["channels"], info={"options": opts})  # fmt: skip


def synthetic_images(labels: np.ndarray, classes: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    n = len(labels)
    theta = np.pi * labels / classes
    freq = 1.5 + (labels % 3)  # cycles across the image
    phase = rng.uniform(0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:size, 0:size] / size
    wave = np.sin(2 * np.pi * freq[:, None, None] * (xx * np.cos(theta)[:, None, None] + yy * np.sin(theta)[:, None, None]) + phase[:, None, None])
    hue = 2 * np.pi * labels / classes
    colour = 0.6 + 0.4 * np.stack([np.cos(hue), np.cos(hue - 2.1), np.cos(hue + 2.1)], 1)  # (n, 3)
    if channels == 1:
        colour = colour.mean(1, keepdims=True)
    img = 128 + 80 * wave[..., None] * colour[:, None, None, :] + rng.normal(0, 16, (n, size, size, channels))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
