"""The explorer's neighbour index: the bfloat16 scan narrows, `neighbors.search` ranks, and the
answer is exactly neighbors.search's over the whole database; the index is cached beside the
run and rebuilt only when the checkpoint or the store changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.analysis import neighbors
from alexnet.analysis.features import FeatureSet
from alexnet.data import open_dataset
from alexnet.serve import index as index_mod
from alexnet.serve.index import IndexBuilder, NeighborIndex, cache_folder

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
    idx = NeighborIndex(feature_set(x.numpy()))
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


@pytest.mark.parametrize("memory", [index_mod.INDEX_MEMORY, 0])  # the bfloat16 scan, and neighbors.search alone
def test_search_is_neighbors_search_exactly(memory):
    x = clustered()
    fs = feature_set(x)
    idx = NeighborIndex(fs, memory=memory, chunk_rows=700)
    assert (idx.scan is None) == (memory == 0)
    rng = np.random.default_rng(0)
    queries = [x[0].astype(np.float32), x[150].astype(np.float32) + 0.001, x[7].astype(np.float32),
               rng.random(x.shape[1]).astype(np.float32)]  # fmt: skip
    for k in (1, 8, 30):
        for q in queries:
            got, ranked = idx.search(q, k)
            want = neighbors.describe(fs, neighbors.search(fs, q[None], k))[0]
            assert [g["row"] for g in got] == [w["row"] for w in want]
            assert [g["store_index"] for g in got] == [2 * w["row"] for w in want]
            assert np.allclose([g["distance"] for g in got], [w["distance"] for g, w in zip(got, want)], rtol=1e-6)
            assert ranked >= k
    # a query from the database leaves itself out, as `alexnet neighbors` does
    got, _ = idx.search(x[7].astype(np.float32), 5, exclude=7)
    want = neighbors.describe(fs, neighbors.search(fs, x[7:8].astype(np.float32), 5, exclude=np.array([7])))[0]
    assert [g["row"] for g in got] == [w["row"] for w in want] and 7 not in [g["row"] for g in got]
    assert idx.row_of(14) == 7 and idx.row_of(15) == -1


def test_the_scan_narrows_to_few_rows():
    x = torch.randn(20000, 1024).relu_().half().numpy()
    got, ranked = NeighborIndex(feature_set(x)).search(x[3].astype(np.float32) + 0.01, 8)
    assert got[0]["row"] == 3 and ranked < 200


# ---------------------------------------------------------------- the cache beside the run


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
