"""The run folder: one lock, the resolved config, the environment, metrics as JSONL.

    RUN_DIR/
      config.yaml     resolved TrainConfig (+ data path, arch options)
      env.json        git commit, library versions, device, command line
      metrics.jsonl   one JSON object per log interval / validation / event
      last.pt         newest checkpoint (atomic), best.pt by validation error
      report.md       written at the end (report.py)
      .lock           flock'ed by the live run; the kernel drops it when the process dies
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import AlexNetError
from ..files import FULL_DISK_ERRNOS, disk_full_error, write_text_atomic
from ..runtime import environment


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._tb: Any = None

    def enable_tensorboard(self) -> bool:
        """Mirror numeric metrics to RUN_DIR/tensorboard when the tensorboard package is installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package
        except ImportError:
            return False
        self._tb = SummaryWriter(str(self.path / "tensorboard"))
        return True

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def lock(self) -> None:
        """Take the run's lock or fail: two runs must never write one folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise AlexNetError(f"{self.path} is in use by another run (pid {owner or '?'}); use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_config(self, config: dict[str, Any], extra: dict[str, Any], device: str,
                     env_extra: dict[str, Any] | None = None) -> None:  # fmt: skip
        write_text_atomic(self.path / "config.yaml", yaml.safe_dump({**config, **extra}, sort_keys=False))
        env = {**environment(device), **(env_extra or {})}
        env["argv"] = sys.argv
        for lib in ("numpy", "PIL", "simplejpeg"):
            try:
                env[lib] = __import__(lib).__version__
            except (ImportError, AttributeError):
                pass
        write_text_atomic(self.path / "env.json", json.dumps(env, indent=2))

    def read_config(self) -> dict[str, Any]:
        path = self.path / "config.yaml"
        if not path.is_file():
            raise AlexNetError(f"{self.path} has no config.yaml: not a run folder")
        return yaml.safe_load(path.read_text())

    def log(self, record: dict[str, Any]) -> None:
        line = json.dumps({**record, "time": round(time.time(), 3)}) + "\n"
        size = self.metrics_path.stat().st_size if self.metrics_path.exists() else 0
        try:
            with open(self.metrics_path, "a") as f:
                f.write(line)
        except OSError as exc:
            if exc.errno not in FULL_DISK_ERRNOS:
                raise
            os.truncate(self.metrics_path, size)  # no torn last line: the records before it stay readable
            raise disk_full_error(self.metrics_path, len(line)) from None
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, record["step"])
            self._tb.flush()

    def truncate_metrics(self, step: int) -> None:
        """On resume: drop records written after the checkpoint we resume from (they will be redone)."""
        if not self.metrics_path.is_file():
            return
        keep = [line for line in self.metrics_path.read_text().splitlines() if line.strip()
                and json.loads(line).get("step", 0) <= step]  # fmt: skip
        write_text_atomic(self.metrics_path, "".join(line + "\n" for line in keep))

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        lines = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines[:-1]]
        try:  # a process killed inside its last write leaves that line torn
            records += [json.loads(lines[-1])] if lines else []
        except json.JSONDecodeError:
            pass
        return records
