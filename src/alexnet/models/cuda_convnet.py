"""The CIFAR-10 nets of Krizhevsky's cuda-convnet behind the paper's CIFAR-10 claims.

`cifar-18pct` is `layers-18pct.cfg` ("18% error on CIFAR-10 in 20 minutes"): three 5x5 conv
layers with pooling and response normalization, then fc10, four weight layers: the four-layer
net of Fig. 1 (ReLU against tanh, section 3.1).

    input (N, 3, 32, 32)
    conv1 32 x 5x5 pad 2 -> (N, 32, 32, 32)  max-pool 3x3/2 -> 16x16, ReLU, same-map norm 3x3
    conv2 32 x 5x5 pad 2 -> (N, 32, 16, 16)  ReLU, avg-pool 3x3/2 -> 8x8, same-map norm 3x3
    conv3 64 x 5x5 pad 2 -> (N, 64, 8, 8)    ReLU, avg-pool 3x3/2 -> 4x4
    fc10  1024 -> num_classes                                   89,578 parameters

Its "rnorm" layers normalise each map by its own 3x3 neighbourhood (not across maps):
b = a / (1 + scale / 9 * sum_{3x3} a^2) ** 0.75 with scale 5e-5 (cuda-convnet divides the
configured scale by size^2 for this layer). ReLU after the max-pool, as the cfg puts it, equals
ReLU before it (both are monotone).

`conv-local` is `layers-conv-local-11pct.cfg` (with response normalization, 11% test error) and
`-13pct` (without, 13%), the nets of the LRN claim of section 3.3: two 5x5 conv layers with
pooling and cross-map normalization, two locally connected 3x3 layers (unshared filters), one
fc layer.

    input (N, 3, 32, 32)
    conv1  64 x 5x5 pad 2 -> (N, 64, 32, 32)  ReLU, LRN(5, 0.001, 0.75, k=1), max-pool 3x3/2 -> 16x16
    conv2  64 x 5x5 pad 2 -> (N, 64, 16, 16)  ReLU, LRN, max-pool 3x3/2 -> 8x8
    local3 32 x 3x3 pad 1 -> (N, 32, 8, 8)    ReLU   (locally connected)
    local4 32 x 3x3 pad 1 -> (N, 32, 8, 8)    ReLU   (locally connected)
    fc10   2048 -> num_classes

cuda-convnet rounds pool outputs up (32 -> 16 -> 8), hence ceil_mode; its cross-map norm
divides the scale by the window size and adds 1, i.e. our "per-term" convention with k=1.
The "paper" init of both nets is the cfg's own (N(0, 1e-4) conv1, N(0, 0.01) the other conv and
fc layers, N(0, 0.04) local layers, zero biases).
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .init import init_weights
from .layers import ImageClassifier, Linear, LocallyConnected2d, make_activation, make_pool
from .lrn import LocalResponseNorm
from .registry import register_model
from .spec import InputConfig, declare_layers

_CFG_STD = {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01, "local3": 0.04, "local4": 0.04, "fc10": 0.01}

# CIFAR-10's 32 px images, taken whole (cifar-18pct) or centre-cropped to the input size (conv-local
# at 24, as cuda-convnet tests it); unnormalised until training sets the store's mean.
CIFAR_INPUT = InputConfig(input_size=32, in_chans=3, resize=32)


class SameMapNorm(nn.Module):
    """cuda-convnet's `rnorm`: each unit divided by the energy of its size x size neighbourhood in its
    own map, b = a / (k + scale / size^2 * sum a^2) ** power, zeros beyond the border."""

    def __init__(self, size: int = 3, scale: float = 5e-5, power: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ConfigError(f"same-map norm size must be odd and >= 1, got {size}")
        self.size, self.scale, self.power, self.k = size, scale, power, k

    def forward(self, x: Tensor) -> Tensor:
        # the zero-padded window mean of a^2 is sum / size^2: exactly cuda-convnet's scaling
        energy = F.avg_pool2d(x * x, self.size, stride=1, padding=self.size // 2, count_include_pad=True)
        return x * (energy * self.scale + self.k).pow(-self.power)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, power={self.power}, k={self.k}"


class Cifar18pct(ImageClassifier):
    """layers-18pct.cfg; `activation="tanh"` is Fig. 1's saturating baseline, `lrn=False` drops the norms."""

    def __init__(self, *, num_classes: int, in_chans: int, input_size: int, activation: str, lrn: bool, init: str) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 5, padding=2)

        def pool(kind: str) -> nn.Module:  # cuda-convnet rounds the output size up: 32 -> 16 -> 8 -> 4
            return nn.MaxPool2d(3, 2, ceil_mode=True) if kind == "max" else nn.AvgPool2d(3, 2, ceil_mode=True)

        def norm(idx: int) -> list[tuple[str, nn.Module]]:
            return [(f"norm{idx}", SameMapNorm(3, 5e-5, 0.75))] if lrn else []

        layers = [                                                               # (N, 3, 32, 32)
            ("conv1", conv(in_chans, 32)), ("pool1", pool("max")),               # (N, 32, 16, 16)
            ("act1", make_activation(activation)), *norm(1),
            ("conv2", conv(32, 32)), ("act2", make_activation(activation)),      # (N, 32, 16, 16)
            ("pool2", pool("avg")), *norm(2),                                    # (N, 32, 8, 8)
            ("conv3", conv(32, 64)), ("act3", make_activation(activation)),      # (N, 64, 8, 8)
            ("pool3", pool("avg")),                                              # (N, 64, 4, 4)
        ]  # fmt: skip
        self.features = nn.Sequential(OrderedDict(layers))
        size = input_size
        for _ in range(3):
            size = -(-(size - 3) // 2) + 1
        if size < 1:
            raise ConfigError(f"input size {input_size} too small for cifar-18pct")
        self.feature_shape = (64, size, size)
        self.classifier = nn.Sequential(OrderedDict(fc10=Linear(64 * size * size, num_classes)))  # 1024 -> 10
        self.num_classes = num_classes
        # conv1 is read after pool1's ReLU, where the cfg puts conv1's neuron
        self.feature_layers = declare_layers(self, [("conv1", "features.act1"), ("pool1", "features.pool1"),
                                                    ("conv2", "features.act2"), ("pool2", "features.pool2"),
                                                    ("conv3", "features.act3"), ("pool3", "features.pool3"),
                                                    ("fc10", "classifier.fc10")])  # fmt: skip
        init_weights(self, init, std=_CFG_STD)


@register_model("cifar-18pct", "cuda-convnet's layers-18pct: 3 conv + fc10, the four-layer CIFAR-10 net of Fig. 1",
                data=CIFAR_INPUT)
def cifar_18pct(*, num_classes: int = 10, in_chans: int = 3, input_size: int = 32, activation: str = "relu",
                lrn: bool = True, init: str = "paper") -> Cifar18pct:  # fmt: skip
    return Cifar18pct(num_classes=num_classes, in_chans=in_chans, input_size=input_size, activation=activation, lrn=lrn,
                      init=init)  # fmt: skip


class ConvLocalNet(ImageClassifier):
    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int,
        input_size: int,
        activation: str,
        lrn: bool,
        lrn_convention: str,
        lrn_alpha: float,
        lrn_k: float,
        pooling: str,
        init: str,
    ) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        size, channels = input_size, in_chans
        for idx in (1, 2):
            layers[f"conv{idx}"] = nn.Conv2d(channels, 64, 5, padding=2)
            layers[f"act{idx}"] = make_activation(activation)
            if lrn:
                layers[f"norm{idx}"] = LocalResponseNorm(5, lrn_alpha, 0.75, lrn_k, convention=lrn_convention)
            pool = make_pool(pooling, ceil_mode=True)
            layers[f"pool{idx}"] = pool
            k, s = pool.kernel_size, pool.stride
            size = -(-(size - k) // s) + 1  # type: ignore[operator]  # ceil mode
            channels = 64
        if size < 3:
            raise ConfigError(f"input size {input_size} too small for the conv-local net")
        for idx in (3, 4):
            layers[f"local{idx}"] = LocallyConnected2d(channels, 32, 3, input_size=size, padding=1)
            layers[f"act{idx}"] = make_activation(activation)
            channels = 32
        self.features = nn.Sequential(layers)
        self.feature_shape = (channels, size, size)
        self.classifier = nn.Sequential(OrderedDict(fc10=Linear(channels * size * size, num_classes)))
        self.num_classes = num_classes
        self.feature_layers = declare_layers(self, [("conv1", "features.act1"), ("pool1", "features.pool1"),
                                                    ("conv2", "features.act2"), ("pool2", "features.pool2"),
                                                    ("local3", "features.act3"), ("local4", "features.act4"),
                                                    ("fc10", "classifier.fc10")])  # fmt: skip
        init_weights(self, init, std=_CFG_STD)


@register_model("conv-local", "cuda-convnet's conv-local 11%/13% CIFAR-10 net (2 conv, 2 locally connected, fc10), section 3.3",
                data=CIFAR_INPUT)
def conv_local(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    input_size: int = 32,
    activation: str = "relu",
    lrn: bool = True,
    lrn_convention: str = "per-term",
    lrn_alpha: float = 1e-3,
    lrn_k: float = 1.0,
    pooling: str = "overlap",
    init: str = "paper",
) -> ConvLocalNet:
    return ConvLocalNet(
        num_classes=num_classes, in_chans=in_chans, input_size=input_size, activation=activation, lrn=lrn,
        lrn_convention=lrn_convention, lrn_alpha=lrn_alpha, lrn_k=lrn_k, pooling=pooling, init=init,
    )  # fmt: skip
