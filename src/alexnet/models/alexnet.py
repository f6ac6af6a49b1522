"""The paper's network (PAPER.md section 3) and the variants built from the same parts.

    input (N, 3, 224 or 227, ...)
    conv1  96 x 11x11/4          -> (N,  96, 55, 55)   ReLU, LRN, max-pool 3x3/2 -> 27x27
    conv2 256 x  5x5 pad 2, g=2  -> (N, 256, 27, 27)   ReLU, LRN, max-pool 3x3/2 -> 13x13
    conv3 384 x  3x3 pad 1       -> (N, 384, 13, 13)   ReLU            (both towers)
    conv4 384 x  3x3 pad 1, g=2  -> (N, 384, 13, 13)   ReLU
    conv5 256 x  3x3 pad 1, g=2  -> (N, 256, 13, 13)   ReLU, max-pool 3x3/2 -> 6x6
    fc6 9216 -> 4096, ReLU, dropout 0.5
    fc7 4096 -> 4096, ReLU, dropout 0.5
    fc8 4096 -> num_classes

224 or 227: conv1 has no padding, so 227 gives (227-11)/4+1 = 55 exactly. A 224 input would
give 54; as cuda-convnet2 does (its output size is rounded up), the input is zero-padded on
the right and bottom only, by 3 pixels, so 224 also reaches 55x55 and then 6x6x256 after
pool5. The padding is computed for any size: a side s is padded to the next s' with
(s' - 11) divisible by 4.

Groups: conv2, conv4 and conv5 see only their own tower's maps (groups=2), which is exactly
the paper's two-GPU connectivity (section 3.2); `alexnet-1gpu` removes the groups.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .init import init_weights
from .layers import IMAGE_LAYER_WEIGHT_GRAD_CHUNK, Conv2d, Dropout, Linear, make_activation, make_pool
from .lrn import LocalResponseNorm
from .registry import register_model

CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
LRN_POSITIONS = ("before-pool", "after-pool")


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class AlexNet(nn.Module):
    """Five conv layers (LRN after the first two, max-pool after conv1, conv2, conv5), three fc layers.

    All sizes are arguments so the paper net, its one-GPU retelling, CaffeNet and the
    small-image net share one definition. Module names follow the paper: `features.conv1`,
    `features.norm1`, `features.pool1`, ..., `classifier.fc6`, ..., `classifier.fc8`.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int,
        widths: Sequence[int],
        kernels: Sequence[int],
        strides: Sequence[int],
        paddings: Sequence[int],
        groups: Sequence[int],
        fc: Sequence[int],
        pool_paddings: Sequence[int],
        input_size: int,
        activation: str,
        lrn: bool,
        lrn_convention: str,
        lrn_size: int,
        lrn_alpha: float,
        lrn_beta: float,
        lrn_k: float,
        lrn_position: str,
        pooling: str,
        dropout: float,
        drop_layer: str | None,
        init: str,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        if in_chans < 1:
            raise ConfigError(f"in_chans must be >= 1, got {in_chans}")
        if lrn_position not in LRN_POSITIONS:
            raise ConfigError(f"unknown lrn_position {lrn_position!r}; choose one of {LRN_POSITIONS}")
        droppable = CONV_NAMES[1:]
        if drop_layer is not None and drop_layer not in droppable:
            raise ConfigError(f"drop_layer must be one of {droppable} or None, got {drop_layer!r}")
        self.input_size = input_size
        self.conv1_kernel, self.conv1_stride, self.conv1_padding = kernels[0], strides[0], paddings[0]
        # Which conv layers a pool (and LRN) follows: conv1, conv2 and conv5 (pool) / conv1, conv2 (LRN).
        pool_after = {"conv1": pool_paddings[0], "conv2": pool_paddings[1], "conv5": pool_paddings[2]}
        norm_after = {"conv1", "conv2"} if lrn else set()

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, size = in_chans, input_size
        size = size + self._tile_pad(size)
        for i, name in enumerate(CONV_NAMES):
            idx = name[-1]
            if name != drop_layer:
                if channels % groups[i] or widths[i] % groups[i]:
                    raise ConfigError(f"{name}: {channels}->{widths[i]} channels not divisible by groups={groups[i]}")
                # The image layer of an ImageNet-size net takes its weight gradient in slices of
                # 64 images (layers.Conv2d: oneDNN's fast kernel for it stops at ~100).
                chunk = IMAGE_LAYER_WEIGHT_GRAD_CHUNK if i == 0 and input_size >= 128 else None
                layers[name] = Conv2d(
                    channels, widths[i], kernels[i], strides[i], paddings[i], groups=groups[i], weight_grad_chunk=chunk
                )
                layers[f"act{idx}"] = make_activation(activation)
                channels, size = widths[i], _conv_out(size, kernels[i], strides[i], paddings[i])
            # A dropped layer keeps its LRN and pool, so the spatial sizes downstream do not change.
            norm = (
                LocalResponseNorm(lrn_size, lrn_alpha, lrn_beta, lrn_k, convention=lrn_convention)
                if name in norm_after
                else None
            )
            if norm is not None and lrn_position == "before-pool":
                layers[f"norm{idx}"] = norm
            if name in pool_after:
                pool = make_pool(pooling, padding=pool_after[name])
                layers[f"pool{idx}"] = pool
                k, s, p = pool.kernel_size, pool.stride, pool.padding
                size = _conv_out(size, k, s, p)  # type: ignore[arg-type]
            if norm is not None and lrn_position == "after-pool":
                layers[f"norm{idx}"] = norm
        if size < 1:
            raise ConfigError(f"input size {input_size} is too small for this network")
        self.features = nn.Sequential(layers)
        self.feature_shape = (channels, size, size)  # (256, 6, 6) for the paper net

        head: OrderedDict[str, nn.Module] = OrderedDict()
        width = channels * size * size
        for i, hidden in enumerate(fc):
            idx = 6 + i
            head[f"fc{idx}"] = Linear(width, hidden)
            head[f"act{idx}"] = make_activation(activation)
            if dropout > 0:
                head[f"drop{idx}"] = Dropout(dropout)  # inverted dropout == the paper's x0.5 at test
            width = hidden
        head[f"fc{6 + len(fc)}"] = Linear(width, num_classes)
        self.classifier = nn.Sequential(head)
        self.num_classes = num_classes

        bias_one = {"conv2", "conv4", "conv5"} | {f"fc{6 + i}" for i in range(len(fc))}
        init_weights(self, init, bias_one=bias_one)

    def _tile_pad(self, size: int) -> int:
        """Right/bottom zero padding that makes conv1 tile the input exactly (224 -> 227)."""
        if self.conv1_padding:
            return 0
        rem = (size - self.conv1_kernel) % self.conv1_stride
        return (self.conv1_stride - rem) % self.conv1_stride

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) image batch -> pool5 maps, (N, 256, 6, 6) for the paper net."""
        ph, pw = self._tile_pad(x.shape[-2]), self._tile_pad(x.shape[-1])
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """pool5 maps -> class logits (fc6, fc7 with ReLU and dropout, fc8)."""
        if x.shape[1:] != self.feature_shape:
            raise ValueError(
                f"expected pool5 maps of shape {self.feature_shape}, got {tuple(x.shape[1:])}: "
                f"this model takes {self.input_size}x{self.input_size} inputs"
            )
        return self.classifier(torch.flatten(x, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# Options every variant of this family takes, with the paper's values (section 3).
PAPER_OPTIONS: dict[str, Any] = dict(
    num_classes=1000,
    in_chans=3,
    activation="relu",  # "tanh" for the section 3.1 comparison
    lrn=True,
    lrn_convention="paper",  # alpha on the plain sum; "per-term" = alpha/n (cuda-convnet, Caffe, torch)
    lrn_size=5,
    lrn_alpha=1e-4,
    lrn_beta=0.75,
    lrn_k=2.0,
    pooling="overlap",  # 3x3/2; "non-overlap" = 2x2/2 (section 3.4)
    dropout=0.5,
    drop_layer=None,  # "conv2".."conv5": the depth ablation of section 7
    init="paper",
    input_size=224,
)
PAPER_SPEC: dict[str, Any] = dict(
    widths=(96, 256, 384, 384, 256),
    kernels=(11, 5, 3, 3, 3),
    strides=(4, 1, 1, 1, 1),
    paddings=(0, 2, 1, 1, 1),
    groups=(1, 2, 1, 2, 2),
    fc=(4096, 4096),
    pool_paddings=(0, 0, 0),
)
# For 28-32 px images: conv1 5x5/1, conv2 5x5 g=2, conv3-5 3x3 (g=2 on 4, 5); pools 3x3/2, the
# first two padded by 1, take 28 -> 14 -> 7 -> 3 and 32 -> 16 -> 8 -> 3.
SMALL_SPEC: dict[str, Any] = dict(
    kernels=(5, 5, 3, 3, 3), strides=(1, 1, 1, 1, 1), paddings=(2, 2, 1, 1, 1), groups=(1, 2, 1, 2, 2),
    pool_paddings=(1, 1, 0),
)


def _family(spec: dict[str, Any], lrn_position: str = "before-pool") -> Callable[..., AlexNet]:
    def build(**options: Any) -> AlexNet:
        merged = {**spec, **options}
        merged["widths"], merged["fc"] = tuple(merged["widths"]), tuple(merged["fc"])
        if len(merged["widths"]) != 5 or len(merged["fc"]) < 1:
            raise ConfigError(f"need 5 conv widths and >= 1 fc width, got {merged['widths']} and {merged['fc']}")
        return AlexNet(lrn_position=lrn_position, **merged)

    return build


register_model(
    "alexnet", "the paper's two-tower net (groups=2 on conv2/4/5), LRN, 3x3/2 pooling; 60,965,224 params",
    PAPER_OPTIONS,
)(_family(PAPER_SPEC))
register_model(
    "alexnet-1gpu", "the paper's net without groups (the one-GPU retelling); 62,378,344 params", PAPER_OPTIONS
)(_family({**PAPER_SPEC, "groups": (1, 1, 1, 1, 1)}))
register_model(
    "caffenet", "Caffe's CaffeNet: pool before LRN, Caffe's LRN constants (alpha/n, k=1), 227 input",
    {**PAPER_OPTIONS, "lrn_convention": "per-term", "lrn_k": 1.0, "input_size": 227},
)(_family(PAPER_SPEC, lrn_position="after-pool"))
register_model(
    "alexnet-small", "the paper's topology for 28-32 px images (Fashion-MNIST, CIFAR-10), any channel count",
    {**PAPER_OPTIONS, "num_classes": 10, "in_chans": 1, "input_size": 28,
     "widths": (64, 128, 192, 192, 128), "fc": (512, 512)},
)(_family(SMALL_SPEC))  # fmt: skip
