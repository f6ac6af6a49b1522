"""preprocess.py: one normalisation for training and every later use of a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from analysis_helpers import TINY_SMALL
from PIL import Image

from alexnet.analysis import features as features_module
from alexnet.checkpoint import load_checkpoint, make_checkpoint, preprocess_of
from alexnet.config import DataConfig, load_config
from alexnet.data import open_dataset
from alexnet.data.augment import apply_crops, crop_offsets, flip_coins, lighting_offsets, op_seed
from alexnet.data.prepare import PrepareOptions, prepare
from alexnet.data.stats import StatsAccumulator
from alexnet.errors import ConfigError
from alexnet.evaluate import evaluate_store
from alexnet.inference import Predictor
from alexnet.models import create_model
from alexnet.preprocess import Preprocess, TrainTransform, eval_views, normalize
from alexnet.train import train
from alexnet.train.loop import Trainer


def batch(b=6, c=3, s=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, s, s, c), generator=g, dtype=torch.uint8).permute(0, 3, 1, 2)  # channels-last


@dataclass
class FakeStore:
    """What Preprocess.for_training reads from a store."""

    stats: object
    channels: int
    size: int


def store_of(x):
    acc = StatsAccumulator(x.shape[-1], x.shape[1])
    acc.add(x.permute(0, 2, 3, 1).numpy())
    return FakeStore(acc.finalize(), x.shape[1], x.shape[-1])


@pytest.mark.parametrize("mean", ["image", "channel", "none"])
def test_train_transform_equals_its_parts(mean):
    x = batch(b=4, s=12)
    store = store_of(x)
    st = store.stats
    cfg = DataConfig(crop=8, mean=mean, lighting=0.1, divide_std=True)
    y = TrainTransform.for_training(store, cfg)(x, 0, 2)
    assert y.shape == (4, 3, 8, 8) and y.dtype == torch.float32

    def gen(op):  # the same draws, op by op: each from its own generator (data/augment.py)
        return torch.Generator().manual_seed(op_seed(0, 2, op))

    top, left = crop_offsets(4, 12, 12, 8, gen("crop"))
    flips = flip_coins(4, gen("flip"))
    crops = apply_crops(x, top, left, flips, 8).float()
    off = lighting_offsets(4, torch.tensor(st.eigvals).float(), torch.tensor(st.eigvecs).float(), 0.1, gen("lighting"))
    ref = crops + off[:, :, None, None]
    if mean == "channel":
        ref = ref - torch.tensor(st.channel_mean).float()[:, None, None]
    if mean == "image":
        m = torch.tensor(st.mean_image).permute(2, 0, 1)[None].expand(4, -1, -1, -1)
        ref = ref - apply_crops(m, top, left, flips, 8)
    ref = ref / torch.tensor(st.channel_std).float()[:, None, None]
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-5)


def test_eval_views_center_ten_and_flip_with_the_mean_image():
    x = batch(b=3, s=12)
    store = store_of(x)
    pp = Preprocess.for_training(store, DataConfig(crop=8, mean="image"))
    m = torch.tensor(store.stats.mean_image).permute(2, 0, 1)
    centre = eval_views(pp)(x)
    assert centre.shape == (3, 1, 3, 8, 8)
    torch.testing.assert_close(centre[:, 0], x[..., 2:10, 2:10].float() - m[:, 2:10, 2:10])
    ten = eval_views(pp, mode="ten-crop")(x)
    assert ten.shape == (3, 10, 3, 8, 8)
    torch.testing.assert_close(ten[:, 0], x[..., :8, :8].float() - m[:, :8, :8])
    torch.testing.assert_close(ten[:, 4], centre[:, 0])
    flip = eval_views(pp, mode="flip")(x)
    assert torch.equal(flip[:, 1], flip[:, 0].flip(-1))
    with pytest.raises(ConfigError, match="views"):
        eval_views(pp, mode="corners")


def test_a_constant_channel_is_left_unscaled_at_training_and_at_test():
    x = batch(b=8, s=6)
    x[:, 1] = 7  # no variance in the green channel
    store = store_of(x)
    pp = Preprocess.for_training(store, DataConfig(crop=6, mean="channel", divide_std=True, lighting=0.0))
    assert pp.std[1] == 1.0 and pp.std[0] > 1.0
    test_image = x[:1].clone()
    test_image[:, 1] = 9  # a test pixel off the training constant
    y = eval_views(pp)(test_image)[:, 0]
    assert torch.isfinite(y).all() and torch.allclose(y[:, 1], torch.full_like(y[:, 1], 2.0))
    train_tf = TrainTransform.for_training(store, DataConfig(crop=6, mean="channel", divide_std=True, lighting=0.0, flip=False))
    assert torch.allclose(train_tf(test_image, 0, 0)[:, 1], y[:, 1])


def test_scale_mean_std_and_bgr_as_imported_weights_use_them():
    pp = Preprocess(resize=4, crop=4, scale=1 / 255, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0), channel_order="BGR")
    x = batch(b=2, s=4)
    want = (x.flip(1).float() / 255 - torch.tensor([0.5, 0.25, 0.0])[:, None, None]) / torch.tensor([0.5, 0.25, 1.0])[:, None, None]
    torch.testing.assert_close(normalize(x, pp), want)


def test_preprocess_round_trips_through_a_checkpoint_with_its_mean_image():
    x = batch(b=4, s=12)
    pp = Preprocess.for_training(store_of(x), DataConfig(crop=8, mean="image"))
    ckpt = make_checkpoint(create_model("alexnet-small", in_chans=3, input_size=12, widths=[8, 8, 8, 8, 8], fc=[8]),
                           preprocess=pp)  # fmt: skip
    back = preprocess_of(ckpt)
    assert back == pp and torch.equal(back.mean_image, pp.mean_image)
    assert "mean_image" not in ckpt["preprocess"]
    with pytest.raises(ConfigError, match="mean image"):
        Preprocess(resize=12, crop=8, mean_image=torch.zeros(3, 10, 10))


@pytest.fixture(scope="module")
def run_with_mean_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    data = root / "data"
    prepare("synthetic:classes=4,per_class=16,test_per_class=4,size=16,channels=3,seed=0", data,
            PrepareOptions(progress=False, val_fraction=0.25))  # fmt: skip
    cfg = load_config("paper", None, ["model.arch=alexnet-small", *TINY_SMALL, "epochs=1", "batch_size=8",
                                      "data.workers=0", "data.crop=12", "data.pad=0", "precision=fp32",
                                      "model.options.init=kaiming"])  # fmt: skip
    train(cfg, data, root / "run", progress=False)
    return data, root / "run", cfg


def _inputs_seen(model):
    """Record every batch the model is called on."""
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    return seen


def test_one_stored_image_gets_the_same_model_input_on_every_path(run_with_mean_image, tmp_path, monkeypatch):
    data, run, cfg = run_with_mean_image
    val = open_dataset(data)["val"]
    image = torch.from_numpy(val.read(np.array([0]))).permute(0, 3, 1, 2)

    trainer = Trainer(cfg, data, tmp_path / "fresh", progress=False)  # training's own validation views
    from_training = trainer.eval_views(image)[:, 0]

    predictor = Predictor.load(run, device="cpu")
    seen = _inputs_seen(predictor.model)
    evaluate_store(predictor, val)  # `alexnet evaluate`
    from_evaluate = seen[0][:1]

    png = tmp_path / "image.png"
    Image.fromarray(image[0].permute(1, 2, 0).numpy()).save(png)  # lossless, at the store's size: no resampling
    seen.clear()
    (pred,) = predictor.predict([str(png)])  # `alexnet predict`
    assert pred.error is None
    from_predict = seen[0]

    seen.clear()
    monkeypatch.setattr(features_module.Predictor, "load", classmethod(lambda cls, *a, **k: predictor))
    features_module.extract_features(run, val.path, tmp_path / "feats", limit=None, batch_size=4)  # `alexnet features`
    from_features = seen[1][:1]  # seen[0] is extract_features' one-image probe
    assert preprocess_of(load_checkpoint(run)).mean_image is not None  # the paper's mean image is in play
    for other in (from_evaluate, from_predict, from_features):
        assert torch.equal(from_training, other)


def test_evaluate_on_best_pt_reproduces_the_validation_error_the_run_logged(run_with_mean_image, capsys):
    import json

    from alexnet.cli import main
    from alexnet.train.rundir import RunDir

    data, run, _ = run_with_mean_image
    logged = [m for m in RunDir(run).metrics() if "val_top1_error" in m]
    assert logged and logged[-1]["split"] == "val" and (run / "best.pt").is_file()
    best = min(logged, key=lambda m: m["val_top1_error"])
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(data), "--split", "val", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["top1_error"] == best["val_top1_error"] and got["top5_error"] == best["val_top5_error"]
    assert got["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
