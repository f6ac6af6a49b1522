"""Exact neighbours (Fig. 4) against brute force; binary codes, Hamming search and their measured recall."""

from __future__ import annotations

import json

import numpy as np
import pytest
from analysis_helpers import make_dataset, make_run

from alexnet.analysis.features import FeatureSet, extract_features
from alexnet.analysis.hashing import BinaryHasher, hamming_distances, hamming_search, train_hasher
from alexnet.analysis.retrieval import exact_search, faiss_available, rank_candidates, recall_at_k
from alexnet.analysis.retrieval_bench import benchmark_codes, codes_for
from alexnet.cli import main
from alexnet.errors import ConfigError


def _brute(db: np.ndarray, q: np.ndarray, k: int, exclude=None):
    d = ((q[:, None, :].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1)
    if exclude is not None:
        d[np.arange(len(q)), exclude] = np.inf
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.sqrt(np.take_along_axis(d, idx, 1))


def _clusters(n: int, dim: int, centres: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative clustered vectors, like post-ReLU fc7 activations of images of a few classes."""
    rng = np.random.default_rng(seed)
    c = rng.gamma(1.0, 1.0, (centres, dim)) * (rng.random((centres, dim)) < 0.3)
    labels = rng.integers(0, centres, n)
    x = np.maximum(c[labels] + 0.35 * rng.standard_normal((n, dim)), 0)
    return x.astype(np.float32), labels


def test_ranking_candidates_is_exact_searchs_last_step():
    db, _ = _clusters(500, 32, 5)
    db[40:43] = db[7]  # ties: lower row first
    for q in (db[7], db[100] + 0.01):
        want = exact_search(db, q, 6)
        rows = np.random.default_rng(0).permutation(np.concatenate([want.indices[0], [1, 2, 300, 499]]))
        got = rank_candidates(db, q, rows, 6)
        assert np.array_equal(got.indices, want.indices) and np.array_equal(got.distances, want.distances)
    assert list(rank_candidates(db, db[7], np.array([43, 42, 41, 40, 7]), 3).indices[0]) == [7, 40, 41]


@pytest.mark.parametrize("chunk_rows", [None, 1, 37, 1000])
def test_exact_search_matches_brute_force_on_a_float16_memmap(tmp_path, chunk_rows):
    rng = np.random.default_rng(1)
    db = np.lib.format.open_memmap(tmp_path / "db.npy", mode="w+", dtype=np.float16, shape=(600, 48))
    db[:] = rng.standard_normal((600, 48))
    db.flush()
    db = np.load(tmp_path / "db.npy", mmap_mode="r")
    q = rng.standard_normal((25, 48)).astype(np.float32)
    found = exact_search(db, q, 7, chunk_rows=chunk_rows, query_block=8)
    idx, dist = _brute(db, q, 7)
    np.testing.assert_array_equal(found.indices, idx)
    np.testing.assert_allclose(found.distances, dist, rtol=1e-6)
    assert (np.diff(found.distances, axis=1) >= 0).all()


def test_exclude_leaves_each_query_out_and_ties_go_to_the_lower_row():
    rng = np.random.default_rng(2)
    db = rng.standard_normal((200, 16)).astype(np.float32)
    db[150] = db[10]  # an exact duplicate: equal distances, row 10 must come first
    found = exact_search(db, db[:20], 3, exclude=np.arange(20), chunk_rows=64)
    idx, dist = _brute(db, db[:20], 3, exclude=np.arange(20))
    assert (found.indices != np.arange(20)[:, None]).all()
    np.testing.assert_array_equal(found.indices, idx)
    dup = exact_search(db, db[10:11], 2)
    assert dup.indices.tolist() == [[10, 150]] and dup.distances.tolist() == [[0.0, 0.0]]
    with pytest.raises(ConfigError, match="k must be"):
        exact_search(db, db[:2], 201)
    with pytest.raises(ConfigError, match="dimension 16"):
        exact_search(db, np.zeros((2, 15)), 3)


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_faiss_backend_agrees_with_torch():
    rng = np.random.default_rng(3)
    db, q = rng.standard_normal((500, 32)).astype(np.float32), rng.standard_normal((9, 32)).astype(np.float32)
    np.testing.assert_array_equal(exact_search(db, q, 5, backend="faiss").indices, exact_search(db, q, 5).indices)


def test_recall_at_k_is_the_overlap_fraction():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(truth, truth) == 1.0
    assert recall_at_k(np.array([[3, 9, 1], [7, 8, 9]]), truth) == pytest.approx((2 / 3 + 0) / 2)
    assert recall_at_k(np.array([[1, 0], [0, 4]]), truth[:, :2], k=2) == 0.5


def test_hamming_distance_popcount_and_search_order():
    rng = np.random.default_rng(4)
    bits = rng.random((300, 128)) < 0.5
    codes = np.packbits(bits, axis=1).view(np.uint64)
    q = codes[:5]
    ref = (bits[:5, None, :] != bits[None, :, :]).sum(-1)
    np.testing.assert_array_equal(hamming_distances(codes, q), ref)
    found = hamming_search(codes, q, 10, query_block=2)
    key = ref * 300 + np.arange(300)  # distance, then row: the documented order
    np.testing.assert_array_equal(found.indices, np.argsort(key, axis=1)[:, :10])
    np.testing.assert_array_equal(found.distances, np.sort(ref, axis=1)[:, :10])
    assert found.indices[:, 0].tolist() == list(range(5))  # each code is at distance 0 from itself


def test_lsh_codes_are_signs_of_projections_and_round_trip(tmp_path):
    x, _ = _clusters(400, 40, 5)
    h = train_hasher(x, 72, method="lsh", seed=3)
    codes = h.encode(x, batch=97)
    assert codes.shape == (400, 2) and codes.dtype == np.uint64  # 72 bits padded to two 64-bit words
    expect = ((x - h.mean) / h.scale) @ h.projection > 0
    unpacked = np.unpackbits(codes.view(np.uint8), axis=1)
    np.testing.assert_array_equal(unpacked[:, :72], expect)
    assert not unpacked[:, 72:].any()
    h.save(tmp_path / "h.pt")
    np.testing.assert_array_equal(BinaryHasher.load(tmp_path / "h.pt").encode(x), codes)
    with pytest.raises(ConfigError, match="multiple of 8"):
        train_hasher(x, 70)


def test_autoencoder_codes_recall_is_measured_and_beats_chance(tmp_path):
    x, labels = _clusters(1200, 64, 8, seed=5)
    db, q = x[:1000], x[1000:1060]
    h = train_hasher(db, 32, hidden=64, epochs=12, batch_size=128, seed=0)
    assert h.info["saturation"] > 0.5  # the code-layer noise pushed the logistic units towards 0 or 1
    truth = exact_search(db, q, 10)
    codes = h.encode(db)
    plain = hamming_search(codes, h.encode(q), 10)
    rerank = hamming_search(codes, h.encode(q), 10, features=db, queries=q, shortlist=100)
    r_plain, r_rerank = recall_at_k(plain.indices, truth.indices), recall_at_k(rerank.indices, truth.indices)
    # Chance is 10/1000. Reconstruction-trained codes keep the clusters (labels) far better than the
    # order inside a cluster, so plain Hamming recall is low and the re-ranked shortlist recovers it.
    assert r_plain > 0.04 and r_rerank > r_plain and r_rerank > 0.5
    full = hamming_search(codes, h.encode(q), 10, features=db, queries=q, shortlist=1000)
    np.testing.assert_array_equal(full.indices, truth.indices)  # a shortlist of everything is exact search
    same_label = (labels[:1000][plain.indices] == labels[1000:1060, None]).mean()
    assert same_label > 0.8
    h.save(tmp_path / "ae.pt")
    np.testing.assert_array_equal(BinaryHasher.load(tmp_path / "ae.pt").encode(q), h.encode(q))


def _feature_set(tmp_path, x: np.ndarray, labels: np.ndarray) -> FeatureSet:
    np.save(tmp_path / "features.npy", x)
    np.save(tmp_path / "labels.npy", labels.astype(np.int64))
    np.save(tmp_path / "indices.npy", np.arange(len(x), dtype=np.int64))
    meta = {"format": "alexnet-features", "version": 1, "layer": "fc7", "dim": x.shape[1], "count": len(x),
            "class_names": [f"c{i}" for i in range(labels.max() + 1)], "store": "nowhere"}  # fmt: skip
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    from alexnet.analysis.features import open_features

    return open_features(tmp_path)


def test_benchmark_reports_recall_it_computed_and_caches_codes(tmp_path):
    x, labels = _clusters(900, 48, 6, seed=7)
    fs = _feature_set(tmp_path, x[:800], labels[:800])
    r = benchmark_codes(fs, x[800:], labels[800:], bits=(16, 32), k=5, shortlist=50, repeats=1, hidden=48, epochs=3)
    truth = exact_search(fs.features, x[800:], 5).indices
    assert [(row["method"], row["bits"]) for row in r["rows"]] == [("autoencoder", 16), ("autoencoder", 32),
                                                                   ("lsh", 16), ("lsh", 32)]  # fmt: skip
    for row in r["rows"]:
        h, codes = codes_for(fs, row["bits"], row["method"])  # from the cache written by the benchmark
        again = hamming_search(codes, h.encode(x[800:]), 5).indices
        assert row["recall"] == pytest.approx(recall_at_k(again, truth))
        assert 0 <= row["recall"] <= row["recall_rerank"] <= 1
        assert row["speedup"] > 0 and row["ms_per_query"] > 0
    assert sorted(p.name for p in (tmp_path / "codes").iterdir())[:2] == ["autoencoder-16.npy", "autoencoder-16.pt"]
    assert r["exact_label_precision"] > 0.8


@pytest.fixture(scope="module")
def feature_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb")
    data = make_dataset(root / "data")
    run = make_run(data, root / "run")
    train = extract_features(run, data, root / "train", dtype="float32", device="cpu")
    test = extract_features(run, data, root / "test", split="test", dtype="float32", device="cpu")
    return root, train, test


def test_cli_neighbors_exact_hamming_and_same_store_exclusion(feature_folders, capsys):
    root, train, test = feature_folders
    assert main(["neighbors", "--features", str(train.path), "--query-features", str(test.path), "-k", "4", "--json",
                 "--grid", str(root / "grid.png")]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    truth = exact_search(train.features, np.asarray(test.features), 4)
    assert [[n["row"] for n in r["neighbors"]] for r in out["results"]] == truth.indices.tolist()
    assert (root / "grid.png").stat().st_size > 5000
    assert main(["neighbors", "--features", str(train.path), "--query-features", str(train.path), "--num-queries", "5",
                 "-k", "3", "--json"]) == 0  # fmt: skip
    for r in json.loads(capsys.readouterr().out)["results"]:
        assert r["store_index"] not in [n["store_index"] for n in r["neighbors"]]
    assert main(["neighbors", "--features", str(train.path), "--query-features", str(test.path), "-k", "3",
                 "--method", "hamming", "--bits", "16", "--code-epochs", "2", "--no-progress", "--json"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)["results"]
    assert all(len(r["neighbors"]) == 3 for r in res) and (train.path / "codes" / "autoencoder-16.pt").is_file()
    assert main(["neighbors", "--features", str(train.path), "--query-features", str(train.path), "--grid",
                 str(root / "big.png")]) == 2  # fmt: skip
    assert "at most 16 queries" in capsys.readouterr().err
