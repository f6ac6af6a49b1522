"""The package's C++ CPU kernels (models/csrc), built as one extension on first use.

- the fused LRN, forward and backward (models/lrn.py);
- the paper's SGD update in one pass (train/optim.py, PaperSGD).

Built with torch's extension builder (~1 min) the first time anything asks for it, or by
`make setup`, and cached per machine under ~/.cache/alexnet by the hash of the sources, flags and
torch version. Where no compiler is found every caller falls back to plain torch ops.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .files import cache_dir, write_bytes_atomic

_log = logging.getLogger(__name__)
_module: Any = None  # the loaded extension, False once building or loading failed

CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-strict-aliasing", "-fopenmp"]
SOURCES = ("module.cpp", "lrn_cpu.cpp", "sgd_cpu.cpp")
CSRC = Path(__file__).parent / "models" / "csrc"


def _build_dir(sources: dict[str, bytes]) -> tuple[str, Path]:
    """A build folder named by the hash of the sources, flags and torch version, holding the sources.

    torch's extension builder keys its cache on the module name and rebuilds whenever the
    sources' paths change, so every fresh clone paid the compile again on its first training
    step. Copied into a folder named by their content hash, the same kernels are built once per
    machine (per torch version and flags) whichever checkout asks for them.
    """
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name] + b"\0")
    digest.update(" ".join(CFLAGS).encode() + torch.__version__.encode())
    key = digest.hexdigest()[:16]
    user = os.getuid() if hasattr(os, "getuid") else "user"
    for root in (cache_dir(), Path(tempfile.gettempdir()) / f"alexnet-{user}"):
        folder = root / f"kernels-{key}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in sources.items():
                copy = folder / name
                if not copy.is_file() or copy.read_bytes() != text:
                    write_bytes_atomic(copy, text)  # a concurrent process sees the old or the new file, never half
            return key, folder
        except OSError:
            continue
    raise OSError("no writable cache folder for the C++ kernel build")


def load() -> Any:
    """The extension module (built now if needed), or None where it cannot be built."""
    global _module
    if _module is None:
        try:
            from torch.utils import cpp_extension

            key, folder = _build_dir({name: (CSRC / name).read_bytes() for name in SOURCES})
            _module = cpp_extension.load(
                name=f"alexnet_cpu_{key}",
                sources=[str(folder / name) for name in SOURCES],
                build_directory=str(folder),  # torch's file lock there serialises concurrent builds
                extra_cflags=CFLAGS,
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except Exception as exc:  # no compiler, no headers, no ninja: the torch-op paths still work
            _log.info("C++ kernels unavailable, using torch ops: %s", exc)
            _module = False
    return _module or None


def available() -> bool:
    """Build the kernels now if needed (`make setup` calls this); False where they cannot be built."""
    return load() is not None
