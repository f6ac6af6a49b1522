"""The paper's network (PAPER.md section 3), and the variants that differ from it only in settings.

Read `AlexNet.__init__` top to bottom: the layers as the paper lists them, with the paper net's
tensor shapes. Each registered variant is one frozen `AlexNetConfig`:

    alexnet       the paper: two towers (groups=2 on conv2, conv4, conv5), LRN, 3x3/2 pooling
    alexnet-1gpu  the same without groups (the one-GPU retelling)
    caffenet      Caffe's CaffeNet: pool before LRN, Caffe's LRN constants, 227 input
    alexnet-small the same topology for 28-32 px images (Fashion-MNIST, CIFAR-10)

224 or 227: conv1 has no padding, so 227 gives (227 - 11) / 4 + 1 = 55 exactly. A 224 input
would give 54; as cuda-convnet2 does (its output size is rounded up), the input is zero-padded
on the right and bottom only, by 3 pixels, so 224 also reaches 55x55 and 6x6x256 after pool5.

Groups: conv2, conv4 and conv5 see only their own tower's maps, which is exactly the paper's
two-GPU connectivity (section 3.2); parallel/model_parallel.py places the towers on two devices.

`Conv2d`, `Linear` and `Dropout` are torch's layers (same parameters, same state-dict keys) with
CPU fast paths that layers.py chooses in one place; elsewhere they are plain torch ops.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .init import init_weights
from .layers import IMAGE_LAYER_WEIGHT_GRAD_CHUNK, Conv2d, Dropout, ImageClassifier, Linear, make_activation, make_pool
from .lrn import LocalResponseNorm
from .registry import register_model
from .spec import FeatureLayer, InputConfig, declare_layers

CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
LRN_POSITIONS = ("before-pool", "after-pool")


@dataclass(frozen=True)
class AlexNetConfig:
    num_classes: int = 1000
    in_chans: int = 3
    input_size: int = 224  # 224 (zero-padded to 227, see above) or 227
    widths: tuple[int, ...] = (96, 256, 384, 384, 256)  # conv1..conv5 kernels
    kernels: tuple[int, ...] = (11, 5, 3, 3, 3)
    strides: tuple[int, ...] = (4, 1, 1, 1, 1)
    paddings: tuple[int, ...] = (0, 2, 1, 1, 1)
    groups: tuple[int, ...] = (1, 2, 1, 2, 2)  # the two towers (section 3.2)
    pool_paddings: tuple[int, ...] = (0, 0, 0)  # pool1, pool2, pool5
    fc: tuple[int, ...] = (4096, 4096)  # the hidden fc layers: fc6, fc7
    activation: str = "relu"  # "tanh" for the section 3.1 comparison
    lrn: bool = True  # after conv1 and conv2 (section 3.3)
    lrn_position: str = "before-pool"  # the paper's conv -> ReLU -> LRN -> pool; CaffeNet pools first
    lrn_convention: str = "paper"  # alpha on the plain sum; "per-term" = alpha/n (cuda-convnet, Caffe, torch)
    lrn_size: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_k: float = 2.0
    pooling: str = "overlap"  # 3x3/2; "non-overlap" = 2x2/2 (section 3.4)
    dropout: float = 0.5  # on fc6 and fc7 (section 4.2)
    drop_layer: str | None = None  # "conv2".."conv5": the depth ablation of section 7
    init: str = "paper"  # N(0, 0.01), bias 1 on conv2, conv4, conv5, fc6, fc7 (section 5)

    def __post_init__(self) -> None:
        for name in ("widths", "kernels", "strides", "paddings", "groups", "pool_paddings", "fc"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # YAML and checkpoints give lists
        per_conv = ("widths", "kernels", "strides", "paddings", "groups")
        if any(len(getattr(self, n)) != 5 for n in per_conv) or len(self.pool_paddings) != 3 or not self.fc:
            raise ConfigError(f"need 5 conv widths/kernels/strides/paddings/groups, 3 pool paddings and >= 1 fc width, "
                              f"got widths {self.widths} and fc {self.fc}")  # fmt: skip
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.in_chans < 1:
            raise ConfigError(f"in_chans must be >= 1, got {self.in_chans}")
        if self.lrn_position not in LRN_POSITIONS:
            raise ConfigError(f"unknown lrn_position {self.lrn_position!r}; choose one of {LRN_POSITIONS}")
        if self.drop_layer is not None and self.drop_layer not in CONV_NAMES[1:]:
            raise ConfigError(f"drop_layer must be one of {CONV_NAMES[1:]} or None, got {self.drop_layer!r}")
        for name, cin, cout, g in zip(CONV_NAMES, self.conv_inputs(), self.widths, self.groups):
            if name != self.drop_layer and (cin % g or cout % g):
                raise ConfigError(f"{name}: {cin}->{cout} channels not divisible by groups={g}")

    def conv_inputs(self) -> list[int]:
        """Input channels of conv1..conv5: a dropped layer's successor reads its predecessor's maps."""
        ins, channels = [], self.in_chans
        for name, width in zip(CONV_NAMES, self.widths):
            ins.append(channels)
            if name != self.drop_layer:
                channels = width
        return ins


def tile_pad(size: int, kernel: int, stride: int, padding: int) -> int:
    """Right/bottom zero padding that makes conv1 tile a `size` input exactly (224 -> 227)."""
    if padding:
        return 0
    return (stride - (size - kernel) % stride) % stride


class AlexNet(ImageClassifier):
    """Module names follow the paper: `features.conv1`, `features.norm1`, `features.pool1`, ...,
    `classifier.fc6`, ..., `classifier.fc8`; the paper net's shapes in the comments.

    Built from an AlexNetConfig, which it does not keep: its one config is the create_model
    options (`model.config`) that rebuild it."""

    def __init__(self, cfg: AlexNetConfig) -> None:
        super().__init__()
        c = cfg
        self.conv1_geometry = (c.kernels[0], c.strides[0], c.paddings[0])  # (kernel, stride, padding): the tile pad
        i1, i2, i3, i4, i5 = c.conv_inputs()

        def conv(idx: int, cin: int, weight_grad_chunk: int | None = None) -> Conv2d:
            k = idx - 1
            return Conv2d(cin, c.widths[k], c.kernels[k], c.strides[k], c.paddings[k], groups=c.groups[k],
                          weight_grad_chunk=weight_grad_chunk)  # fmt: skip

        def norm_and_pool(idx: int, pool_padding: int) -> list[tuple[str, nn.Module]]:
            pool = (f"pool{idx}", make_pool(c.pooling, padding=pool_padding))
            if not c.lrn or idx == 5:
                return [pool]
            norm = (f"norm{idx}", LocalResponseNorm(c.lrn_size, c.lrn_alpha, c.lrn_beta, c.lrn_k, c.lrn_convention))
            return [norm, pool] if c.lrn_position == "before-pool" else [pool, norm]

        # ImageNet-size nets take conv1's weight gradient in slices (layers.Conv2d says why).
        chunk = IMAGE_LAYER_WEIGHT_GRAD_CHUNK if c.input_size >= 128 else None
        layers = [                                                        # x: (B, 3, 227, 227)
            ("conv1", conv(1, i1, chunk)), ("act1", make_activation(c.activation)),  # (B, 96, 55, 55)
            *norm_and_pool(1, c.pool_paddings[0]),                        # (B, 96, 27, 27)
            ("conv2", conv(2, i2)), ("act2", make_activation(c.activation)),  # (B, 256, 27, 27), 2 towers
            *norm_and_pool(2, c.pool_paddings[1]),                        # (B, 256, 13, 13)
            ("conv3", conv(3, i3)), ("act3", make_activation(c.activation)),  # (B, 384, 13, 13), both towers
            ("conv4", conv(4, i4)), ("act4", make_activation(c.activation)),  # (B, 384, 13, 13), 2 towers
            ("conv5", conv(5, i5)), ("act5", make_activation(c.activation)),  # (B, 256, 13, 13), 2 towers
            *norm_and_pool(5, c.pool_paddings[2]),                        # (B, 256, 6, 6)
        ]  # fmt: skip
        # A dropped layer (section 7) keeps its LRN and pool, so the sizes downstream do not change.
        dropped = {c.drop_layer, c.drop_layer and c.drop_layer.replace("conv", "act")}
        self.features = nn.Sequential(OrderedDict((n, m) for n, m in layers if n not in dropped))
        self.feature_shape = _output_shape(self.features, c)  # (256, 6, 6)

        width = self.feature_shape[0] * self.feature_shape[1] * self.feature_shape[2]  # 9216
        head: list[tuple[str, nn.Module]] = []
        for n, hidden in enumerate(c.fc, start=6):  # fc6, fc7: 4096, ReLU, dropout 0.5
            head += [(f"fc{n}", Linear(width, hidden)), (f"act{n}", make_activation(c.activation))]
            if c.dropout > 0:
                head.append((f"drop{n}", Dropout(c.dropout)))  # inverted dropout == the paper's x0.5 at test
            width = hidden
        head.append((f"fc{6 + len(c.fc)}", Linear(width, c.num_classes)))  # fc8: (B, 1000)
        self.classifier = nn.Sequential(OrderedDict(head))

        self.num_classes, self.input_size = c.num_classes, c.input_size
        self.feature_layers = _paper_layers(self, c)
        bias_one = {"conv2", "conv4", "conv5"} | {f"fc{6 + i}" for i in range(len(c.fc))}
        init_weights(self, c.init, bias_one=bias_one)

    def input_padding(self, size: int) -> int:
        """Right/bottom zero padding conv1 needs to tile a `size` input exactly (224 -> 227)."""
        return tile_pad(size, *self.conv1_geometry)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) image batch -> pool5 maps, (B, 256, 6, 6) for the paper net."""
        ph, pw = self.input_padding(x.shape[-2]), self.input_padding(x.shape[-1])
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))  # 224 -> 227
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """pool5 maps -> class logits (fc6, fc7 with ReLU and dropout, fc8)."""
        if x.shape[1:] != self.feature_shape:
            raise ValueError(
                f"expected pool5 maps of shape {self.feature_shape}, got {tuple(x.shape[1:])}: "
                f"this model takes {self.input_size}x{self.input_size} inputs"
            )
        return self.classifier(torch.flatten(x, 1))  # (B, 9216)


