"""The explorer's neighbour search in-process, for `alexnet bench serve`: the index's search
(projection first) against its bfloat16 scan (the search before it, `NeighborIndex.scan_search`)
and `neighbors.search`, over one feature folder, alternating round after round, medians.

Two kinds of database: the benchmark's synthetic 60,000 x 4096 float16 folder (ReLU of Gaussian
noise, no structure at all: the worst case for the projection's bound), with queries near a row
and independent ones; and a real feature folder (`--features`, e.g. the fc7 vectors of a trained
net's training split) with queries from another folder (`--queries`, e.g. its test split) or its
own rows, each leaving itself out. Every timed answer is compared with `neighbors.search`'s
(rows and distances); `--check-all` compares every query of the folder once.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis import neighbors
from ..analysis.features import FORMAT, VERSION, FeatureSet, open_features
from ..errors import ConfigError
from .index import NeighborIndex

K = 8  # the page's neighbours
BASELINE_ROUNDS = 3  # neighbors.search streams the whole folder (~1-2 s a query): this many rounds of it


@dataclass
class Queries:
    name: str
    vectors: np.ndarray  # (Q, D) float32
    exclude: np.ndarray  # (Q,) the database row each leaves out, -1: none


def synthetic_folder(folder: Path, rows: int, dim: int) -> FeatureSet:
    """A feature folder in analysis.features' format: ReLU of Gaussian noise, float16."""
    folder.mkdir(parents=True)
    feats = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float16, shape=(rows, dim))
    g = torch.Generator().manual_seed(0)
    for s in range(0, rows, 4096):
        e = min(s + 4096, rows)
        feats[s:e] = torch.randn(e - s, dim, generator=g).relu_().half().numpy()
    feats.flush()
    del feats
    np.save(folder / "labels.npy", np.arange(rows, dtype=np.int64) % 10)
    np.save(folder / "indices.npy", np.arange(rows, dtype=np.int64))
    meta = {"format": FORMAT, "version": VERSION, "layer": "fc7", "dim": dim, "count": rows, "dtype": "float16",
            "views": "center", "class_names": [f"class{i}" for i in range(10)], "store": "", "split": "train"}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))
    return open_features(folder)


def synthetic_queries(fs: FeatureSet, count: int) -> list[Queries]:
    """Queries near a database row (an image with a close match) and independent ones."""
    g = torch.Generator().manual_seed(1)
    rows, dim = fs.features.shape
    near = np.stack([(torch.from_numpy(np.asarray(fs.features[(97 * i) % rows], np.float32)) + 0.3 * torch.randn(dim, generator=g))
                     .relu_().numpy() for i in range(count)])  # fmt: skip
    far = torch.randn(count, dim, generator=g).relu_().numpy()
    none = np.full(count, -1, np.int64)
    return [Queries("near query", near, none), Queries("random query", far, none)]


def folder_queries(fs: FeatureSet, queries: str | None, count: int | None) -> Queries:
    """`count` rows (seed 0; None: all) of the `queries` folder, or of `fs` itself, each then leaving itself out."""
    source = open_features(queries) if queries else fs
    if source.dim != fs.dim:
        raise ConfigError(f"the query features are {source.dim}-d, the database's {fs.dim}-d")
    rows = np.arange(len(source))
    if count is not None and count < len(source):
        rows = np.sort(np.random.default_rng(0).choice(len(source), count, replace=False))
    exclude = np.full(len(rows), -1, np.int64) if queries else rows.astype(np.int64)
    name = f"{source.meta.get('split') or 'query'} split rows" if queries else "own rows, each left out"
    return Queries(name, np.asarray(source.features[rows], np.float32), exclude)


def _same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> bool:
    return [g["row"] for g in got] == [w["row"] for w in want] and [g["distance"] for g in got] == [w["distance"] for w in want]


def _reference(fs: FeatureSet, qs: Queries) -> list[list[dict[str, Any]]]:
    """neighbors.search's answers for all of `qs` (one batched pass over the folder, untimed)."""
    exclude = qs.exclude if (qs.exclude >= 0).any() else None
    return neighbors.describe(fs, neighbors.search(fs, qs.vectors, K, exclude=exclude))


