"""Small file helpers every layer uses: the cache folder, hashing, atomic writes, safe unpickling.

Atomic writes go to a temporary file in the destination's folder, are fsync'ed, then renamed
over the destination: a crash, a kill or a full disk leaves the previous file intact, and no
reader ever sees half a file.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import DiskFullError

PathLike = str | os.PathLike[str]


def cache_dir(*parts: str) -> Path:
    """$ALEXNET_CACHE, else $XDG_CACHE_HOME/alexnet, else ~/.cache/alexnet (joined with `parts`)."""
    if os.environ.get("ALEXNET_CACHE"):
        base = Path(os.environ["ALEXNET_CACHE"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alexnet"
    return base.joinpath(*parts)


def sha256_file(path: PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _mb(n: float) -> str:
    return f"{n / 2**10:,.0f} KB" if n < 10 * 2**20 else f"{n / 2**20:,.1f} MB"


def disk_full_error(path: PathLike, written: int, failed_write: int = 0, *, exact: bool = False) -> DiskFullError:
    """The one line for a full disk: the file, what it needed at least, what is free, what was kept."""
    path = Path(path)
    try:
        free = _mb(shutil.disk_usage(path.parent).free)
    except OSError:
        free = "an unknown amount"
    kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
    need = f"needs {_mb(written)}" if exact else f"needed more than {_mb(written + failed_write)}"
    return DiskFullError(errno.ENOSPC, f"the disk is full: writing {path} {need}, {free} free there; {kept}")


class _CountingFile:
    """The temp file as the writer sees it, counting what reached it and keeping a full-disk error
    that a writer (torch.save) would otherwise turn into its own message."""

    def __init__(self, f: IO[Any]) -> None:
        self._f, self.written, self.full = f, 0, None

    def write(self, data: Any) -> int:
        try:
            n = self._f.write(data)
        except OSError as exc:
            if exc.errno in FULL_DISK_ERRNOS:
                self.full = (exc, len(memoryview(data).cast("B")) if not isinstance(data, str) else len(data))
            raise
        self.written += n if n is not None else 0
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write through the yielded file; on a clean exit it replaces `path` whole, on an error `path` is untouched.

    A full disk (ENOSPC, EDQUOT), however the writer reports it, becomes one DiskFullError naming
    the file, the space it needed at least and the space free; the partial temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    counting = None
    try:
        with os.fdopen(fd, mode) as f:
            counting = _CountingFile(f)
            yield counting  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        full = isinstance(exc, OSError) and exc.errno in FULL_DISK_ERRNOS
        if counting is not None and (counting.full or full):
            raise disk_full_error(path, counting.written, counting.full[1] if counting.full else 0) from None
        raise


def open_memmap_allocated(path: PathLike, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    """A new .npy memory map whose disk blocks are reserved now (posix_fallocate).

    A memory map over a sparse file finds a full disk only when a page is written back, and then
    the process dies of SIGBUS with nothing said; reserving the blocks up front turns that into
    one DiskFullError naming the file, the space it needs and the space free, before any work.
    """
    path = Path(path)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):
        size = path.stat().st_size
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in FULL_DISK_ERRNOS:
                if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem that cannot reserve: sparse as before
                    return arr
                raise
            del arr
            path.unlink(missing_ok=True)
            raise disk_full_error(path, size, exact=True) from None
        finally:
            os.close(fd)
    return arr


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that takes only a file name (ONNX, TorchScript,
    safetensors); renamed over `path` on success, removed on an error, so `path` is whole or untouched.

    Such writers report a full disk in their own words (or not at all); when the disk has no more
    room than the partial file took, the error becomes one DiskFullError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        full = isinstance(exc, OSError) and exc.errno in FULL_DISK_ERRNOS
        if not full and not isinstance(exc, KeyboardInterrupt):
            try:
                full = shutil.disk_usage(path.parent).free <= written + 2**20
            except OSError:
                full = False
        if full:
            raise disk_full_error(path, written) from None
        raise


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def save_npy_atomic(path: PathLike, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


def save_npz_atomic(path: PathLike, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


# ---------------------------------------------------------------- pickles of NumPy arrays


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to reconstruct {subtype!r}: only numpy.ndarray is allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(str, "latin1").
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ARRAY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1.x and Python 2 pickles
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class ArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals NumPy needs to rebuild arrays, so a hostile pickle cannot run code.

    Dicts, lists, tuples and strings are built by pickle opcodes and need no globals at all.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ARRAY_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent ids")


def load_array_pickle(f: IO[bytes], encoding: str = "latin1") -> Any:
    """Unpickle arrays, dicts and lists from `f` without running code (pickle.UnpicklingError otherwise).

    encoding: how Python 2 str objects are decoded ("bytes" keeps them as bytes, as the CIFAR
    batches need; "latin1" is NumPy's choice for Python 2 array data).
    """
    return ArrayUnpickler(f, encoding=encoding).load()
