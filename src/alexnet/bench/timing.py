"""Shared timing helpers: alternating measurements with warm-up, medians and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def time_call(fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> float:
    """Seconds for one call of fn (synchronising the device first and after, when given)."""
    if sync:
        sync()
    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - t0


def alternate(
    candidates: dict[str, Callable[[], Any]],
    warmup: int = 2,
    repeats: int = 7,
    sync: Callable[[], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Warm each candidate up, then time them round-robin `repeats` times (so drift hits all alike).

    Returns name -> {"median_s", "min_s", "max_s", "iqr_s", "repeats"}.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            time_call(fn, sync)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            times[name].append(time_call(fn, sync))
    return {name: summarize_times(ts) for name, ts in times.items()}


def summarize_times(ts: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
    return {
        "median_s": statistics.median(ts),
        "min_s": min(ts),
        "max_s": max(ts),
        "iqr_s": q[2] - q[0],
        "repeats": len(ts),
    }
