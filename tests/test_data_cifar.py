"""CIFAR-10: the official python batches (folder, .tar.gz, download with its md5), and the JPEG copy's real colours."""

import hashlib
import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import torch

from alexnet.cli import main
from alexnet.data import cifar, open_dataset, resolve_source
from alexnet.data.augment import lighting_offsets, to_float_plus
from alexnet.data.prepare import PrepareOptions, prepare
from alexnet.errors import DataError

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
OPTS = PrepareOptions(workers=1, progress=False)


def official_batches(per_batch=6, test=8, seed=0):
    """Batches as the authors' pickles hold them: b"data" uint8 (N, 3072) rows of R, G, B planes, b"labels"."""
    rng = np.random.default_rng(seed)
    images = {}  # name -> (N, 32, 32, 3), the pixels a reader must give back
    blobs = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        img = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n)]
        rows = img.transpose(0, 3, 1, 2).reshape(n, 3072)  # row = 1024 R, then 1024 G, then 1024 B values
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                 b"filenames": [f"img_{k}.png".encode() for k in range(n)]}  # fmt: skip
        blobs[name] = pickle.dumps(batch, protocol=2)
        images[name] = (img, np.asarray(labels))
    blobs["batches.meta"] = pickle.dumps({b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}, protocol=2)
    return blobs, images


def write_folder(folder, blobs):
    folder.mkdir(parents=True)
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    return folder


def write_archive(path, blobs):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def expected(images, split):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return np.concatenate([images[n][0] for n in names]), np.concatenate([images[n][1] for n in names])


def test_batches_folder_and_archive_give_the_same_store(tmp_path):
    blobs, images = official_batches()
    folder = write_folder(tmp_path / "cifar-10-batches-py", blobs)
    archive = write_archive(tmp_path / "dl" / "cifar-10-python.tar.gz", blobs)
    for k, spec in enumerate([f"cifar10:{folder}", str(folder), str(tmp_path), f"cifar10:{archive}", f"cifar10:{archive.parent}"]):
        prepare(spec, tmp_path / f"o{k}", OPTS)
        ds = open_dataset(tmp_path / f"o{k}")
        assert list(ds) == ["train", "test"], spec
        for split in ("train", "test"):
            img, lab = expected(images, split)
            s = ds[split]
            assert (s.size, s.channels, s.class_names) == (32, 3, NAMES), spec
            assert np.array_equal(s.images[:], img) and np.array_equal(s.labels, lab), spec
    src = resolve_source(f"cifar10:{archive}")
    assert src.info["md5"] == hashlib.md5(archive.read_bytes()).hexdigest() and src.info["official_archive"] is False
    assert dict(json.loads((tmp_path / "o3" / "dataset.json").read_text()))["size_from"] == "native"


def test_val_fraction_and_explicit_size(tmp_path):
    blobs, _ = official_batches(per_batch=10)
    archive = write_archive(tmp_path / "c.tar.gz", blobs)
    prepare(f"cifar10:{archive}", tmp_path / "o", PrepareOptions(val_fraction=0.2, size=24, workers=1, progress=False))
    ds = open_dataset(tmp_path / "o")
    assert list(ds) == ["train", "val", "test"] and ds["train"].size == 24
    assert len(ds["train"]) + len(ds["val"]) == 50 and len(ds["test"]) == 8


