"""Alternating benchmark of several candidates, each in its own worker process (bench/worker.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from ..errors import AlexNetError
from .timing import summarize_times


class Worker:
    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name, self.spec = name, spec
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alexnet.bench.worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        self._read()  # ready

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AlexNetError(f"benchmark worker {self.name} died: {err.strip().splitlines()[-1] if err.strip() else '?'}")
        return json.loads(line)

    def time(self, steps: int) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"step {steps}\n")
        self.proc.stdin.flush()
        return float(self._read()["seconds"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def run_alternating(specs: dict[str, dict[str, Any]], warmup: int = 2, repeats: int = 5, steps: int = 1) -> dict[str, Any]:
    """Start one worker per spec, warm each up, then time them round-robin; median per candidate.

    Workers are started one after another and only one computes at a time, so they never
    compete for the cores; their memory stays resident between rounds.
    """
    workers: dict[str, Worker] = {}
    try:
        for name, spec in specs.items():
            workers[name] = Worker(name, spec)
            for _ in range(warmup):
                workers[name].time(steps)
        times: dict[str, list[float]] = {name: [] for name in specs}
        for _ in range(repeats):
            for name, w in workers.items():
                times[name].append(w.time(steps))
    finally:
        for w in workers.values():
            w.close()
    out: dict[str, Any] = {}
    for name, ts in times.items():
        s = summarize_times(ts)
        batch = int(specs[name]["batch"])
        s["images_per_s"] = batch / s["median_s"]
        s["spec"] = specs[name]
        out[name] = s
    return out
