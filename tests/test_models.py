"""Every registered model: shapes, pinned parameter counts, init statistics, options, layer access."""

import pytest
import torch

import alexnet
from alexnet.errors import ConfigError
from alexnet.models import activations, create_model, list_models, model_entry

PARAMS = {
    "alexnet": 60_965_224,
    "alexnet-1gpu": 62_378_344,
    "caffenet": 60_965_224,
    "alexnet-owt": 61_100_840,
    "alexnet-small": None,  # sized for the demo; pinned below by its own formula
    "conv-local": None,
    "cifar-18pct": 89_578,
}


def _input(name: str, batch: int = 2, size: int | None = None) -> torch.Tensor:
    opts = model_entry(name).options()
    side = size or opts.get("input_size", 224)
    return torch.randn(batch, opts.get("in_chans", 3), side, side)


def test_registry_lists_every_model():
    assert set(list_models()) == set(PARAMS)


@pytest.mark.parametrize("name", list(PARAMS))
def test_forward_shape_and_finite(name):
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        y = model(_input(name))
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", [n for n, p in PARAMS.items() if p])
def test_pinned_parameter_counts(name):
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


def test_small_and_convlocal_parameter_counts():
    # alexnet-small: conv 5x5x1x64, 5x5x32x128 (g=2), 3x3x128x192, 3x3x96x192 (g=2), 3x3x96x128 (g=2), fc 1152-512-512-10
    small = create_model("alexnet-small")
    expect = (25 * 64 + 64) + (25 * 32 * 128 + 128) + (9 * 128 * 192 + 192) + (9 * 96 * 192 + 192)
    expect += (9 * 96 * 128 + 128) + (1152 * 512 + 512) + (512 * 512 + 512) + (512 * 10 + 10)
    assert sum(p.numel() for p in small.parameters()) == expect
    # conv-local: conv 5x5x3x64, 5x5x64x64, two local layers on 8x8 (64 positions, unshared), fc 2048 -> 10
    net = create_model("conv-local")
    expect = (75 * 64 + 64) + (25 * 64 * 64 + 64) + (64 * 32 * 576 + 32 * 64) + (64 * 32 * 288 + 32 * 64) + 2048 * 10 + 10
    assert sum(p.numel() for p in net.parameters()) == expect


# cuda-convnet's example-layers/layers-18pct.cfg and layer-params-18pct.cfg, layer by layer
# (neuron=relu sits on pool1, conv2 and conv3; rnorm is the same-map norm, scale divided by size^2).
LAYERS_18PCT = [
    ("conv1", {"filters": 32, "filterSize": 5, "padding": 2, "stride": 1, "initW": 1e-4}),
    ("pool1", {"pool": "max", "sizeX": 3, "stride": 2, "outputsX": 16}),
    ("rnorm1", {"sizeX": 3, "scale": 5e-5, "pow": 0.75}),
    ("conv2", {"filters": 32, "filterSize": 5, "padding": 2, "stride": 1, "initW": 0.01}),
    ("pool2", {"pool": "avg", "sizeX": 3, "stride": 2, "outputsX": 8}),
    ("rnorm2", {"sizeX": 3, "scale": 5e-5, "pow": 0.75}),
    ("conv3", {"filters": 64, "filterSize": 5, "padding": 2, "stride": 1, "initW": 0.01}),
    ("pool3", {"pool": "avg", "sizeX": 3, "stride": 2, "outputsX": 4}),
    ("fc10", {"outputs": 10, "initW": 0.01}),
]


def test_cifar_18pct_is_the_cuda_convnet_layer_table():
    from alexnet.models.cuda_convnet import SameMapNorm
    from alexnet.summary import summarize

    torch.manual_seed(0)
    model = create_model("cifar-18pct")
    modules = dict(model.named_modules())
    shapes = {r.name.rsplit(".", 1)[1]: r.output_shape for r in summarize(model).rows}
    for name, cfg in LAYERS_18PCT:
        key = name.replace("rnorm", "norm")
        m = modules[("classifier." if name == "fc10" else "features.") + key]
        if name.startswith("conv"):
            assert (m.out_channels, m.kernel_size, m.padding, m.stride) == (cfg["filters"], (5, 5), (2, 2), (1, 1))
            assert m.weight.std().item() == pytest.approx(cfg["initW"], rel=0.1) and not m.bias.any()
        elif name.startswith("pool"):
            assert isinstance(m, torch.nn.MaxPool2d if cfg["pool"] == "max" else torch.nn.AvgPool2d)
            assert (m.kernel_size, m.stride, m.ceil_mode) == (3, 2, True) and shapes[key][-1] == cfg["outputsX"]
        elif name.startswith("rnorm"):
            assert isinstance(m, SameMapNorm) and (m.size, m.scale, m.power, m.k) == (3, 5e-5, 0.75, 1.0)
        else:
            assert m.out_features == cfg["outputs"] and m.weight.std().item() == pytest.approx(cfg["initW"], rel=0.1)
    order = [n for n, _ in model.features.named_children() if not n.startswith("act")]
    assert order == [n.replace("rnorm", "norm") for n, _ in LAYERS_18PCT[:-1]]
    # the same-map norm: one unit against its 3x3 neighbourhood, zeros beyond the border
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0], x[0, 0, 1, 1] = 100.0, 50.0
    want = 100.0 / (1 + 5e-5 / 9 * (100.0**2 + 50.0**2)) ** 0.75
    assert SameMapNorm()(x)[0, 0, 0, 0].item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("name", ["alexnet", "alexnet-1gpu", "caffenet", "alexnet-owt"])
