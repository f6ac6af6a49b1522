"""Every registered model declares its input and its named layers, and every consumer reads them:
a checkpoint saved without a preprocess, the Predictor, summary, the benchmarks, activations."""

import argparse
import math

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.bench import layers as bench_layers
from alexnet.bench.worker import build
from alexnet.checkpoint import FORMAT, load_checkpoint, preprocess_of, save_checkpoint
from alexnet.errors import ConfigError
from alexnet.inference import Predictor
from alexnet.models import activations, create_model, empty_model, feature_info, input_config, list_models, model_entry
from alexnet.models.spec import InputConfig
from alexnet.preprocess import TORCHVISION, Preprocess
from alexnet.summary import summarize


def image_file(path, side: int, channels: int, seed: int = 0):
    """A PNG of side x side pixels with `channels` channels (grey or RGB), random content."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (side, side, channels), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, "L" if channels == 1 else "RGB").save(path)
    return str(path)


@pytest.mark.parametrize("name", list_models())
def test_every_model_saved_without_a_preprocess_predicts_a_file_of_its_own_size(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name)
    declared = input_config(model)
    assert declared == model_entry(name).input_config()  # the instance at its defaults is the entry's declaration
    save_checkpoint(tmp_path / "model.pt", model)  # no preprocess: the model's own declared input
    assert load_checkpoint(tmp_path / "model.pt")["preprocess"] == Preprocess.for_input(declared).to_dict()
    predictor = Predictor.load(tmp_path / "model.pt", device="cpu")
    seen = []
    predictor.model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    [pred] = predictor.predict([image_file(tmp_path / "x.png", declared.input_size, declared.in_chans)], topk=5)
    assert pred.error is None
    assert seen == [(1, declared.in_chans, declared.input_size, declared.input_size)]
    probs = [p for _, p in pred.top]
    assert len(pred.top) == 5 and probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
    assert {c for c, _ in pred.top} <= set(predictor.class_names) and len(predictor.class_names) == model.num_classes

    s = summarize(model)  # at the declared input
    assert s.input_shape == (declared.in_chans, declared.input_size, declared.input_size)
    assert s.rows[-1].output_shape == (model.num_classes,) and s.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_the_bench_worker_feeds_every_model_its_declared_input(name):
    declared = model_entry(name).input_config()
    model, chans, side = build({"model": "alexnet", "arch": name})
    assert (chans, side) == (declared.in_chans, declared.input_size)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, chans, side, side)).shape == (1, model.num_classes)


def test_bench_layers_times_each_layer_on_the_input_the_options_declare():
    model = create_model("alexnet-small", in_chans=3, input_size=32, widths=[8, 16, 16, 16, 16], fc=[16, 16])
    args = argparse.Namespace(batch=2, repeats=1, warmup=0, channels_last=False)
    rows = bench_layers.measure("alexnet-small", model, args)["rows"]
    assert rows[0]["layer"] == "features.conv1" and rows[0]["input"] == [3, 32, 32]


def test_options_resolve_the_declared_input():
    small = create_model("alexnet-small", input_size=32, in_chans=3)
    assert input_config(small) == InputConfig(input_size=32, in_chans=3, resize=None)
    assert Preprocess.for_model(small) == Preprocess.raw(3, resize=32, crop=32)
    assert input_config(create_model("caffenet")).input_size == 227
    conv_local = model_entry("conv-local").input_config({"input_size": 24})
    assert (conv_local.input_size, conv_local.test_resize) == (24, 32)  # centre 24 of CIFAR's 32, as cuda-convnet tests
    # alexnet-owt declares torchvision's input, exactly the preprocessing its published weights want
    assert Preprocess.for_model(create_model("alexnet-owt")) == TORCHVISION
    assert input_config(create_model("alexnet-owt")).geometry == "torchvision"  # files read as torchvision does
    grey = input_config(create_model("alexnet-owt", in_chans=1))
    assert grey.in_chans == 1 and grey.mean is None and grey.std is None  # ImageNet's RGB statistics do not apply
    assert grey.geometry == "square"  # nor torchvision's way of reading RGB files
    with pytest.raises(ConfigError, match="not built by create_model"):
        input_config(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ConfigError, match="mean has 2 values for 3 channels"):
        InputConfig(mean=(0.5, 0.5))


PAPER_TABLE = [  # name, module, channels, reduction, towers
    ("conv1", "features.act1", 96, 4, 2), ("pool1", "features.pool1", 96, 8, 2),
    ("conv2", "features.act2", 256, 8, 2), ("pool2", "features.pool2", 256, 16, 2),
    ("conv3", "features.act3", 384, 16, 2), ("conv4", "features.act4", 384, 16, 2),
    ("conv5", "features.act5", 256, 16, 2), ("pool5", "features.pool5", 256, 32, 2),
    ("fc6", "classifier.act6", 4096, None, 1), ("fc7", "classifier.act7", 4096, None, 1),
    ("fc8", "classifier.fc8", 1000, None, 1),
]  # fmt: skip


def test_the_paper_net_declares_its_layers_and_towers():
    info = feature_info(empty_model("alexnet"))  # declared at construction: no weights needed
    assert [(x.name, x.module, x.channels, x.reduction, x.towers) for x in info] == PAPER_TABLE
    assert info.towers == 2 and feature_info(empty_model("alexnet-1gpu")).towers == 1
    owt = feature_info(empty_model("alexnet-owt"))
    assert owt["conv1"].module == "features.1.0" and owt["fc7"].module == "classifier.5" and owt.towers == 1
    # the towers follow the groups: conv3 (groups 1) still splits into the towers conv4 reads apart
    mixed = feature_info(create_model("alexnet-small", groups=[1, 1, 1, 2, 2]))
    assert [mixed[n].towers for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "pool5")] == [1, 1, 2, 2, 2, 2]
    no_conv2 = feature_info(empty_model("alexnet", drop_layer="conv2"))
    assert "conv2" not in no_conv2 and no_conv2.towers == 1 and no_conv2["pool2"].channels == 96
    with pytest.raises(ConfigError, match="no layer 'fc9'; layers: conv1, pool1"):
        info["fc9"]


@pytest.mark.parametrize("name", list_models())
def test_every_declared_layer_gives_maps_of_its_channels_and_reduction(name):
    model = create_model(name, num_classes=7).eval()
    declared = input_config(model)
    x = torch.randn(2, declared.in_chans, declared.input_size, declared.input_size)
    info = feature_info(model)
    acts = activations(model, x, info.names)
    with torch.no_grad():
        torch.testing.assert_close(acts[info.names[-1]], model(x))  # the last declared layer is the output
    side = declared.input_size + model.input_padding(declared.input_size)
    for layer in info:
        out = acts[layer.name]
        assert out.shape[1] == layer.channels, layer.name
        if layer.is_map:  # its side is the input's over the reduction, less what unpadded kernels lose at the border
            nominal = side / layer.reduction
            assert out.dim() == 4 and nominal / 2 < out.shape[-1] <= math.ceil(nominal), layer
            assert layer.channels % layer.towers == 0
        else:
            assert out.dim() == 2 and layer.towers == 1


def _old_checkpoint(model: torch.nn.Module) -> dict:
    """A checkpoint as alexnet wrote one before models declared their input (f73bd91's make_checkpoint
    without a preprocess): 0-255 pixels at resize 256, crop 224, whatever the model's size."""
    c = model.config["in_chans"]
    return {"format": FORMAT, "version": 1, "arch": model.arch,
            "model_config": {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()},
            "state_dict": model.state_dict(), "class_names": None,
            "preprocess": {"resize": 256, "crop": 224, "in_chans": c, "scale": 1.0, "mean": [0.0] * c, "std": None,
                           "channel_order": "RGB"},
            "mean_image": None, "train_state": None, "meta": {}}  # fmt: skip


