"""Members of uncompressed tar archives, read in place: listed once, then each one read with one pread.

An uncompressed tar keeps each member's bytes contiguous at a known offset (tarfile's
`offset_data`), and a tar stored inside it is itself such an archive at a known offset, so the
members of the inner tars lie at known offsets of the outer file too (ImageNet's train
archive: 1,000 inner tars of JPEGs). Listing reads only the 512-byte headers; nothing is
extracted to disk. Compressed archives cannot be read by offset; those are small and streamed
instead (cifar.py, the ImageNet devkit).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import sys
import tarfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..progress import progress_bar
from .decode import BadImage
from .sources import Index, Items, is_image_name

BLOCK = tarfile.BLOCKSIZE


class TarMembers(Items):
    """Members of one uncompressed tar file, each `sizes[i]` bytes at `offsets[i]`; `names[i]` for the report."""

    def __init__(self, archive: str, names: list[str], offsets: np.ndarray, sizes: np.ndarray) -> None:
        self.archive, self.names = archive, names
        self.offsets, self.sizes = np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict:  # a worker opens the archive itself
        return {**self.__dict__, "_fd": None}

    def __del__(self, _close=os.close) -> None:  # type: ignore[no-untyped-def]  # os may be gone at exit
        if getattr(self, "_fd", None) is not None:
            _close(self._fd)

    def _pread(self, n: int, offset: int) -> bytes:
        try:
            if self._fd is None:
                self._fd = os.open(self.archive, os.O_RDONLY)
            return os.pread(self._fd, n, offset)
        except OSError as exc:
            raise BadImage(f"unreadable ({exc.strerror or exc})") from None

    def read(self, i: int) -> bytes:
        size = int(self.sizes[i])
        data = self._pread(size, int(self.offsets[i]))
        if len(data) != size:
            raise BadImage(f"cut short: {len(data)} of {size} bytes (the archive changed since it was listed?)")
        return data

    def head(self, i: int, n: int) -> bytes:
        return self._pread(min(n, int(self.sizes[i])), int(self.offsets[i]))

    def name(self, i: int) -> str:
        return f"{self.archive}:{self.names[i]}"

    def take(self, idx: Index) -> TarMembers:
        names = self.names[idx] if isinstance(idx, slice) else [self.names[i] for i in idx]
        return TarMembers(self.archive, names, self.offsets[idx], self.sizes[idx])

    def fingerprint(self, h: hashlib._Hash) -> None:
        h.update(self.archive.encode() + b"\0" + "\0".join(self.names).encode())
        h.update(self.offsets.tobytes() + self.sizes.tobytes())


def open_tar(path: Path) -> tarfile.TarFile:
    """`path` opened as an uncompressed tar; anything else is a DataError naming the file."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00":
            raise DataError(f"{path} is compressed; it is read in place only as the uncompressed tar image-net.org ships")
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"cannot read {path} as a tar archive: {exc}") from None


def list_files(tar: tarfile.TarFile, where: str, length: int) -> list[tarfile.TarInfo]:
    """The regular files of `tar` (a file or a window `length` bytes long); a member running past the
    end (a download cut short) or a broken header before the end is a DataError."""
    members, end = [], 0
    try:
        for m in tar:
            if m.offset_data + m.size > length:
                raise DataError(f"{where} is cut short: {m.name} ends {m.offset_data + m.size - length} bytes beyond "
                                "the end of the file (an incomplete download?)")  # fmt: skip
            members.append(m)
            end = m.offset_data + -(-m.size // BLOCK) * BLOCK
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {where} as a tar archive: {exc}") from None
    # tarfile ends its listing quietly at a header it cannot parse: there must be the end-of-archive
    # block (zeros) or the end of the data, else members after a damaged header would be lost unseen
    tar.fileobj.seek(end)  # type: ignore[union-attr]
    block = tar.fileobj.read(BLOCK)  # type: ignore[union-attr]
    if len(block) < BLOCK and block.strip(b"\0"):
        raise DataError(f"{where} is cut short in the header at byte {end} (an incomplete download?)")
    if block.strip(b"\0"):
        raise DataError(f"{where} has a damaged tar header at byte {end}; the members after it cannot be listed")
    return [m for m in members if m.isreg() and not m.issparse()]


def image_members(tar: tarfile.TarFile, where: str, length: int, base: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, offsets + base, sizes) of the image files in `tar` (names as list_images keeps them), sorted by name."""
    members = sorted((m for m in list_files(tar, where, length) if is_image_name(m.name)), key=lambda m: m.name)
    offsets = np.asarray([base + m.offset_data for m in members], np.int64)
    return [m.name for m in members], offsets, np.asarray([m.size for m in members], np.int64)


class _Window(io.RawIOBase):
    """Bytes [start, start + length) of a file, as a seekable read-only file (an inner tar, for tarfile)."""

    def __init__(self, path: str, start: int, length: int) -> None:
        self._fd, self._start, self._length, self._pos = os.open(path, os.O_RDONLY), start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = max(0, pos if whence == 0 else self._pos + pos if whence == 1 else self._length + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def, override]
        n = max(0, min(len(b), self._length - self._pos))
        data = os.pread(self._fd, n, self._start + self._pos)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def index_inner(job: tuple[str, str, int, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names "inner:member", absolute offsets, sizes) of the images in the tar stored at bytes
    [start, start + length) of `archive`; `inner` is its member name there."""
    archive, inner, start, length = job
    where = f"{archive}:{inner}"
    with _Window(archive, start, length) as raw, tarfile.open(fileobj=io.BufferedReader(raw), mode="r:") as tar:
        names, offsets, sizes = image_members(tar, where, length, base=start)
    return [f"{inner}:{n}" for n in names], offsets, sizes


def index_nested(archive: Path, inner: list[tarfile.TarInfo], *, workers: int = 1,
                 progress: bool = False) -> list[tuple[list[str], np.ndarray, np.ndarray]]:  # fmt: skip
    """index_inner of each inner tar, in order: in `workers` processes, as tarfile's header parsing is
    Python (about 36 us a member measured: 46 s for ImageNet's 1.28 M on one core)."""
    jobs = [(str(archive), m.name, m.offset_data, m.size) for m in inner]
    bar = progress_bar(total=len(jobs), unit="tar", desc=f"list {archive.name}", file=sys.stderr,
                       disable=None if progress else True)  # fmt: skip
    with bar:
        if workers == 1 or len(jobs) <= 1:
            return [bar.update(1) or index_inner(j) for j in jobs]
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            return [bar.update(1) or r for r in pool.imap(index_inner, jobs)]
