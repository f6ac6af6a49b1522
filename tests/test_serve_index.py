"""The explorer's neighbour index: the projection's lower bounds (or the bfloat16 scan) narrow,
`neighbors.search` ranks, and the answer is exactly neighbors.search's over the whole database;
the index and its projection are cached beside the run and rebuilt only when their source changes."""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.analysis import neighbors
from alexnet.analysis.features import FeatureSet
from alexnet.data import open_dataset
from alexnet.serve import index as index_mod
from alexnet.serve.index import IndexBuilder, NeighborIndex, cache_folder
from alexnet.serve.projection import Projection

from analysis_helpers import make_dataset, make_run


def feature_set(x: np.ndarray) -> FeatureSet:
    n = len(x)
    labels = np.arange(n) % 3
    return FeatureSet(Path("/nonexistent"), x, labels, np.arange(n) * 2, {"layer": "fc7", "class_names": ["a", "b", "c"]})


@pytest.mark.parametrize("relu", [True, False])
def test_measured_product_errors_stay_inside_the_bounds(relu):
    torch.manual_seed(0)
    d = 4096
    x = torch.randn(2000, d) * torch.rand(2000, 1) * 10
    q = torch.randn(d) * 3
    if relu:
        x, q = x.relu(), q.relu()
    x = x.half()  # the database holds float16 values
    idx = NeighborIndex(feature_set(x.numpy()), dims=())
    exact = x.double() @ q.double()
    qb = q.bfloat16()
    bf16 = torch.mv(idx.scan, qb).double()
    slack = torch.from_numpy(idx.bf16_slack(q, qb, bf16.numpy()))
    assert ((bf16 - exact).abs() <= slack / index_mod.MARGIN).all()
    assert ((bf16 - exact).abs() / slack).max() > 0.01  # a bound, not a wild overestimate
    fp32 = torch.mv(x.float(), q).double()
    assert ((fp32 - exact).abs() <= idx.gamma * q.double().norm() * x.double().norm(dim=1)).all()


def clustered(n: int = 3000, d: int = 512, seed: int = 0) -> np.ndarray:
    """ReLU features with near-duplicate clusters and exact duplicate rows: the hard case for a filter."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).relu_()
    x[100:400] = x[0] + 0.01 * torch.randn(300, d, generator=g)
    # exact ties: lower row first, as neighbors.search orders them (it promises that for up to 8 ties)
    x[500:505] = x[7]
    return x.half().numpy()


def structured(n: int = 3000, d: int = 512, rank: int = 24, seed: int = 0) -> np.ndarray:
    """Low rank plus noise, through a ReLU: variance in few directions, as in fc7; with duplicates."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=g) * torch.linspace(4, 0.5, rank)
    x = (z @ torch.randn(rank, d, generator=g) / rank**0.5 + 0.2 * torch.randn(n, d, generator=g)).relu_()
    x[500:505] = x[7]
    return x.half().numpy()