def test_checkpoints_written_the_old_way_still_load_and_predict(tmp_path):
    torch.manual_seed(0)
    small = create_model("alexnet-small", widths=[8, 16, 16, 16, 16], fc=[16, 16])
    torch.save(_old_checkpoint(small), tmp_path / "small.pt")
    predictor = Predictor.load(tmp_path / "small.pt", device="cpu")
    # a 28 px model cannot take the old 224 crop: it is read at its own sizes, the pixels as the file says
    assert predictor.preprocess == Preprocess.raw(1, resize=28, crop=28)
    [pred] = predictor.predict([image_file(tmp_path / "x.png", 28, 1)], topk=3)
    assert pred.error is None and len(pred.top) == 3
    x = torch.from_numpy(np.asarray(Image.open(tmp_path / "x.png"), dtype=np.float32))[None, None]
    with torch.no_grad():
        want = small.eval()(x).softmax(1)[0].topk(3)
    assert [c for c, _ in pred.top] == [str(i) for i in want.indices.tolist()]
    np.testing.assert_allclose([p for _, p in pred.top], want.values.numpy(), rtol=1e-4)

    # a model the old default fitted keeps it exactly (caffenet declares 227, but takes 224 too)
    for name in ("alexnet", "caffenet"):
        torch.save({**_old_checkpoint(empty_model(name)), "state_dict": {}}, tmp_path / f"{name}.pt")
        assert preprocess_of(load_checkpoint(tmp_path / f"{name}.pt")) == Preprocess.raw(3)
