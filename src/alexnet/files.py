"""Small file helpers every layer uses: the cache folder, hashing, atomic writes, safe unpickling.

Atomic writes go to a temporary file in the destination's folder, are fsync'ed, then renamed
over the destination: a crash, a kill or a full disk leaves the previous file intact, and no
reader ever sees half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

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


@contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write through the yielded file; on a clean exit it replaces `path` whole, on an error `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
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