def noise(n: int = 3000, d: int = 512) -> np.ndarray:
    """ReLU of Gaussian noise: no direction holds more variance than another, the worst case for the bound."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(2)).relu_()
    x[500:505] = x[7]
    return x.half().numpy()


def exact_sq_distances(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.square(x.astype(np.float64) - q.astype(np.float64)).sum(1)


@pytest.mark.parametrize("kind", ["structured", "random", "in-span"])
def test_projection_bounds_every_distance_from_below(kind):
    g = torch.Generator().manual_seed(1)
    if kind == "structured":
        x = structured()
    elif kind == "random":
        x = noise()
    else:  # rank 8, no noise: every residual is rounding, where a bound through |x|^2 - |P x|^2 would fail
        x = (torch.randn(3000, 8, generator=g) @ torch.randn(8, 512, generator=g)).half().numpy()
        x[3] = 0  # and a zero row
    proj = Projection.build(x, dims=(8, 32), chunk_rows=700)
    assert proj.eta < 1e-10 and proj.dims == (8, 32)
    rows = np.arange(0, 3000, 7)
    for q in (x[11].astype(np.float32), x[11].astype(np.float32) + 0.05, (3 * torch.rand(512, generator=g)).numpy()):
        d2 = exact_sq_distances(x, q)
        query = proj.query(q)
        coarse, fine = proj.lower_bounds(query, 0), proj.lower_bounds(query, 1)
        assert (coarse <= d2).all() and (fine <= d2).all()
        subset = proj.lower_bounds(query, 1, rows)  # (the float32 product rounds differently on fewer rows)
        assert (subset <= d2[rows]).all() and np.allclose(subset, fine[rows], rtol=1e-5, atol=1e-3)
        if kind != "random":  # structure: the bound is close to the distance for most rows, closer with more dimensions
            ratio = [np.median(b / np.maximum(d2, 1e-30)) for b in (coarse, fine)]
            assert ratio[1] > 0.5 and ratio[1] >= ratio[0] - 1e-4  # (- a larger slack for more terms)


def search_cases(x: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """(query, exclude): a database row (and it left out), a near and a far query."""
    rng = np.random.default_rng(0)
    row, near = x[7].astype(np.float32), x[150].astype(np.float32) + 0.001
    far = rng.random(x.shape[1]).astype(np.float32)
    return [(row, -1), (row, 7), (x[0].astype(np.float32), 0), (near, -1), (near, 151), (far, -1)]


@functools.cache
def indexed(kind: str, memory: int = index_mod.INDEX_MEMORY) -> tuple[np.ndarray, NeighborIndex]:
    x = {"structured": structured, "clustered": clustered, "random": noise}[kind]()
    return x, NeighborIndex(feature_set(x), memory=memory, chunk_rows=700, dims=(8, 32))


@pytest.mark.parametrize("kind", ["structured", "clustered", "random"])
@pytest.mark.parametrize("path", ["projection", "scan", "neighbors.search"])
def test_search_is_neighbors_search_exactly(kind, path, monkeypatch):
    x, idx = indexed(kind) if path != "neighbors.search" else indexed(kind, memory=0)
    fs = idx.fs
    if path == "scan":  # the fallback when the bounds prune too little, taken on every query
        monkeypatch.setattr(index_mod, "SCAN_SHARE", -1.0)
    assert (idx.scan is None) == (path == "neighbors.search")
    for k in (1, 3, 8, 100):  # 100: more than the rows computed first
        for q, exclude in search_cases(x):
            got, ranked = idx.search(q, k, exclude=exclude)
            want = neighbors.describe(fs, neighbors.search(fs, q[None], k, exclude=None if exclude < 0 else np.array([exclude])))[0]
            assert [g["row"] for g in got] == [w["row"] for w in want]
            assert [g["distance"] for g in got] == [w["distance"] for w in want]
            assert [g["store_index"] for g in got] == [2 * w["row"] for w in want]
            assert ranked >= k and exclude not in [g["row"] for g in got]
    got, _ = idx.search(x[7].astype(np.float32), 4)
    assert [g["row"] for g in got] == [7, 500, 501, 502] and got[0]["distance"] == 0.0  # ties: lower row first
    assert idx.row_of(14) == 7 and idx.row_of(15) == -1


def test_the_projection_leaves_few_rows_on_structured_features_and_the_scan_takes_noise(monkeypatch):
    calls = []
    real = NeighborIndex.scan_search
    monkeypatch.setattr(NeighborIndex, "scan_search", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = structured(20000, 512)
    idx = NeighborIndex(feature_set(x), dims=(16, 48))
    ranked = [idx.search(x[r].astype(np.float32) + 0.01, 8, exclude=r)[1] for r in range(0, 20000, 2000)]
    assert max(ranked) < 1000 and calls == []  # of 20,000 rows
    x = noise(20000)
    got, ranked = NeighborIndex(feature_set(x), dims=(8, 32)).search(x[3].astype(np.float32) + 0.01, 8)
    assert calls == [1] and got[0]["row"] == 3 and ranked < 200  # the bound prunes nothing, the scan does


# ---------------------------------------------------------------- the cache beside the run


def test_the_projection_is_built_once_per_features_file(tmp_path, monkeypatch):
    x = structured(2000, 256)
    folder = tmp_path / "fc7-train"
    folder.mkdir()
    np.save(folder / "features.npy", x)
    fs = replace(feature_set(np.load(folder / "features.npy", mmap_mode="r")), path=folder)
    builds = []
    real = Projection.build
    monkeypatch.setattr(Projection, "build", lambda *a, **kw: builds.append(1) or real(*a, **kw))
    first = NeighborIndex(fs, dims=(8, 32), cache=folder)
    assert builds == [1] and (folder / "projection-8-32.npz").is_file()
    again = NeighborIndex(fs, dims=(8, 32), cache=folder)  # read back, not built
    assert builds == [1] and again.projection.dims == (8, 32) and again.projection.eta == first.projection.eta
    for a, b in zip(first.projection.coords, again.projection.coords):
        assert torch.equal(a, b)
    q = x[5].astype(np.float32) + 0.01
    assert again.search(q, 8) == first.search(q, 8)
    NeighborIndex(fs, dims=(16, 32), cache=folder)  # other levels: another file
    assert builds == [1, 1] and (folder / "projection-16-32.npz").is_file()
    x[:, 0] += 1  # the features change (as a re-extraction writes them): rebuilt
    np.save(folder / "features.npy", x)
    os.utime(folder / "features.npy", ns=(1, 10**18))
    fs = replace(fs, features=np.load(folder / "features.npy", mmap_mode="r"))
    changed = NeighborIndex(fs, dims=(8, 32), cache=folder)
    assert builds == [1, 1, 1] and changed.search(q, 8)[0] == neighbors.describe(fs, neighbors.search(fs, q[None], 8))[0]



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-index")
    data = make_dataset(root / "data", channels=3, size=16, per_class=8, test_per_class=2)
    return data, make_run(data, root / "run", steps=2)


def builder(source: Path, data: Path) -> IndexBuilder:
    return IndexBuilder(source, data, open_dataset(data)["train"], "fc7", progress=False)


def test_built_once_reused_and_rebuilt_when_the_checkpoint_or_store_changes(tiny, tmp_path, monkeypatch):
    data, run = tiny
    source = tmp_path / "run"
    shutil.copytree(run, source)
    store_copy = tmp_path / "data"
    shutil.copytree(data, store_copy)
    b = builder(source, store_copy)
    assert b.folder == source / "explorer" / "fc7-train"
    assert b.ready() is None and b.status.state == "building"  # the first use starts the build
    idx = b.wait(120)
    assert idx is not None and b.status.state == "ready" and len(idx) == 32
    assert idx.projection is not None and (b.folder / "projection-32-128.npz").is_file()  # kept with the features
    stamp = (b.folder / "features.npy").stat().st_mtime_ns
    (b.folder.parent / f".{b.folder.name}.dead.tmp").mkdir()  # as a killed build leaves it

    calls = []
    real = index_mod.extract_features
    monkeypatch.setattr(index_mod, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert builder(source, store_copy).wait(120) is not None and calls == []  # the next start reuses it
    assert (b.folder / "features.npy").stat().st_mtime_ns == stamp

    last = source / "last.pt"
    last.write_bytes(last.read_bytes())  # a new checkpoint (same weights, new file): rebuilt
    os.utime(last, ns=(stamp + 10**9, stamp + 10**9))
    assert builder(source, store_copy).wait(120) is not None and calls == [1]
    assert not list(b.folder.parent.glob(".fc7-train.*.tmp"))  # the killed build's leftovers are gone

    manifest = store_copy / "train" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version"', ' "version"', 1))  # the store changed
    assert builder(source, store_copy).wait(120) is not None and calls == [1, 1]
    assert builder(source, store_copy).wait(120) is not None and calls == [1, 1]


def test_a_checkpoint_file_keeps_its_index_beside_it(tiny, tmp_path):
    data, run = tiny
    ckpt = tmp_path / "model.pt"
    shutil.copy(run / "last.pt", ckpt)
    assert cache_folder(ckpt, "fc7", "train") == tmp_path / "model.pt.explorer" / "fc7-train"
    b = builder(ckpt, data)
    assert b.wait(120) is not None and (tmp_path / "model.pt.explorer" / "fc7-train" / "explorer.json").is_file()


def test_a_failed_build_says_why(tiny, tmp_path, monkeypatch):
    data, run = tiny

    def broken(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index_mod, "extract_features", broken)
    b = builder(run, data)
    b.folder = tmp_path / "elsewhere" / "fc7-train"  # not the shared run's cache
    assert b.wait(60) is None and b.status.state == "failed" and "No space left" in b.status.message
