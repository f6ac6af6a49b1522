"""Process-wide settings the CLI applies before any work (never at import).

glibc serves blocks above its mmap threshold (at most 32 MB) with fresh mmaps and unmaps
them on free, so every training step re-faults its large activation buffers page by page;
on the 2-core machines that cost the paper model ~15-25% of its step time (4.5x more minor
faults; docs/benchmarks.md). `mallopt(M_MMAP_MAX, 0)` keeps every block on the heap and a
huge trim threshold keeps freed heap memory mapped, so steady-state steps fault nothing.
No environment variable is needed; it only affects allocations made after the call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None


def tune_allocator() -> bool:
    """Stop glibc malloc from unmapping and re-faulting large blocks. True when applied (glibc only)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
