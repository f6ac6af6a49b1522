"""The process and the machine: devices, the glibc allocator setting, and what a result records about both.

Nothing here runs at import; the CLI and the library's own entry points (training, inference,
features) call `tune_allocator()` before their first large allocation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None


def tune_allocator() -> bool:
    """Stop glibc malloc from unmapping and re-faulting large blocks. True when applied (glibc only).

    glibc serves blocks above its mmap threshold (at most 32 MB) with fresh mmaps and unmaps
    them on free, so every training step re-faults its large activation buffers page by page;
    for the paper model's training step on a 2-core CPU that cost about a third of its speed
    (docs/benchmarks.md).
    `mallopt(M_MMAP_MAX, 0)` keeps every block on the heap and a huge trim threshold keeps freed
    heap memory mapped, so steady-state steps fault nothing. It only affects allocations made
    after the call; calling it again does nothing.
    """
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


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" (CUDA when present, else the CPU) or a torch device name; a missing CUDA is a ConfigError."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda asked for but no CUDA device is available")
    return device


def git_commit() -> str | None:
    """The short commit of the checkout this package runs from, when it is one."""
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What a result needs beside it: versions, device, threads, commit, date."""
    device = torch.device(device)
    env: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "git_commit": git_commit(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env
