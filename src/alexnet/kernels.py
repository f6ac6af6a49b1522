"""The package's C++ CPU kernels (models/csrc), built as one extension on first use, and the
plumbing that makes the ops calling them differentiable under every PyTorch tool.

- the fused LRN, forward and backward (models/lrn.py, op `alexnet::lrn`);
- the paper's SGD update in one pass (train/optim.py, op `alexnet::paper_sgd_`).

Built with torch's extension builder (~1 min) the first time anything asks for it, or by
`make setup`, and cached under `alexnet.files.cache_dir()` by the hash of the sources, flags,
torch version and CPU. Where no compiler is found every caller falls back to plain torch ops.

The kernels are reached only through `torch.library` custom ops (defined next to their Python
callers), each with a fake implementation, so torch.export, torch.compile and torch.func see one
opaque op with known output shapes instead of a pybind call they cannot trace.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import platform
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .files import cache_dir, write_bytes_atomic

_log = logging.getLogger(__name__)
_module: Any = None  # the loaded extension, False once building or loading failed

CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-strict-aliasing", "-fopenmp"]
SOURCES = ("module.cpp", "lrn_cpu.cpp", "sgd_cpu.cpp")
CSRC = Path(__file__).parent / "models" / "csrc"
CPUINFO = Path("/proc/cpuinfo")


def cpu_signature() -> str:
    """What `-march=native` compiles for on this machine: the first CPU's vendor, model and
    instruction-set flags from /proc/cpuinfo; elsewhere the platform's machine and processor names.

    Part of the build's cache key, so a cache folder shared by machines with different CPUs (a
    network home) never hands one of them a binary with instructions it lacks.
    """
    try:
        first = CPUINFO.read_text(errors="replace").split("\n\n", 1)[0]
    except OSError:
        first = ""
    wanted = ("vendor_id", "cpu family", "model", "model name", "flags", "Features", "CPU implementer", "CPU part")
    lines = [line for line in first.splitlines() if line.split(":", 1)[0].strip() in wanted]
    if lines:
        return "\n".join(" ".join(line.split()) for line in lines)
    return f"{platform.system()} {platform.machine()} {platform.processor()}"


def torch_location() -> str:
    """The torch installation the build compiles and links against (its headers and libraries).

    Part of the cache key: torch's extension builder writes these paths into the folder's
    build.ninja, so two virtual environments sharing one folder rebuilt the kernels (~1 min) each
    time the other had built last; with it each environment keeps its own build.
    """
    return str(Path(torch.__file__).resolve().parent)


def cache_key(sources: dict[str, bytes]) -> str:
    """Hash of everything that determines the binary: sources, flags, torch version and location, CPU."""
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name] + b"\0")
    for part in (" ".join(CFLAGS), torch.__version__, torch_location(), cpu_signature()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def _build_dir(sources: dict[str, bytes]) -> tuple[str, Path]:
    """A build folder named by `cache_key`, holding copies of the sources.

    torch's extension builder keys its cache on the module name and rebuilds whenever the
    sources' paths change; copied into a folder named by their content hash, the kernels build
    once per machine (per torch installation, flags and CPU) whichever checkout asks for them.
    """
    key = cache_key(sources)
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
            with _build_lock(folder):
                _module = cpp_extension.load(
                    name=f"alexnet_cpu_{key}",
                    sources=[str(folder / name) for name in SOURCES],
                    build_directory=str(folder),
                    extra_cflags=CFLAGS,
                    extra_ldflags=["-fopenmp"],
                    verbose=False,
                )
        except Exception as exc:  # no compiler, no headers, no ninja: the torch-op paths still work
            _log.info("C++ kernels unavailable, using torch ops: %s", exc)
            _module = False
    return _module or None


@contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """One builder per folder at a time, by an flock the kernel drops when its holder dies.

    torch's extension builder serialises builds with a `lock` file that a killed build leaves
    behind, after which every later process waits for it forever. Holding our flock we know no
    other process of ours is building, so a `lock` file found then is stale and is removed.
    """
    with open(folder / ".build.flock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            (folder / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def available() -> bool:
    """Build the kernels now if needed (`make setup` calls this); False where they cannot be built."""
    return load() is not None


def differentiable(op: torch._ops.OpOverload) -> Callable[[type], type]:
    """Class decorator: an autograd.Function whose forward calls custom op `op` also becomes `op`'s
    registered gradient, so the op is differentiable wherever it appears (eager, torch.compile
    graphs, the graphs torch.export writes).

    Callers apply the Function rather than the op because the wrapper register_autograd makes in
    torch 2.13 has no setup_context and torch.func.grad refuses it (pytorch/pytorch#170834); a
    new-style Function works under torch.func, and under vmap it runs the op's own vmap rule
    (`register_vmap`). The Function's forward names its arguments: torch.compile cannot inline a
    `*args` forward under no_grad (torch 2.13).

    First derivatives only: the backward runs without recording (the ops it calls have no gradient
    formula of their own), so a second derivative through `op` comes out without this term.
    """

    def register(function: type) -> type:
        backward = function.backward

        def first_order(ctx: Any, *grads: Any) -> Any:
            with torch.no_grad():
                return backward(ctx, *grads)

        function.backward = staticmethod(first_order)
        function.generate_vmap_rule = True
        torch.library.register_autograd(op, first_order, setup_context=function.setup_context)
        return function

    return register