def test_bad_batches_are_one_clear_error(tmp_path):
    blobs, _ = official_batches()
    with pytest.raises(DataError, match="does not exist"):
        resolve_source(f"cifar10:{tmp_path / 'missing.tar.gz'}")
    no_test = dict(blobs)
    del no_test["test_batch"]
    with pytest.raises(DataError, match="needs data_batch_1..5 and test_batch"):
        resolve_source(f"cifar10:{write_archive(tmp_path / 'a.tar.gz', no_test)}")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    hostile = dict(blobs, data_batch_1=pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to load global"):
        resolve_source(f"cifar10:{write_archive(tmp_path / 'b.tar.gz', hostile)}")
    wrong = dict(blobs, data_batch_2=pickle.dumps({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(DataError, match=r"expected uint8 \(N, 3072\)"):
        resolve_source(f"cifar10:{write_archive(tmp_path / 'c.tar.gz', wrong)}")
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="cannot read .* as a tar archive"):
        resolve_source(f"cifar10:{tmp_path / 'junk.tar.gz'}")


def test_download_checks_the_md5_and_uses_the_cache(tmp_path, monkeypatch, serve_folder, capsys):
    blobs, images = official_batches()
    archive = write_archive(tmp_path / "www" / "cifar-10-python.tar.gz", blobs)
    url = serve_folder(tmp_path / "www") + "/cifar-10-python.tar.gz"
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar, "CIFAR10_URL", url)
    cached = tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz"

    # the authors' md5 (the real constant) does not match this archive: refused, nothing kept
    assert main(["prepare", "cifar10", str(tmp_path / "o0"), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "refusing the download" in err and cifar.CIFAR10_MD5 in err
    assert not cached.exists() and list(cached.parent.iterdir()) == []

    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    assert main(["prepare", "cifar10", str(tmp_path / "o1"), "--workers", "1", "--no-progress"]) == 0
    assert cached.read_bytes() == archive.read_bytes()
    ds = open_dataset(tmp_path / "o1")
    assert np.array_equal(ds["test"].images[:], expected(images, "test")[0])
    assert ds["train"].manifest["source"]["official_archive"] and ds["train"].manifest["source"]["url"] == url
    asked = len(serve_folder.requests)
    resolve_source("cifar10", progress=False)  # present and matching: not fetched again
    assert len(serve_folder.requests) == asked
    src = resolve_source("cifar10", download_dir=str(tmp_path / "elsewhere"), progress=True)  # with a bar
    assert (tmp_path / "elsewhere" / "cifar-10-python.tar.gz").is_file() and len(src.splits["train"]) == 30


def test_unreachable_download_is_one_line(tmp_path, monkeypatch, serve_folder):
    (tmp_path / "www").mkdir()
    monkeypatch.setattr(cifar, "CIFAR10_URL", serve_folder(tmp_path / "www") + "/cifar-10-python.tar.gz")  # 404
    with pytest.raises(DataError, match="cannot download .*404"):
        resolve_source("cifar10", download_dir=str(tmp_path / "dl"), progress=False)


# ---------------------------------------------------------------- the real colours of the JPEG copy

IMAGENET_EIGVALS = np.array([0.2175, 0.0188, 0.0045]) * 255**2  # the widely copied ImageNet values, 0-255 scale


def test_cifar_jpeg_tree_gives_a_native_32px_store(cifar_small, cifar_small_tree):
    ds = open_dataset(cifar_small)
    assert list(ds) == ["train", "val", "test"]
    assert [len(ds[s]) for s in ds] == [1440, 160, 400]
    meta = json.loads((cifar_small / "dataset.json").read_text())
    assert (meta["size"], meta["channels"], meta["size_from"]) == (32, 3, "native")
    for s in ds.values():
        assert s.images.shape[1:] == (32, 32, 3) and s.class_names == NAMES
        assert np.array_equal(np.bincount(s.labels, minlength=10), np.full(10, len(s) // 10))
    # stored pixels are the decoded JPEGs themselves: no resampling at the native size
    from PIL import Image

    first = min((cifar_small_tree / "test" / "airplane").iterdir())
    assert np.abs(ds["test"].images[0].astype(int) - np.asarray(Image.open(first).convert("RGB"), int)).max() <= 2


def test_store_rgb_statistics_are_those_of_the_data(cifar_small):
    s = open_dataset(cifar_small)["train"]
    pixels = s.images[:].reshape(-1, 3).astype(np.float64)
    cov = np.cov(pixels, rowvar=False, bias=True)
    want = np.linalg.eigvalsh(cov)[::-1]
    np.testing.assert_allclose(s.stats.eigvals, want, rtol=1e-6)
    np.testing.assert_allclose(s.stats.channel_mean, pixels.mean(0), rtol=1e-9)
    assert np.all(np.abs(s.stats.eigvals / IMAGENET_EIGVALS - 1) > 0.1)  # not ImageNet's constants
    assert s.stats.eigvals[0] > 5 * s.stats.eigvals[1] > 0  # natural images: one dominant axis
    grey = s.stats.eigvecs[:, 0]
    assert np.all(grey > 0) and np.allclose(grey, 1 / np.sqrt(3), atol=0.1)  # brightness: the grey axis
    np.testing.assert_allclose(s.stats.eigvecs.T @ s.stats.eigvecs, np.eye(3), atol=1e-9)


def test_pca_lighting_offsets_have_the_store_covariance(cifar_small):
    s = open_dataset(cifar_small)["train"]
    stats = s.stats
    std, n = 0.1, 200_000
    vals, vecs = torch.as_tensor(stats.eigvals, dtype=torch.float32), torch.as_tensor(stats.eigvecs, dtype=torch.float32)
    offsets_t = lighting_offsets(n, vals, vecs, std, torch.Generator().manual_seed(0))  # (n, 3)
    x = torch.from_numpy(s.images[:8]).permute(0, 3, 1, 2)  # real images, (8, 3, 32, 32) uint8
    lit = to_float_plus(x, offsets_t[:8])
    assert torch.allclose(lit - x.float(), offsets_t[:8, :, None, None].expand_as(lit), atol=1e-4)  # every pixel, same shift
    offsets = offsets_t.double().numpy()
    # In the eigenbasis the offsets are independent with variances std^2 * eigvals. Each sample
    # variance of n Gaussian draws is within sqrt(2/n) = 0.3% (one sigma) of its value; 3% is 10 sigma.
    cov = np.cov(offsets, rowvar=False, bias=True)
    in_basis = stats.eigvecs.T @ cov @ stats.eigvecs
    np.testing.assert_allclose(np.diag(in_basis), std**2 * stats.eigvals, rtol=0.03)
    scale = np.sqrt(np.outer(np.diag(in_basis), np.diag(in_basis)))
    assert np.all(np.abs(in_basis - np.diag(np.diag(in_basis))) < 0.03 * scale)  # correlations < 0.03 (sigma 0.002)
    full = std**2 * stats.eigvecs @ np.diag(stats.eigvals) @ stats.eigvecs.T
    np.testing.assert_allclose(cov, full, atol=0.03 * std**2 * stats.eigvals[0])
    assert abs(np.sqrt((offsets**2).sum(1).mean()) / (std * np.sqrt(stats.eigvals.sum())) - 1) < 0.01