@pytest.mark.parametrize("side", [224, 227])
def test_224_and_227_reach_55_and_6x6(name, side):
    model = create_model(name, num_classes=3).eval()
    acts = activations(model, torch.randn(1, 3, side, side), ["conv1", "pool5"])
    if name == "alexnet-owt" and side == 227:  # torchvision pads conv1 by 2: 227 -> 56, then its avgpool -> 6x6
        assert acts["conv1"].shape[-1] == 56
    else:
        assert acts["conv1"].shape[-2:] == (55, 55)
    assert acts["pool5"].shape[1:] == (256, 6, 6)


def test_224_is_padded_right_bottom_only():
    model = create_model("alexnet", num_classes=3).eval()
    x = torch.randn(1, 3, 224, 224)
    padded = torch.zeros(1, 3, 227, 227)
    padded[..., :224, :224] = x
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded))


def test_grouped_structure():
    m = create_model("alexnet")
    f = m.features
    assert [f.conv1.groups, f.conv2.groups, f.conv3.groups, f.conv4.groups, f.conv5.groups] == [1, 2, 1, 2, 2]
    assert f.conv2.weight.shape == (256, 48, 5, 5)
    assert f.conv3.weight.shape == (384, 256, 3, 3)  # conv3 sees both towers
    assert f.conv4.weight.shape == (384, 192, 3, 3)
    assert f.conv5.weight.shape == (256, 192, 3, 3)
    # tower independence: conv2's first 128 outputs depend only on conv1's first 48 maps
    x = torch.randn(1, 96, 27, 27, requires_grad=True)
    f.conv2(x)[:, :128].sum().backward()
    assert x.grad[:, 48:].abs().max() == 0 and x.grad[:, :48].abs().max() > 0
    one = create_model("alexnet-1gpu").features
    assert all(getattr(one, f"conv{i}").groups == 1 for i in range(1, 6))


def test_layer_order_paper_vs_caffenet():
    paper = [n for n, _ in create_model("alexnet").features.named_children()]
    caffe = [n for n, _ in create_model("caffenet").features.named_children()]
    assert paper[:4] == ["conv1", "act1", "norm1", "pool1"]
    assert caffe[:4] == ["conv1", "act1", "pool1", "norm1"]
    small = [n for n, _ in create_model("alexnet-small", lrn_position="after-pool").features.named_children()]
    assert small[:4] == ["conv1", "act1", "pool1", "norm1"]  # the cifar10 preset's order


@pytest.mark.parametrize("name", ["alexnet", "alexnet-1gpu", "caffenet", "alexnet-small"])
def test_paper_init_statistics(name):
    torch.manual_seed(1)
    m = create_model(name)
    named = dict(m.named_modules())
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        mod = named[f"features.{layer}"]
        w = mod.weight.detach()
        assert abs(w.mean().item()) < 2e-3
        assert w.std().item() == pytest.approx(0.01, rel=0.1 if w.numel() > 5000 else 0.25)
        expected_bias = 1.0 if layer in ("conv2", "conv4", "conv5") else 0.0
        assert torch.all(mod.bias == expected_bias)
    for layer, bias in (("fc6", 1.0), ("fc7", 1.0), ("fc8", 0.0)):
        mod = named[f"classifier.{layer}"]
        assert mod.weight.std().item() == pytest.approx(0.01, rel=0.05)
        assert torch.all(mod.bias == bias)


def test_pytorch_init_option_differs():
    m = create_model("alexnet", init="pytorch")
    assert not torch.all(m.features.conv2.bias == 1.0)


@pytest.mark.parametrize(
    "option",
    [
        {"activation": "tanh"},
        {"lrn": False},
        {"lrn_convention": "per-term"},
        {"pooling": "non-overlap"},
        {"dropout": 0.0},
        {"drop_layer": "conv3"},
        {"drop_layer": "conv5"},
        {"in_chans": 1},
    ],
)
@pytest.mark.parametrize("name", ["alexnet", "alexnet-small"])
def test_options(name, option):
    model = create_model(name, num_classes=5, **option).eval()
    x = _input(name)
    if "in_chans" in option:
        x = x[:, :1]
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    names = dict(model.named_modules())
    if option.get("activation") == "tanh":
        assert isinstance(names["features.act1"], torch.nn.Tanh)
    if option.get("lrn") is False:
        assert "features.norm1" not in names
    if option.get("pooling") == "non-overlap":
        assert names["features.pool1"].kernel_size == 2
    if option.get("dropout") == 0.0:
        assert "classifier.drop6" not in names
    if "drop_layer" in option:
        assert f"features.{option['drop_layer']}" not in names


