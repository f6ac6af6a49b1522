"""The process and the machine: devices, what the CPU can do, the precision that suits it, the
glibc allocator setting, torch.compile with the project's settings, and what a result records.

Nothing here runs at import; the CLI and the library's own entry points (training, inference,
features) call `tune_allocator()` before their first large allocation.

Precision (docs/benchmarks.md, "What is chosen per CPU"): bf16 autocast pays only where the hardware
has bf16 arithmetic (AVX512_BF16 or AMX-BF16 on x86, BF16 on Arm; on CUDA, compute capability 8.0
and up). Elsewhere oneDNN emulates it and the demo's training step measured 11-14x slower than in
fp32, so `precision: auto` (every preset's default) resolves to bf16 only where it is native. The
decision reads the CPU's own feature flags, not `torch.ops.mkldnn._is_mkldnn_bf16_supported()`,
which is also true on AVX-512 CPUs that only emulate bf16, and honours `ONEDNN_MAX_CPU_ISA`,
which caps oneDNN below the CPU's level (how an AVX-512 machine is made to take AVX2's paths).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

CPUINFO = Path("/proc/cpuinfo")
# The CPU flags (Linux /proc/cpuinfo names) of native bf16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# ONEDNN_MAX_CPU_ISA values (oneDNN's names) at or above the first level with bf16 instructions;
# any other named level caps oneDNN below it, so bf16 is emulated even where the CPU has it.
ONEDNN_BF16_LEVELS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                      "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
                      "ALL", "DEFAULT")  # fmt: skip
# Measured slow-down of emulated bf16 against fp32 (docs/benchmarks.md, "What is chosen per CPU"): the demo's
# training step on an AVX2-only AMD Zen 3 (13.8x) and with AVX2 forced on an AVX-512 AMD EPYC (11.5x).
EMULATED_BF16_SLOWDOWN = "11-14x"

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


@dataclass(frozen=True)
class CpuInfo:
    """What the CPU offers this process: its name, the vector level ATen dispatches to (and a oneDNN
    cap when one is set), whether bf16 is native, and torch's thread count."""

    model: str
    isa: str  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    onednn_cap: str | None  # ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) when set
    native_bf16: bool
    bf16_reason: str  # the flag that makes it native, or what is missing
    threads: int

    def describe(self) -> str:
        """One line: `AMD EPYC, AVX512, native bf16 (avx512_bf16), 2 threads`."""
        isa = self.isa + (f" (oneDNN capped at {self.onednn_cap})" if self.onednn_cap else "")
        bf16 = f"native bf16 ({self.bf16_reason})" if self.native_bf16 else f"no native bf16 ({self.bf16_reason})"
        return f"{self.model}, {isa}, {bf16}, {self.threads} threads"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpuinfo_fields() -> dict[str, str]:
    """The first CPU's `key: value` lines of /proc/cpuinfo ({} where there is none)."""
    try:
        first = CPUINFO.read_text(errors="replace").split("\n\n", 1)[0]
    except OSError:
        return {}
    fields = {}
    for line in first.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def onednn_cap() -> str | None:
    """The oneDNN ISA cap of this process's environment, upper-cased, or None."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip() else None


def cpu_info() -> CpuInfo:
    """The CPU as this process sees it (read now: the environment's caps may change between calls)."""
    fields = _cpuinfo_fields()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    cap = onednn_cap()
    found = next((f for f in BF16_FLAGS if f in flags), None)
    if found is None:
        native, reason = False, "no AVX512_BF16, AMX-BF16 or BF16 flag" if flags else "CPU flags unknown"
    elif cap is not None and cap not in ONEDNN_BF16_LEVELS:
        native, reason = False, f"{found}, but ONEDNN_MAX_CPU_ISA={cap} caps oneDNN below it"
    else:
        native, reason = True, found
    return CpuInfo(model=" ".join(model.split()), isa=torch.backends.cpu.get_cpu_capability(), onednn_cap=cap,
                   native_bf16=native, bf16_reason=reason, threads=torch.get_num_threads())  # fmt: skip


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether `device` computes in bf16 natively (CUDA: compute capability 8.0 and up)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return device.type == "cpu" and cpu_info().native_bf16


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """A run's precision for `device`: "auto" is bf16 where it is native (native_bf16), else fp32;
    an explicit fp32/bf16/fp16 stays as asked (fp16 needs CUDA, checked by the trainer)."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def emulated_bf16_note(precision: str, device: str | torch.device = "cpu") -> str | None:
    """The one line for a bf16 run on a CPU that emulates bf16 (None otherwise)."""
    if precision != "bf16" or torch.device(device).type != "cpu":
        return None
    info = cpu_info()
    if info.native_bf16:
        return None
    return (f"precision bf16 is emulated on this CPU ({info.model}: {info.bf16_reason}): it measured "
            f"{EMULATED_BF16_SLOWDOWN} slower than fp32 on such CPUs; precision=auto chooses fp32 here")


def compile_model(module: Any, **kwargs: Any) -> Any:
    """torch.compile with the settings this project trains with.

    Inductor's peak-memory reordering is off: in torch 2.13 it can schedule the zero-fill of max-pool
    backward's scatter target, fused into the kernel that reads the gradient, before the scatter that
    writes it, so the layers below such a pool get zero (or wrong) gradients while the forward is right
    (conv -> conv -> ReLU -> max-pool on a one-channel image is enough; tests/test_tooling.py keeps a
    strict check that plain torch.compile still does this, and that this one does not).
    """
    options = {"reorder_for_peak_memory": False, **kwargs.pop("options", {})}
    return torch.compile(module, options=options, **kwargs)


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
        "cpu": cpu_info().to_dict(),
        "device": str(device),
        "git_commit": git_commit(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env
