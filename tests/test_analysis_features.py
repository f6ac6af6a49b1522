"""`alexnet features`: a named layer's activations for a whole store, memory-mapped (section 6.1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from analysis_helpers import make_dataset, make_run

from alexnet.analysis import features as F
from alexnet.analysis.features import extract_features, image_features, open_features
from alexnet.checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of
from alexnet.cli import main
from alexnet.data import open_dataset
from alexnet.errors import ConfigError, DataError
from alexnet.models import activations
from alexnet.preprocess import eval_views


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    data = make_dataset(root / "data")
    return data, make_run(data, root / "run")


def _reference(run, store, indices, layer):
    """What the model itself gives for those images: activations() on eval_views(), one batch."""
    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt).eval()
    views = eval_views(preprocess_of(ckpt))
    x = views(torch.from_numpy(store.read(indices)).permute(0, 3, 1, 2))[:, 0]
    with torch.no_grad():
        return activations(model, x, [layer])[layer].flatten(1).numpy()


def test_fc7_features_equal_the_models_own_activations(setup, tmp_path):
    data, run = setup
    fs = extract_features(run, data, tmp_path / "f", layer="fc7", dtype="float32", batch_size=7, device="cpu")
    store = open_dataset(data)["train"]
    assert isinstance(fs.features, np.memmap) and fs.features.dtype == np.float32
    assert fs.features.shape == (len(store), 24)  # fc=[24, 24]: fc7 is 24-d here, 4096-d in the paper net
    np.testing.assert_array_equal(fs.indices, np.arange(len(store)))
    np.testing.assert_array_equal(fs.labels, store.labels)
    ref = _reference(run, store, np.arange(len(store)), "fc7")
    np.testing.assert_allclose(fs.features, ref, rtol=1e-5, atol=1e-6)
    assert (ref >= 0).all() and (ref > 0).any()  # post-ReLU, as the paper's fc7
    meta = json.loads((tmp_path / "f" / "meta.json").read_text())
    assert meta["layer"] == "fc7" and meta["split"] == "train" and meta["count"] == len(store)
    assert meta["class_names"] == store.class_names


def test_conv_layer_flattened_float16_and_limit(setup, tmp_path):
    data, run = setup
    fs = extract_features(run, data, tmp_path / "f", layer="pool5", split="test", limit=10, device="cpu")
    store = open_dataset(data)["test"]
    assert len(fs) == 10 and fs.features.dtype == np.float16
    assert len(np.unique(fs.indices)) == 10 and (np.diff(fs.indices) > 0).all()
    np.testing.assert_array_equal(fs.labels, store.labels[fs.indices])
    ref = _reference(run, store, fs.indices, "pool5")
    assert fs.features.shape == (10, 16 * 3 * 3)  # (C, H, W) of pool5 for 32 px input, flattened
    np.testing.assert_allclose(fs.features.astype(np.float32), ref, rtol=2e-3, atol=2e-3)


def test_flip_views_average_the_mirror(setup, tmp_path):
    data, run = setup
    centre = extract_features(run, data, tmp_path / "c", dtype="float32", limit=6, device="cpu")
    both = extract_features(run, data, tmp_path / "b", dtype="float32", limit=6, views="flip", device="cpu")
    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt).eval()
    views = eval_views(preprocess_of(ckpt))
    x = views(torch.from_numpy(open_dataset(data)["train"].read(centre.indices)).permute(0, 3, 1, 2))[:, 0]
    with torch.no_grad():
        mirror = activations(model, x.flip(-1), ["fc7"])["fc7"].numpy()
    np.testing.assert_allclose(both.features, (np.asarray(centre.features) + mirror) / 2, rtol=1e-5, atol=1e-6)


def test_image_files_give_the_same_features_as_the_store(setup, tmp_path):
    from PIL import Image

    data, run = setup
    store = open_dataset(data)["test"]
    paths = []
    for i in (0, 5):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(store.read([i])[0]).save(paths[-1])  # PNG is lossless: the same pixels come back
    feats, images = image_features(run, paths, layer="fc7")
    np.testing.assert_array_equal(images.transpose(0, 2, 3, 1), store.read([0, 5]))
    np.testing.assert_allclose(feats, _reference(run, store, np.array([0, 5]), "fc7"), rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="not found"):
        image_features(run, [str(tmp_path / "missing.png")])


def test_mistakes_are_errors_and_a_failed_run_leaves_nothing(setup, tmp_path, monkeypatch):
    data, run = setup
    with pytest.raises(ConfigError, match="no layer 'fc99'"):
        extract_features(run, data, tmp_path / "x", layer="fc99", device="cpu")
    with pytest.raises(DataError, match="no split 'val'"):
        extract_features(run, data, tmp_path / "x", split="val", device="cpu")
    extract_features(run, data, tmp_path / "x", limit=3, device="cpu")
    with pytest.raises(ConfigError, match="--overwrite"):
        extract_features(run, data, tmp_path / "x", device="cpu")
    calls = {"n": 0}
    real = F.Predictor.features

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # the probe, one batch, then a crash mid-way
            raise RuntimeError("killed")
        return real(*args, **kw)

    monkeypatch.setattr(F.Predictor, "features", failing)
    with pytest.raises(RuntimeError):
        extract_features(run, data, tmp_path / "y", batch_size=4, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no half-written folder, no temp left
    with pytest.raises(DataError, match="not a feature folder"):
        open_features(tmp_path / "y")


def test_cli_writes_features(setup, tmp_path, capsys):
    data, run = setup
    out = tmp_path / "f"
    assert main(["features", "--checkpoint", str(run), "--data", str(data / "test"), "--out", str(out),
                 "--no-progress", "--json"]) == 0  # fmt: skip
    meta = json.loads(capsys.readouterr().out)
    assert meta["split"] == "test" and meta["dim"] == 24 and open_features(out).features.shape == (16, 24)
    assert main(["features", "--checkpoint", str(run), "--data", str(data), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