def test_drop_layer_removes_its_parameters():
    full = sum(p.numel() for p in create_model("alexnet").parameters())
    no3 = create_model("alexnet", drop_layer="conv3")
    # conv3 gone; conv4 now reads conv2's 256 maps (g=2: 128 per tower) instead of 384
    assert no3.features.conv4.weight.shape == (384, 128, 3, 3)
    assert sum(p.numel() for p in no3.parameters()) < full


def test_dropout_is_on_fc6_fc7_outputs():
    head = [n for n, _ in create_model("alexnet").classifier.named_children()]
    assert head == ["fc6", "act6", "drop6", "fc7", "act7", "drop7", "fc8"]
    owt = create_model("alexnet-owt").classifier
    assert isinstance(owt[0], torch.nn.Dropout) and isinstance(owt[3], torch.nn.Dropout)


def test_unknown_model_and_option_errors_name_the_valid_ones():
    with pytest.raises(ConfigError, match="valid models: alexnet"):
        create_model("resnet50")
    with pytest.raises(ConfigError, match="no option colour.*valid options"):
        create_model("alexnet", colour=True)
    with pytest.raises(ConfigError, match="activation"):
        create_model("alexnet", activation="gelu")
    with pytest.raises(ConfigError, match="drop_layer"):
        create_model("alexnet", drop_layer="conv1")
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("alexnet", num_classes=0)


def test_config_round_trip():
    """A model rebuilt from its recorded config is the same network: same seed, same weights, same outputs."""
    torch.manual_seed(0)
    m = create_model("alexnet-small", num_classes=4, activation="tanh", widths=(8, 16, 24, 24, 16), fc=(32, 32)).eval()
    torch.manual_seed(0)
    again = create_model(m.arch, **m.config).eval()
    assert m.state_dict().keys() == again.state_dict().keys()
    for name, value in m.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(again(x), m(x), rtol=0, atol=0)
        relu = create_model("alexnet-small", **{**m.config, "activation": "relu"}).eval()
        relu.load_state_dict(m.state_dict())
        assert not torch.allclose(relu(x), m(x))  # the activation is part of what the config rebuilt


def test_forward_features_head_split():
    """forward_features is the pool5 the full forward computes (a 224 input padded to 227 on the right
    and bottom), and forward_head takes only pool5-shaped maps."""
    m = create_model("alexnet", num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = m.forward_features(x)
        padded = m.forward_features(torch.nn.functional.pad(x, (0, 3, 0, 3)))
    assert feats.shape == (2, 256, 6, 6)
    torch.testing.assert_close(feats, activations(m, x, ["pool5"])["pool5"])
    torch.testing.assert_close(feats, padded, rtol=0, atol=0)
    with pytest.raises(ValueError, match="expected pool5 maps of shape"):
        m.forward_head(torch.zeros(2, 256, 5, 5))


def test_fc7_activation_is_the_4096d_relu_output():
    m = create_model("alexnet", num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224)
    acts = activations(m, x, ["fc7", "classifier.fc7", "pool5"])
    assert acts["fc7"].shape == (2, 4096)
    torch.testing.assert_close(acts["fc7"], acts["classifier.fc7"].relu())
    with torch.no_grad():
        manual = m.classifier.fc7(m.classifier.fc6(acts["pool5"].flatten(1)).relu()).relu()
    torch.testing.assert_close(acts["fc7"], manual)
    with pytest.raises(ConfigError, match="no layer"):
        activations(m, x, ["fc9"])


def test_top_level_api():
    """The package's top level names every model of README's table and builds each for its classes."""
    assert {"alexnet", "alexnet-1gpu", "caffenet", "alexnet-owt", "alexnet-small", "conv-local",
            "cifar-18pct"} <= set(alexnet.list_models())  # fmt: skip
    m = alexnet.create_model("alexnet-small", num_classes=3).eval()
    with torch.no_grad():
        assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


def test_locally_connected_equals_a_per_position_reference():
    from alexnet.models.layers import LocallyConnected2d

    layer = LocallyConnected2d(3, 4, 3, input_size=5, padding=1)
    x = torch.randn(2, 3, 5, 5)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    ref = torch.empty(2, 4, 5, 5)
    for i in range(5):
        for j in range(5):
            patch = padded[:, :, i : i + 3, j : j + 3].reshape(2, -1)  # (N, C*k*k), channel-major like unfold
            ref[:, :, i, j] = patch @ layer.weight[i * 5 + j].T + layer.bias[:, i, j]
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-6)
    # unshared: two positions' filters are different parameters
    assert not torch.equal(layer.weight[0], layer.weight[1])