def _output_shape(features: nn.Sequential, c: AlexNetConfig) -> tuple[int, int, int]:
    """(C, H, W) of the maps `features` gives for a c.input_size input (after conv1's tile padding)."""
    size = c.input_size + tile_pad(c.input_size, c.kernels[0], c.strides[0], c.paddings[0])
    channels = c.in_chans
    for m in features:
        if isinstance(m, nn.Conv2d):
            channels = m.out_channels
            size = (size + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1  # type: ignore[operator]
        elif isinstance(m, nn.MaxPool2d):
            size = (size + 2 * int(m.padding) - int(m.kernel_size)) // int(m.stride) + 1  # type: ignore[arg-type]
    if size < 1:
        raise ConfigError(f"input size {c.input_size} is too small for this network")
    return channels, size, size


# The paper's layers by name: the output of each conv layer's ReLU, the max-pools, fc6/fc7 after
# their ReLU, fc8's logits (section 6.1 calls fc7 the image's 4096-d descriptor).
_CONV_OUTPUTS = {f"act{i}": f"conv{i}" for i in range(1, 6)} | {f"pool{i}": f"pool{i}" for i in (1, 2, 5)}


def _paper_layers(model: AlexNet, c: AlexNetConfig) -> tuple[FeatureLayer, ...]:
    """conv1..conv5, pool1, pool2, pool5, fc6, fc7, fc8, with their towers: a layer's maps are split
    where it or the next convolution reading them is grouped (the paper net's conv1..conv5, pool5)."""
    convs = [n for n in CONV_NAMES if n != c.drop_layer]
    groups = [c.groups[CONV_NAMES.index(n)] for n in convs]
    towers = {n: max(groups[i], groups[i + 1] if i + 1 < len(convs) else 1) for i, n in enumerate(convs)}
    for pool, before in (("pool1", 1), ("pool2", 2), ("pool5", 5)):  # a pool holds the maps of the last conv before it
        towers[pool] = towers[[n for n in convs if n in CONV_NAMES[:before]][-1]]
    paths = [(name, f"features.{m}") for m, _ in model.features.named_children() if (name := _CONV_OUTPUTS.get(m))]
    for n in range(6, 6 + len(c.fc)):  # fc6, fc7: after their ReLU
        paths.append((f"fc{n}", f"classifier.act{n}"))
    last_fc = f"fc{6 + len(c.fc)}"
    return declare_layers(model, [*paths, (last_fc, f"classifier.{last_fc}")], towers)


PAPER = AlexNetConfig()
ONE_GPU = replace(PAPER, groups=(1, 1, 1, 1, 1))
CAFFENET = replace(PAPER, lrn_position="after-pool", lrn_convention="per-term", lrn_k=1.0, input_size=227)
# 28-32 px images: conv1 5x5/1 and padded pools take 28 -> 14 -> 7 -> 3 and 32 -> 16 -> 8 -> 3.
SMALL = replace(PAPER, num_classes=10, in_chans=1, input_size=28, widths=(64, 128, 192, 192, 128), kernels=(5, 5, 3, 3, 3),
                strides=(1, 1, 1, 1, 1), paddings=(2, 2, 1, 1, 1), pool_paddings=(1, 1, 0), fc=(512, 512))  # fmt: skip

# What create_model(name, **options) may change; every other field is the variant's own.
OPTIONS = ("num_classes", "in_chans", "activation", "lrn", "lrn_convention", "lrn_size", "lrn_alpha", "lrn_beta",
           "lrn_k", "pooling", "dropout", "drop_layer", "init", "input_size")  # fmt: skip


def _register(name: str, description: str, base: AlexNetConfig, options: tuple[str, ...] = OPTIONS,
              data: InputConfig | None = None) -> None:  # fmt: skip
    defaults: dict[str, Any] = {name: getattr(base, name) for name in options}

    def build(**opts: Any) -> AlexNet:
        return AlexNet(replace(base, **opts))

    register_model(name, description, defaults, data=data)(build)


_register("alexnet", "the paper's two-tower net (groups=2 on conv2/4/5), LRN, 3x3/2 pooling; 60,965,224 params", PAPER)
_register("alexnet-1gpu", "the paper's net without groups (the one-GPU retelling); 62,378,344 params", ONE_GPU)
_register("caffenet", "Caffe's CaffeNet: pool before LRN, Caffe's LRN constants (alpha/n, k=1), 227 input", CAFFENET)
# The ImageNet nets take the registry's default input: 224 (caffenet 227) crops of 256 px images,
# unnormalised until training sets the store's mean. The small net takes its images whole.
_register("alexnet-small", "the paper's topology for 28-32 px images (Fashion-MNIST, CIFAR-10), any channel count",
          SMALL, OPTIONS + ("widths", "fc", "groups", "lrn_position"), data=InputConfig(resize=None))  # fmt: skip