def measure(fs: FeatureSet, query_sets: list[Queries], warmup: int, repeats: int, dims: tuple[int, ...] | None = None
            ) -> tuple[dict[str, Any], NeighborIndex]:  # fmt: skip
    """Per query set: the index's search, its bfloat16 scan and neighbors.search, alternating."""
    t0 = time.perf_counter()
    index = NeighborIndex(fs) if dims is None else NeighborIndex(fs, dims=dims)
    build_s = time.perf_counter() - t0
    out: dict[str, Any] = {"rows": len(fs), "dim": fs.dim, "k": K, "dims": list(index.projection.dims) if index.projection else [],
                           "index_build_s": round(build_s, 2), "queries": {}}  # fmt: skip
    for qs in query_sets:
        want = _reference(fs, qs)
        searches: dict[str, Callable[[int], tuple[list[dict[str, Any]], int]]] = {
            "index": lambda i: index.search(qs.vectors[i], K, int(qs.exclude[i])),
            "bf16 scan": lambda i: index.scan_search(qs.vectors[i], K, int(qs.exclude[i])),
            "neighbors.search": lambda i: (neighbors.describe(fs, neighbors.search(
                fs, qs.vectors[i : i + 1], K, exclude=None if qs.exclude[i] < 0 else qs.exclude[i : i + 1]))[0], len(fs)),
        }  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in searches}
        ranked: dict[str, list[int]] = {name: [] for name in searches}
        same = dict.fromkeys(searches, 0)
        for i in range(min(len(qs.vectors), warmup + repeats)):
            for name, fn in searches.items():
                if name == "neighbors.search" and not warmup <= i < warmup + BASELINE_ROUNDS:
                    continue
                t = time.perf_counter()
                got, count = fn(i)
                t = time.perf_counter() - t
                same[name] += _same(got, want[i])
                if i >= warmup:
                    times[name].append(t)
                    ranked[name].append(count)
        out["queries"][qs.name] = {name: {**_stats(times[name]), "same_answers": f"{same[name]}/{len(times[name]) + (name != 'neighbors.search') * warmup}",
                                          "ranked_median": int(statistics.median(ranked[name])), "ranked_max": max(ranked[name])}
                                   for name in searches}  # fmt: skip
    return out, index


def check_all(index: NeighborIndex, fs: FeatureSet, qs: Queries) -> dict[str, Any]:
    """Every query of `qs` through the index against neighbors.search's batched answers."""
    want = _reference(fs, qs)
    ranked, times, same = [], [], 0
    for i, w in enumerate(want):
        t = time.perf_counter()
        got, count = index.search(qs.vectors[i], K, int(qs.exclude[i]))
        times.append(time.perf_counter() - t)
        ranked.append(count)
        same += _same(got, w)
    r = np.array(ranked)
    return {"queries": qs.name, "identical": f"{same}/{len(want)}", "mean_ms": 1e3 * float(np.mean(times)),
            **_stats(times), "ranked_median": int(np.median(r)), "ranked_p99": int(np.percentile(r, 99)),
            "ranked_max": int(r.max())}  # fmt: skip


def _stats(ts: list[float]) -> dict[str, float]:
    ms = sorted(1e3 * t for t in ts)
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1], "n": len(ms)}


def format_search(name: str, r: dict[str, Any], target_ms: float) -> list[str]:
    lines = [f"neighbours over {r['rows']:,} x {r['dim']} {name} vectors, k={r['k']} (projection levels m={r['dims']}; "
             f"index built in {r['index_build_s']} s), medians:"]  # fmt: skip
    for qname, q in r["queries"].items():
        lines.append(f"  {qname}:")
        for method in ("index", "bf16 scan", "neighbors.search"):
            s = q[method]
            mark = f"  target <= {target_ms:.0f} ms: {'ok' if s['median_ms'] <= target_ms else 'MISSED'}" if method == "index" else ""
            lines.append(f"    {method:<18} {s['median_ms']:8.2f} ms  (min {s['min_ms']:.2f}, n={s['n']}; rows ranked "
                         f"exactly: median {s['ranked_median']:,}, max {s['ranked_max']:,}; same answers as "
                         f"neighbors.search: {s['same_answers']}){mark}")  # fmt: skip
    if "check_all" in r:
        c = r["check_all"]
        lines.append(f"  every query ({c['queries']}): {c['identical']} identical to neighbors.search; index median "
                     f"{c['median_ms']:.2f} ms, mean {c['mean_ms']:.2f} ms, max {c['max_ms']:.1f} ms; rows ranked exactly: "
                     f"median {c['ranked_median']:,}, p99 {c['ranked_p99']:,}, max {c['ranked_max']:,}")  # fmt: skip
    return lines
