"""The paper's CIFAR-10 four-layer net (Fig. 1 and the LRN claim of section 3.3).

cuda-convnet's `layers-conv-local-11pct.cfg` (with response normalization, 11% test error)
and `-13pct` (without, 13%): two 5x5 conv layers with pooling and cross-map normalization,
two locally connected 3x3 layers (unshared filters), one fc layer.

    input (N, 3, 32, 32)
    conv1  64 x 5x5 pad 2 -> (N, 64, 32, 32)  ReLU, LRN(5, 0.001, 0.75, k=1), max-pool 3x3/2 -> 16x16
    conv2  64 x 5x5 pad 2 -> (N, 64, 16, 16)  ReLU, LRN, max-pool 3x3/2 -> 8x8
    local3 32 x 3x3 pad 1 -> (N, 32, 8, 8)    ReLU   (locally connected)
    local4 32 x 3x3 pad 1 -> (N, 32, 8, 8)    ReLU   (locally connected)
    fc10   2048 -> num_classes

cuda-convnet rounds pool outputs up (32 -> 16 -> 8), hence ceil_mode; its cross-map norm
divides the scale by the window size and adds 1, i.e. our "per-term" convention with k=1.
The "paper" init is the cfg's own: N(0, 1e-4) conv1, N(0, 0.01) conv2 and fc, N(0, 0.04)
local layers, zero biases.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .init import init_weights
from .layers import Linear, LocallyConnected2d, make_activation, make_pool
from .lrn import LocalResponseNorm
from .registry import register_model

_CFG_STD = {"conv1": 1e-4, "conv2": 0.01, "local3": 0.04, "local4": 0.04, "fc10": 0.01}


class ConvLocalNet(nn.Module):
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
        init_weights(self, init, std=_CFG_STD)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(x, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("conv-local", "the paper's CIFAR-10 four-layer net (cuda-convnet conv-local 11%/13%), Fig. 1")
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
