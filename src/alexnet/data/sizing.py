"""The store's image size when --size is not given, from image headers (no decoding).

The paper's 256 (PAPER.md section 2) is the default for image files, except where every image
is smaller: a tree of 32 px CIFAR-10 JPEGs kept at 256 would be 64x the pixels, all of them
interpolated (an 11 GB store from 55 MB of JPEGs). The rule:

  * some image's short side is >= 256      -> 256, the paper's rescaling (ImageNet);
  * every short side is the same S < 256   -> S: the images' own size, nothing resized
                                              (non-square ones are center-cropped to S x S);
  * short sides differ and all are < 256   -> a DataError asking for --size: any one size
                                              upscales some images or discards the resolution
                                              of others, and which is right depends on the model.

Cost. Headers are read in a sample first, evenly spread over the files, and the scan stops at
the first image that reaches 256: on ImageNet that is the first or second file. Only when the
whole sample is smaller are all headers read (in threads), and such trees hold small files.
A JPEG header is read with simplejpeg from the file's first bytes (~10 us warm), anything
else with Pillow's lazy open (reads the header only).
"""

from __future__ import annotations

import bisect
import io
import itertools
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from ..errors import DataError
from ..progress import progress_bar
from .decode import BadImage
from .sources import Items, Source

try:
    import simplejpeg
except ImportError:  # optional (extra "fast"): Pillow reads the header instead
    simplejpeg = None

DEFAULT_SIZE = 256  # PAPER.md section 2: short side rescaled to 256, central 256 x 256 crop
SAMPLE = 256  # headers read before deciding whether the whole tree must be looked at
HEADER_BYTES = 65536  # a JPEG's SOF marker sits within the first 64 KiB unless EXIF/ICC data are larger
BATCH = 1024  # paths per thread task in the full scan


@dataclass(frozen=True)
class SizeChoice:
    """The store's side and why: "--size", "native" (the source's own size) or "default" (256)."""

    size: int
    reason: str
    detail: str = ""


def choose_size(source: Source, size: int | None, *, min_side: int = 1, workers: int = 1,
                progress: bool = False) -> SizeChoice:  # fmt: skip
    """The side to store `source`'s images at (see the module docstring); `size` is --size or None.

    Images with a short side below `min_side` are left out: decoding skips them anyway.
    """
    if size is not None:
        return SizeChoice(size, "--size")
    if source.native_size is not None:  # arrays: one size for all, known without reading anything
        return SizeChoice(source.native_size, "native", f"{source.kind} images are {source.native_size} px")
    images = _Concat([split.items for split in source.splits.values() if split.items.encoded])
    if not len(images):
        return SizeChoice(DEFAULT_SIZE, "default")
    with warnings.catch_warnings():
        # a header beyond Pillow's bomb limit only warns on a lazy open; decoding refuses the file
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _choose_from_headers(source.spec, images, min_side, workers, progress)


class _Concat:
    """Every split's encoded images as one sequence of (items, i), without listing them."""

    def __init__(self, parts: list[Items]) -> None:
        self.parts = parts
        self.ends = list(itertools.accumulate(len(p) for p in parts))

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, k: int) -> tuple[Items, int]:
        part = bisect.bisect_right(self.ends, k)
        return self.parts[part], k - (self.ends[part - 1] if part else 0)


def _choose_from_headers(spec: str, images: _Concat, min_side: int, workers: int, progress: bool) -> SizeChoice:
    step = max(1, len(images) // SAMPLE)
    for k in range(0, len(images), step)[:SAMPLE]:
        wh = image_size(*images[k])
        if wh is not None and min(wh) >= DEFAULT_SIZE:
            return SizeChoice(DEFAULT_SIZE, "default")
    shorts = scan_short_sides(images, workers=workers, progress=progress, stop_at=DEFAULT_SIZE)
    shorts = Counter({s: n for s, n in shorts.items() if s >= min_side})
    if not shorts or max(shorts) >= DEFAULT_SIZE:  # no readable image: decoding reports each file
        return SizeChoice(DEFAULT_SIZE, "default")
    if len(shorts) == 1:
        (side,) = shorts
        return SizeChoice(side, "native", f"every image's short side is {side} px")
    lo, hi = min(shorts), max(shorts)
    common = ", ".join(f"{s} px x{n}" for s, n in shorts.most_common(3))
    raise DataError(f"{spec}: every image is smaller than {DEFAULT_SIZE} px but their short sides differ "
                    f"({lo}..{hi} px; most common {common}); give --size: --size {hi} keeps the largest (upscaling "
                    f"the rest), --size {lo} only shrinks")  # fmt: skip


def scan_short_sides(images: Sequence[tuple[Items, int]], *, workers: int = 1, progress: bool = False,
                     stop_at: int | None = None) -> Counter[int]:  # fmt: skip
    """short side -> count over the readable images among `images` ((items, i) pairs; headers only, in threads).

    stop_at: return as soon as a batch holds a short side this large (the rest is not read).
    """
    counts: Counter[int] = Counter()
    batches = [range(i, min(i + BATCH, len(images))) for i in range(0, len(images), BATCH)]
    pool = ThreadPoolExecutor(max(1, workers))  # threads: the reads wait on the disk outside the GIL
    try:
        with progress_bar(total=len(images), unit="img", desc="image sizes", disable=None if progress else True) as bar:
            for batch, part in zip(batches, pool.map(lambda b: _short_sides(images, b), batches)):
                counts.update(part)
                bar.update(len(batch))
                if stop_at is not None and part and max(part) >= stop_at:
                    break
    finally:
        pool.shutdown(cancel_futures=True)
    return counts


def _short_sides(images: Sequence[tuple[Items, int]], batch: range) -> Counter[int]:
    return Counter(min(wh) for wh in (image_size(*images[k]) for k in batch) if wh is not None)


def image_size(items: Items, i: int) -> tuple[int, int] | None:
    """(width, height) of encoded image i from its header, or None when it cannot be read (decoding reports why).

    EXIF orientation may swap the two; the short side, all `choose_size` uses, stays the same.
    """
    try:
        head = items.head(i, HEADER_BYTES)
    except BadImage:
        return None
    if head[:2] == b"\xff\xd8" and simplejpeg is not None:
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(head)
            return w, h
        except ValueError:
            pass  # header beyond the first 64 KiB, or a JPEG simplejpeg refuses: Pillow below
    try:
        return _pillow_size(head)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        if len(head) < HEADER_BYTES:
            return None
    try:  # a header past the first 64 KiB (a TIFF's directory may sit at the end): the whole file
        return _pillow_size(items.read(i))  # type: ignore[arg-type]
    except (BadImage, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _pillow_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header only
        return img.size
